"""Writing a file: blocks to the source bucket first, then one metadata commit.

The order is the whole point: a committed record never names a block that is not in the source
bucket, so no reader anywhere can find metadata pointing at nothing. A crash between upload and
commit leaves unreferenced blocks (garbage for GC), never a broken file. The commit is one batch
(create, truncate, every slice), applied atomically by the source: readers see the old content
or the new, never a mix.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from objstore import ObjectStore
from objstore.checksum import checksum
from objstore.keys import block_key
from volume.client import SourceClient
from volume.inode import BLOCK_SIZE, CHUNK_SIZE

DEFAULT_UPLOAD_CONCURRENCY = 16  # requests in flight to the source bucket per client
DEFAULT_FILE_MODE = 0o644


@dataclass(frozen=True)
class WriteResult:
    path: str
    size: int
    version: int
    slices: int


def _size_of(f: BinaryIO) -> int | None:
    """The bytes left in `f` if knowable (to reserve slice ids in one go), else None."""
    try:
        return os.fstat(f.fileno()).st_size - f.tell()
    except (OSError, AttributeError, io.UnsupportedOperation):
        pass
    try:
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
        return end - here
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


async def read_pieces(f: BinaryIO) -> AsyncIterator[bytes]:
    """The file cut at chunk boundaries, in pieces of at most one chunk."""
    while True:
        piece = await asyncio.to_thread(f.read, CHUNK_SIZE)
        if not piece:
            return
        yield piece


async def upload_slice(store: ObjectStore, slice_id: int, data: bytes | memoryview) -> list[str]:
    """PUT every block of one slice (at most a chunk: 16 blocks at once); returns their
    checksums in block order. The store's ConcurrencyLayer bounds requests across slices."""
    view = memoryview(data)

    async def one(i: int) -> str:
        block = bytes(view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
        await store.put(block_key(slice_id, i, len(block)), block)
        return checksum(block)

    count = -(-len(view) // BLOCK_SIZE)
    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def write_file(
    client: SourceClient,
    store: ObjectStore,
    path: str,
    f: BinaryIO,
    *,
    mode: int = DEFAULT_FILE_MODE,
    uid: int = 0,
    gid: int = 0,
) -> WriteResult:
    """Replace `path` with the contents of `f` (created if missing). Returns the commit version.

    Raises the op's FsError (nothing committed) if e.g. the parent is missing or not writable.
    """
    size = _size_of(f)
    pieces_needed = max(1, -(-size // CHUNK_SIZE)) if size is not None else 1
    alloc = await client.op("alloc_slices", count=pieces_needed, uid=uid, gid=gid)
    next_id = int(alloc["effect"]["first"])
    end_id = next_id + int(alloc["effect"]["count"])
    writes: list[dict[str, Any]] = []
    offset = 0
    async for piece in read_pieces(f):
        if next_id >= end_id:  # the file grew while we read it: reserve more ids
            alloc = await client.op("alloc_slices", count=16, uid=uid, gid=gid)
            next_id = int(alloc["effect"]["first"])
            end_id = next_id + int(alloc["effect"]["count"])
        slice_id, next_id = next_id, next_id + 1
        sums = await upload_slice(store, slice_id, piece)
        writes.append(
            {
                "op": "write",
                "args": {
                    "path": path,
                    "chunk_index": offset // CHUNK_SIZE,
                    "pos": offset % CHUNK_SIZE,
                    "slice_id": slice_id,
                    "size": len(piece),
                    "checksums": sums,
                },
            }
        )
        offset += len(piece)
    ops = [
        {"op": "create", "args": {"path": path, "mode": mode, "exclusive": False}},
        {"op": "truncate", "args": {"path": path, "size": 0}},
        *writes,
    ]
    result = await client.ops(ops, uid=uid, gid=gid)
    result.raise_first_error()
    return WriteResult(path, offset, result.version, len(writes))
