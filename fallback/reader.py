"""Reading a file: resolve chunks to block ranges, fetch blocks ahead, verify, assemble.

Sequential reads (model loading) are the hot path: block fetches run `readahead` at a time,
in order, and every block is verified against its recorded checksum before a byte of it is
returned. A block is always fetched whole, so it can be verified, then sliced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fallback.view import ChunkMap, FileVersion
from objstore import ObjectStore
from objstore.checksum import checksum
from objstore.errors import ChecksumError
from objstore.keys import block_key
from volume.extents import block_ranges, visible_extents
from volume.inode import CHUNK_SIZE, Extent

DEFAULT_READAHEAD = 16
EMPTY_CHUNK = ChunkMap([])


@dataclass(frozen=True, slots=True)
class Piece:
    """`length` bytes of the file: zeros if `slice_id` is None, else part of one block."""

    length: int
    slice_id: int | None = None
    index: int = 0
    block_size: int = 0
    offset: int = 0
    checksum: str = ""


def plan_reads(file: FileVersion, offset: int, length: int) -> list[Piece]:
    """The pieces covering [offset, offset+length) of the file, clipped at its size, from the
    chunk maps of one version (a chunk absent from `file.chunks` reads as zeros)."""
    inode = file.inode
    end = min(inode.size, offset + length)
    pieces: list[Piece] = []
    pos = offset
    while pos < end:
        index = pos // CHUNK_SIZE
        chunk_start = index * CHUNK_SIZE
        chunk_len = min(CHUNK_SIZE, inode.size - chunk_start)
        cmap = file.chunks.get(index, EMPTY_CHUNK)
        for ext in visible_extents(cmap.slices, chunk_len):
            a = max(pos, chunk_start + ext.pos)
            b = min(end, chunk_start + ext.pos + ext.length)
            if a >= b:
                continue
            if ext.is_hole or ext.slice_id is None:
                pieces.append(Piece(b - a))
                continue
            sums = cmap.checksums.get(ext.slice_id, [])
            skip = a - (chunk_start + ext.pos)
            sub = Extent(a - chunk_start, b - a, ext.slice_id, ext.slice_size, ext.slice_off + skip)
            for br in block_ranges(sub):
                pieces.append(
                    Piece(
                        br.length,
                        ext.slice_id,
                        br.index,
                        br.block_size,
                        br.offset,
                        sums[br.index] if br.index < len(sums) else "",
                    )
                )
        pos = chunk_start + chunk_len
    return pieces


async def fetch_block(
    store: ObjectStore, slice_id: int, index: int, size: int, expect: str
) -> bytes:
    """One whole block, verified. Raises ChecksumError on a mismatch, NotFoundError if absent."""
    key = block_key(slice_id, index, size)
    data = await store.get(key)
    if expect and checksum(data) != expect:
        raise ChecksumError(
            f"block checksum mismatch (want {expect})", op="get", key=key, url=store.url
        )
    if len(data) != size:
        raise ChecksumError(
            f"block is {len(data)} bytes, want {size}", op="get", key=key, url=store.url
        )
    return data


FetchBlock = Callable[[Piece], Coroutine[Any, Any, bytes]]


async def iter_pieces(
    fetch: FetchBlock, pieces: list[Piece], *, readahead: int = DEFAULT_READAHEAD
) -> AsyncIterator[bytes]:
    """The bytes of `pieces` in order, with up to `readahead` block fetches in flight, so
    memory stays at `readahead` blocks for any file size. `fetch(piece)` returns the whole,
    verified block the piece lies in (fallback/blocks.py).

    Consecutive pieces of one block share one fetch.
    """
    runs: list[Piece] = []
    for p in pieces:
        if p.slice_id is not None and (
            not runs or (runs[-1].slice_id, runs[-1].index) != (p.slice_id, p.index)
        ):
            runs.append(p)
    window: asyncio.Queue[asyncio.Task[bytes]] = asyncio.Queue(maxsize=readahead)
    started: list[asyncio.Task[bytes]] = []

    async def producer() -> None:
        for p in runs:
            assert p.slice_id is not None
            task = asyncio.create_task(fetch(p))
            started.append(task)
            await window.put(task)

    prod = asyncio.create_task(producer())
    current: tuple[int, int] | None = None
    block = b""
    try:
        for p in pieces:
            if p.slice_id is None:
                yield bytes(p.length)
                continue
            if (p.slice_id, p.index) != current:
                block = await (await window.get())
                current = (p.slice_id, p.index)
            yield block[p.offset : p.offset + p.length]
    finally:
        prod.cancel()
        for t in started:
            t.cancel()
