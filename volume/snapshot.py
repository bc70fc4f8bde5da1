"""The snapshot a new or resyncing mirror loads: its rows and the framed stream they travel in.

Rows (msgpack/JSON friendly dicts, in this order):

1. one header   {"row": "header", "format": 1, "next_ino", "next_slice_id",
                 "pending": [[first, end, ts], ...] (slice ids allocated, not committed: the
                 half-open range and the ts (ms) of the allocation; older snapshots have
                 [first, end] only, read as ts 0),
                 "expired": [[first, end], ...] (ids the upload sweeper expired and has not yet
                 swept; absent in older snapshots: none),
                 "inodes": count of inode rows, "slices": count of slice rows}
                 A mirror needs none of the id bookkeeping; the source's own rebuild does.
2. per live slice {"row": "slice", "id", "size", "checksums": [str, one per block]}
3. per inode    {"row": "inode", "parent", "name", <every attr field: "ino", "kind", "mode",
                 "uid", "gid", "size", "mtime_ms", "ctime_ms", "nlink", "target">,
                 "chunks": [[chunk_index, [[id, size, off, len, pos], ...]], ...]}
                 The root has parent 0 and name "". A directory's row comes before its
                 children's (breadth first); chunks ascend by index, refs are in chunk order
                 (newer later). Order among siblings is unspecified.

Stream: the changelog frame format (volume/records.py) carrying `Record`s: a header record of
op "snapshot" (version = the snapshot's version, effect = {"ts"}), one record of op "row" per
row, then a trailer of op "end" with the row count, so a truncated file or stream is detected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from volume.errors import FrameError
from volume.records import FrameDecoder, Record, encode_frame

SNAPSHOT_FORMAT = 1
HEADER_OP = "snapshot"
ROW_OP = "row"
END_OP = "end"


def snapshot_frames(rows: Iterable[dict[str, Any]], version: int, ts: int) -> Iterator[bytes]:
    """The framed stream of `rows` taken at `version` (whose record has timestamp `ts`)."""
    count = 0
    yield encode_frame(Record(version, ts, HEADER_OP, {"ts": ts}))
    for row in rows:
        count += 1
        yield encode_frame(Record(version, ts, ROW_OP, row))
    yield encode_frame(Record(version, ts, END_OP, {"rows": count}))


class SnapshotDecoder:
    """Incremental, checked decoding of a snapshot stream: header first, trailer last, and the
    trailer's row count must match. Feed chunks; call `finish()` at end of stream."""

    def __init__(self) -> None:
        self._frames = FrameDecoder()
        self.header: Record | None = None
        self.rows = 0
        self.done = False

    def feed(self, chunk: bytes) -> Iterator[Record]:
        for rec in self._frames.feed(chunk):
            if self.done:
                raise FrameError("data after the snapshot trailer")
            if self.header is None:
                if rec.op != HEADER_OP:
                    raise FrameError(f"snapshot starts with {rec.op!r}, not a header")
                self.header = rec
                yield rec
            elif rec.op == END_OP:
                if rec.effect.get("rows") != self.rows:
                    raise FrameError(f"snapshot has {self.rows} rows, trailer says {rec.effect}")
                self.done = True
            else:
                self.rows += 1
                yield rec

    def finish(self) -> None:
        self._frames.finish()
        if not self.done:
            raise FrameError("snapshot stream ended before its trailer")


def read_snapshot_records(chunks: Iterable[bytes]) -> Iterator[Record]:
    """Decode and check a whole snapshot stream: the header record, then one per row."""
    decoder = SnapshotDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    decoder.finish()


async def aread_snapshot_records(chunks: AsyncIterator[bytes]) -> AsyncIterator[Record]:
    """`read_snapshot_records` over an async stream (the source API's /v1/snapshot)."""
    decoder = SnapshotDecoder()
    async for chunk in chunks:
        for rec in decoder.feed(chunk):
            yield rec
    decoder.finish()
