"""A file open for reading: one version of the file, read in ranges, sequentially or not.

`FsClient.open(path)` resolves the whole file once (inode and every chunk map, in one view
snapshot) and the handle reads only that version, however long it stays open and whatever is
written to the path meanwhile: the blocks of a replaced version stay readable for the GC grace
(README "Reads"), so a reader holding a handle for longer than that can get NotFoundError.

Reads stream: a read at the position the last one ended continues one open block stream (with
the client's readahead); a read after a seek opens a stream bounded to the blocks it needs, so
a random read costs the blocks it touches, not a readahead window. Memory is the readahead
window plus one block, for any file size.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any

from fallback.view import FileVersion
from volume.inode import BLOCK_SIZE, Inode

# (file, offset, length or None for to the end) -> its bytes in order (FsClient.iter_range)
RangeReader = Callable[[FileVersion, int, "int | None"], AsyncIterator[bytes]]


class FileHandle:
    """Reads of one version of one file. `read`/`seek`/`tell` as a binary file's; not safe
    for concurrent reads from several tasks (open one handle per reader: they are cheap)."""

    def __init__(
        self, path: str, file: FileVersion, read_range: RangeReader, *, stale: bool = False
    ) -> None:
        self.path = path
        self.file = file
        self.stale = stale  # resolved from a replica past its window, under the `serve` policy
        self._read_range = read_range
        self._pos = 0
        self._buf = b""  # bytes [_buf_off, _buf_off + len(_buf)) of the file
        self._buf_off = 0
        self._stream: AsyncIterator[bytes] | None = None
        self._stream_next = 0  # the offset of the next byte `_stream` yields
        self._stream_end = 0  # where `_stream` stops (the file's size for an open stream)
        self.closed = False

    @property
    def size(self) -> int:
        return self.file.inode.size

    @property
    def version(self) -> int:
        """The metadata version this handle reads the file at."""
        return self.file.version

    @property
    def inode(self) -> Inode:
        return self.file.inode

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position (no I/O). Past the end is allowed and reads b""; before the start
        is ValueError, as for a local file."""
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def read_buffered(self, n: int = -1) -> bytes | None:
        """Up to `n` bytes at the position if they are already in memory, else None (no I/O:
        the synchronous reader serves small reads from here without a trip to the loop)."""
        self._check_open()
        pos = self._pos
        if not self._buf_off <= pos < self._buf_off + len(self._buf):
            return None
        start = pos - self._buf_off
        stop = len(self._buf) if n < 0 else min(len(self._buf), start + n)
        self._pos = pos + (stop - start)
        return self._buf[start:stop]

    def peek_buffered(self) -> bytes | None:
        """The bytes in memory from the position on (not consumed), else None (no I/O)."""
        self._check_open()
        start = self._pos - self._buf_off
        return self._buf[start:] if 0 <= start < len(self._buf) else None

    async def peek(self) -> bytes:
        """At least one byte from the position on, not consumed (b"" at the end): what a
        line reader scans for its newline without a trip per byte."""
        self._check_open()
        if self._pos >= self.size:
            return b""
        got = self.peek_buffered()
        while got is None:
            await self._fill(self.size - self._pos)
            got = self.peek_buffered()
        return got

    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes from the position (all to the end if n < 0); b"" at the end.
        Raises the block read's errors (ChecksumError, NotFoundError...) unchanged."""
        self._check_open()
        left = self.size - self._pos
        want = left if n < 0 else min(n, left)
        if want <= 0:
            return b""
        parts: list[bytes] = []
        while want > 0:
            got = self.read_buffered(want)
            if got is None:
                await self._fill(want)
                continue
            parts.append(got)
            want -= len(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _fill(self, want: int) -> None:
        """Make `_buf` hold the byte at the position: the next piece of the current stream if
        the position is where it continues, else from a new stream starting there."""
        pos = self._pos
        if self._stream is None or pos != self._stream_next or pos >= self._stream_end:
            sequential = self._stream is not None and pos == self._stream_next
            await self._drop_stream()
            if sequential or (pos == 0 and want >= self.size):
                end = self.size  # reading on: one open stream, with readahead
            else:  # after a seek: just the blocks this read touches
                end = min(self.size, -(-(pos + want) // BLOCK_SIZE) * BLOCK_SIZE)
            self._stream = self._read_range(self.file, pos, end - pos).__aiter__()
            self._stream_next, self._stream_end = pos, end
        try:
            piece = await self._stream.__anext__()
        except StopAsyncIteration:
            await self._drop_stream()
            raise EOFError(f"{self.path}: the block stream ended at {pos}") from None
        except BaseException:
            # A stream that raised is finished (its finally cancelled its fetches): the next
            # read opens a new one, so a read retried after a failed block can succeed.
            self._stream = None
            raise
        self._buf, self._buf_off = piece, self._stream_next
        self._stream_next += len(piece)

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()  # cancels the fetches it still had in flight

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.path}: I/O operation on a closed file")

    async def aclose(self) -> None:
        """Idempotent; cancels any readahead still in flight."""
        self.closed = True
        self._buf = b""
        await self._drop_stream()

    async def __aenter__(self) -> FileHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Opening:
    """What `FsClient.open` returns: awaited, the handle; as `async with`, the handle closed
    on exit. Nothing is resolved until one of the two happens."""

    def __init__(self, open_handle: Callable[[], Coroutine[Any, Any, FileHandle]]) -> None:
        self._open = open_handle
        self._handle: FileHandle | None = None

    def __await__(self) -> Generator[Any, None, FileHandle]:
        return self._open().__await__()

    async def __aenter__(self) -> FileHandle:
        self._handle = await self._open()
        return self._handle

    async def __aexit__(self, *exc: object) -> None:
        if self._handle is not None:
            await self._handle.aclose()
