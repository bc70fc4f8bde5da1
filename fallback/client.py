"""FsClient: the file verbs (put, cat, ls, stat, rm, mv, mkdir) over one region.

Today it reads and writes through the source region; mirror reads with fallback plug in through
`MetadataView` and a second store, without changing these verbs. A session remembers the last
version it wrote or saw and passes it as `min_version`, so it reads its own writes and never
goes back in time on a node that is behind.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from typing import BinaryIO

from fallback.reader import DEFAULT_READAHEAD, iter_pieces, plan_reads
from fallback.source_view import SourceView
from fallback.view import MetadataView
from fallback.writer import DEFAULT_UPLOAD_CONCURRENCY, WritePolicy, WriteResult, write_file
from objstore import ConcurrencyLayer, ObjectStore, open_store
from volume.client import SourceClient
from volume.config import VolumeConfig
from volume.errors import FsError
from volume.inode import Inode


class FsClient:
    def __init__(
        self,
        source: SourceClient,
        store: ObjectStore,
        *,
        view: MetadataView | None = None,
        uid: int | None = None,
        gid: int | None = None,
        write_policy: WritePolicy | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.view: MetadataView = view or SourceView(source, uid=self.uid, gid=self.gid)
        self.seen_version = 0
        self.write_policy = write_policy or WritePolicy()

    @classmethod
    async def for_source(
        cls, cfg: VolumeConfig, *, uid: int | None = None, gid: int | None = None
    ) -> FsClient:
        store = await open_store(cfg.source.bucket, name="source")
        limited = ConcurrencyLayer(store, DEFAULT_UPLOAD_CONCURRENCY)
        policy = WritePolicy.for_grace(cfg.source.upload_grace_s)
        source = SourceClient(cfg.api_urls, cfg.token)
        return cls(source, limited, uid=uid, gid=gid, write_policy=policy)

    async def aclose(self) -> None:
        await self.source.aclose()
        await self.store.aclose()

    async def __aenter__(self) -> FsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _saw(self, version: int) -> None:
        self.seen_version = max(self.seen_version, version)

    async def _op(self, op: str, **args: object) -> int:
        res = await self.source.op(op, uid=self.uid, gid=self.gid, **args)
        self._saw(int(res["version"]))
        return int(res["version"])

    async def put(self, f: BinaryIO, path: str, *, parents: bool = True) -> WriteResult:
        """Replace `path` with `f`'s bytes, making missing parents unless `parents` is off; see
        fallback/writer.py for what is checked first and what a failure leaves behind."""
        result = await write_file(
            self.source,
            self.store,
            path,
            f,
            uid=self.uid,
            gid=self.gid,
            parents=parents,
            policy=self.write_policy,
            min_version=self.seen_version,
        )
        self._saw(result.version)
        return result

    async def mkdir(self, path: str, *, mode: int = 0o755, parents: bool = False) -> int:
        if not parents:
            return await self._op("mkdir", path=path, mode=mode)
        parts = [p for p in path.split("/") if p]
        version = 0
        for i in range(1, len(parts) + 1):
            try:
                version = await self._op("mkdir", path="/" + "/".join(parts[:i]), mode=mode)
            except FsError as exc:
                if exc.errno != errno.EEXIST:  # fine for -p
                    raise
        return version

    async def rm(self, path: str, *, dir: bool = False) -> int:
        return await self._op("rmdir" if dir else "unlink", path=path)

    async def mv(self, src: str, dst: str) -> int:
        return await self._op("rename", src=src, dst=dst)

    async def stat(self, path: str) -> Inode:
        version, inode = await self.view.lookup(path, min_version=self.seen_version)
        self._saw(version)
        return inode

    async def ls(self, path: str) -> AsyncIterator[tuple[str, Inode]]:
        after = ""
        while True:
            version, rows = await self.view.readdir(
                path, after=after, limit=1000, min_version=self.seen_version
            )
            self._saw(version)
            for row in rows:
                yield row
            if len(rows) < 1000:
                return
            after = rows[-1][0]

    async def read(
        self, path: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The file's bytes from `offset`, streamed in block-sized pieces: the bytes of exactly
        one committed version (inode and chunk maps resolved together; the blocks of slices
        freed after that stay readable for the GC grace, see README "Reads")."""
        file = await self.view.resolve_file(
            path, offset=offset, length=length, min_version=self.seen_version
        )
        self._saw(file.version)
        inode = file.inode
        if not inode.is_file:
            why = "is a directory" if inode.is_dir else "not a regular file"
            raise FsError(errno.EISDIR, why, path=path)
        want = inode.size - offset if length is None else length
        pieces = plan_reads(file, offset, want)
        async for data in iter_pieces(self.store, pieces, readahead=DEFAULT_READAHEAD):
            yield data

    async def cat(self, path: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(path)])
