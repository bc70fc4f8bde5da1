"""Consistent namespace snapshots without stalling writes.

The Raft thread is paused only for an `os.fork()` (tens of milliseconds even at 1M inodes: page
tables are copied, pages are shared copy-on-write); the child writes the namespace as it was at
that instant to a file and exits, while the parent goes on applying. pysyncobj's own compaction
works the same way. The child touches nothing but the namespace and the file (no locks, no
logging, no event loop) and leaves with `os._exit`.

File format: the changelog frame format (see records.py) carrying `Record`s of op "snapshot":
a header record (version = the snapshot's version, effect = {"ts", "rows"}), then one record per
row of `Namespace.iter_snapshot()`, then a trailer record with op "end" so a truncated file or
stream is detected.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

from changelog.errors import FrameError
from changelog.namespace import Namespace
from changelog.records import FrameDecoder, Record, encode_frame
from changelog.state import MetaState

HEADER_OP = "snapshot"
ROW_OP = "row"
END_OP = "end"
KEEP_SNAPSHOTS = 2


def snapshot_frames(ns: Namespace, version: int, ts: int) -> Iterator[bytes]:
    rows = 0
    yield encode_frame(Record(version, ts, HEADER_OP, {"ts": ts}))
    for row in ns.iter_snapshot():
        rows += 1
        yield encode_frame(Record(version, ts, ROW_OP, row))
    yield encode_frame(Record(version, ts, END_OP, {"rows": rows}))


def write_snapshot(ns: Namespace, version: int, ts: int, path: Path) -> None:
    with open(path, "wb", buffering=1024 * 1024) as f:
        for frame in snapshot_frames(ns, version, ts):
            f.write(frame)
        f.flush()
        os.fsync(f.fileno())


async def take_snapshot(state: MetaState, directory: Path) -> tuple[int, Path]:
    """A snapshot file of the state as of now: (version, path). Reuses one at the same version."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    with state.lock:
        version, ts = state.version, state.last_ts
        final = directory / f"snap-{version:020d}.bin"
        if final.exists():
            return version, final
        tmp = directory / f".snap-{version:020d}.{os.getpid()}.tmp"
        pid = os.fork()
        if pid == 0:  # child: write and leave, touching nothing else
            code = 0
            try:
                write_snapshot(state.ns, version, ts, tmp)
            except BaseException:  # noqa: BLE001 - the child must always _exit
                code = 1
            os._exit(code)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tmp.unlink(missing_ok=True)
        raise OSError(f"snapshot writer (pid {pid}) failed with status {status}")
    await asyncio.to_thread(_publish, tmp, final)
    return version, final


def _publish(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    for old in sorted(final.parent.glob("snap-*.bin"))[:-KEEP_SNAPSHOTS]:
        old.unlink(missing_ok=True)


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
    """Decode and check a whole snapshot stream (see SnapshotDecoder)."""
    decoder = SnapshotDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    decoder.finish()


async def aread_snapshot_records(chunks: AsyncIterator[bytes]) -> AsyncIterator[Record]:
    decoder = SnapshotDecoder()
    async for chunk in chunks:
        for rec in decoder.feed(chunk):
            yield rec
    decoder.finish()


def load_snapshot(path: Path) -> tuple[int, int, Namespace]:
    """(version, ts, namespace) from a snapshot file; FrameError if it is damaged."""

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                yield chunk

    records = read_snapshot_records(chunks())
    header = next(records)
    rows: list[dict[str, Any]] = [r.effect for r in records]
    return header.version, header.ts, Namespace.from_snapshot(rows)
