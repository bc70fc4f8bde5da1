"""A file open for writing through the mount: its bytes in a local spool file until a commit.

Objects in a bucket are written whole, so the mount does what the object-store file systems
users know do (s3fs, gcsfuse, JuiceFS's write-back): writes land in a local spool file and the
whole file is committed (`FsClient.put`: blocks to the source bucket, then one metadata
request) on `close` (the kernel's flush) or `fsync`. A failed commit is that call's error, and
the buffer stays dirty, so a later flush, fsync or the last close tries again: nothing is
dropped silently.

One buffer per inode, shared by every handle open for writing on it (two descriptors of one
file see each other's writes, as on a local disk). A file opened for writing without O_TRUNC
starts from its committed bytes, fetched on the first read or write that needs them (opening a
large file for writing and closing it again costs nothing). An unlinked file's buffer is never
committed (its data would come back under the name).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fallback.client import FsClient, Identity
from fallback.view import FileVersion

# The bytes of the committed version the buffer starts from (FsClient.iter_range over it).
Loader = Callable[[FileVersion], AsyncIterator[bytes]]


class WriteBuffer:
    def __init__(
        self,
        ino: int,
        *,
        spool_dir: Path | None,
        base: FileVersion | None,
        load: Loader,
        as_user: Identity,
    ) -> None:
        self.ino = ino
        self.as_user = as_user  # whose write the commit is (the opener's uid, gid)
        self._file = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 (closed in close())
        self._fd = self._file.fileno()
        self._base = base  # None: nothing to load (created, or truncated to 0)
        self._load = load
        self.size = 0 if base is None else base.inode.size
        self.dirty = False
        self.unlinked = False
        self.handles = 0  # handles open on it; the last release closes it
        self.lock = asyncio.Lock()  # commits and loads exclude writes

    async def _loaded(self) -> None:
        if self._base is None:
            return
        base, pos = self._base, 0
        async for data in self._load(base):
            await asyncio.to_thread(os.pwrite, self._fd, data, pos)
            pos += len(data)
        self._base = None

    async def write(self, offset: int, data: bytes) -> int:
        async with self.lock:
            await self._loaded()
            written = os.pwrite(self._fd, data, offset)
            self.size = max(self.size, offset + written)
            self.dirty = True
            return written

    async def read(self, offset: int, size: int) -> bytes:
        async with self.lock:
            await self._loaded()
            return os.pread(self._fd, max(0, min(size, self.size - offset)), offset)

    async def truncate(self, size: int) -> None:
        async with self.lock:
            if size == 0:
                self._base = None  # nothing of the old bytes is needed
            await self._loaded()
            os.ftruncate(self._fd, size)
            self.size = size
            self.dirty = True

    async def commit(self, fs: FsClient, path: str) -> int | None:
        """Put the whole buffer at `path` if it changed since the last commit; the committed
        version (None: nothing to commit). Raises the put's error, leaving the buffer dirty."""
        async with self.lock:
            if not self.dirty or self.unlinked:
                return None
            await self._loaded()
            self._file.seek(0)
            result = await fs.put(self._file, path, parents=False, as_user=self.as_user)
            self.dirty = False
            return result.version

    def close(self) -> None:
        self._file.close()
