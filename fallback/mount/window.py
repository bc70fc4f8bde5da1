"""Reads of one open file at any offsets, in any order, each block fetched once.

The kernel does not read a file the way `FileHandle` streams it: its readahead sends several
128 KiB reads at once, which may arrive out of order, and a memory-mapped file (safetensors)
faults pages in wherever the program touches it. So a mount's handle works on blocks, not on
a stream: a read finds the blocks under its range, awaits their fetches (started by it, or by
an earlier read's readahead) and slices them. Reads that keep moving forward start fetches of
the next `readahead` blocks, so a sequential load keeps that many GETs in flight; blocks well
behind the reads are dropped, so memory stays at about `readahead` blocks per handle.

The handle reads the version it was opened at (`FileVersion`), whatever happens to the path
meanwhile: blocks are immutable, and a replaced version's blocks stay readable for the GC grace.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from fallback.reader import Piece, plan_reads
from fallback.view import FileVersion

# The whole verified block a piece lies in (FsClient's BlockSource, with the view's state).
FetchBlock = Callable[[Piece], Coroutine[Any, Any, bytes]]
DEFAULT_READAHEAD_BLOCKS = 8  # 32 MiB in flight per sequential reader
KEEP_BEHIND_BLOCKS = 2  # blocks kept behind the last read (reads arriving out of order)

BlockId = tuple[int, int]  # (slice id, block index)


class BlockWindow:
    """Random-access reads of one FileVersion; safe for concurrent reads of one handle."""

    def __init__(
        self, file: FileVersion, fetch: FetchBlock, *, readahead: int = DEFAULT_READAHEAD_BLOCKS
    ) -> None:
        self.file = file
        self._fetch = fetch
        self.readahead = readahead
        self._pieces = plan_reads(file, 0, file.inode.size)
        self._starts: list[int] = []  # the file offset each piece starts at
        pos = 0
        for piece in self._pieces:
            self._starts.append(pos)
            pos += piece.length
        self._tasks: dict[BlockId, asyncio.Task[bytes]] = {}
        self._order: dict[BlockId, int] = {}  # block -> index of its first piece
        for i, piece in enumerate(self._pieces):
            if piece.slice_id is not None:
                self._order.setdefault((piece.slice_id, piece.index), i)
        self._next_sequential = 0  # where a read continuing the last one would start
        self.closed = False

    @property
    def size(self) -> int:
        return self.file.inode.size

    async def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) clipped at the end; b"" past it. Raises the block
        fetch's errors (ChecksumError, NotFoundError, StoreError...)."""
        if self.closed:
            raise ValueError("read of a closed handle")
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        first = bisect.bisect_right(self._starts, offset) - 1
        sequential = offset == self._next_sequential or offset == 0
        self._next_sequential = end
        last = first
        parts: list[bytes] = []
        i = first
        while i < len(self._pieces) and self._starts[i] < end:
            piece, start = self._pieces[i], self._starts[i]
            a, b = max(offset, start) - start, min(end, start + piece.length) - start
            if piece.slice_id is None:
                parts.append(bytes(b - a))
            else:
                block = await self._block(piece)
                parts.append(block[piece.offset + a : piece.offset + b])
            last = i
            i += 1
        if sequential:
            self._prefetch(last + 1)
        self._drop_behind(first)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _task(self, piece: Piece) -> asyncio.Task[bytes]:
        assert piece.slice_id is not None
        bid = (piece.slice_id, piece.index)
        task = self._tasks.get(bid)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # A failed fetch is not remembered: the next read of the block tries again.
            task = asyncio.ensure_future(self._fetch(piece))
            task.add_done_callback(_retrieve)  # a prefetch nobody reads may fail unheard
            self._tasks[bid] = task
        return task

    async def _block(self, piece: Piece) -> bytes:
        # shield: a read cancelled by the kernel (interrupt) leaves the fetch to the next one.
        return await asyncio.shield(self._task(piece))

    def _prefetch(self, start: int) -> None:
        """Start the fetches of the next `readahead` blocks from piece `start`."""
        started = 0
        seen: set[BlockId] = set()
        for piece in itertools.islice(self._pieces, start, None):
            if started >= self.readahead:
                break
            if piece.slice_id is None:
                continue
            bid = (piece.slice_id, piece.index)
            if bid in seen:
                continue
            seen.add(bid)
            started += 1
            self._task(piece)

    def _drop_behind(self, first: int) -> None:
        """Forget blocks whose first piece lies more than KEEP_BEHIND_BLOCKS blocks before the
        read at piece `first`: a sequential reader will not come back to them."""
        if len(self._tasks) <= self.readahead + KEEP_BEHIND_BLOCKS:
            return
        behind = sorted((self._order[bid], bid) for bid in self._tasks if self._order[bid] < first)
        for _, bid in behind[: max(0, len(behind) - KEEP_BEHIND_BLOCKS)]:
            task = self._tasks.pop(bid)
            if not task.done():
                task.cancel()

    async def aclose(self) -> None:
        self.closed = True
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _retrieve(task: asyncio.Task[bytes]) -> None:
    if not task.cancelled():
        task.exception()
