"""Consistent namespace snapshots without stalling writes.

The Raft thread is paused only for an `os.fork()` (tens of milliseconds even at 1M inodes: page
tables are copied, pages are shared copy-on-write); the child writes the namespace as it was at
that instant to a file and exits, while the parent goes on applying. pysyncobj's own compaction
works the same way. The child touches nothing but the namespace and the file (no locks, no
logging, no event loop) and leaves with `os._exit`. The file holds volume/snapshot.py's stream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from changelog.namespace import Namespace
from changelog.raft import MetaState
from volume.snapshot import read_snapshot_records, snapshot_frames

KEEP_SNAPSHOTS = 2


def write_snapshot(ns: Namespace, version: int, ts: int, path: Path) -> None:
    with open(path, "wb", buffering=1024 * 1024) as f:
        for frame in snapshot_frames(ns.iter_snapshot(), version, ts):
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


def read_snapshot_file(path: Path) -> tuple[int, int, Namespace]:
    """(version, ts, namespace) from a snapshot file; FrameError if it is damaged."""

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                yield chunk

    records = read_snapshot_records(chunks())
    header = next(records)
    rows: list[dict[str, Any]] = [r.effect for r in records]
    return header.version, header.ts, Namespace.from_snapshot(rows)
