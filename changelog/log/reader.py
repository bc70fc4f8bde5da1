"""The read side of a SegmentLog: what readers may see, and reading frames back by version.

The writer publishes under `SegmentView.lock` only whole frames it has handed to the OS
(`Segment.size_bytes`, `readable_version`); readers take the lock just long enough to find and
open their segment, then read the file without it, never past the published boundary.
"""

from __future__ import annotations

import bisect
import os
import threading
from array import array
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from changelog.log.files import (
    INDEX_STRIDE,
    check_index,
    first_frame,
    iter_frame_runs,
    payload_version,
    read_index,
    scan_segment,
    write_index,
)
from volume.errors import FrameError, VersionGoneError
from volume.records import HEADER, Record, decode_payload

log = structlog.get_logger(__name__)

# (buffer, bounds, i, j): frames bounds[i]..bounds[j] of buffer, consecutive versions
_Run = tuple[bytes, list[int], int, int]
_Runs = Generator[_Run, None, None]


@dataclass(eq=False)
class Segment:
    first_version: int
    path: Path
    size_bytes: int  # bytes readers may read: the whole file once sealed
    offsets: array[int]  # file offset of record first_version + i * INDEX_STRIDE
    indexed: bool  # offsets cover the whole segment (an old one without sidecar: on first read)
    first_ts: int | None = None
    broken: str | None = None  # why indexing it failed; every read of it raises this again
    deleted: bool = False
    build_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True, slots=True)
class _Position:
    segment: Segment
    fd: int
    offset: int  # file offset of the frame of `version`
    version: int
    limit_bytes: int
    limit_version: int
    generation: int


def load_sealed(path: Path, first_version: int, next_first: int) -> Segment:
    """A segment that is not the last, indexed from its sidecar if that checks out against the
    data; otherwise it is indexed (and checked whole) on first read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        index = read_index(path, first_version)
        if (
            index is not None
            and index.covered_bytes == size
            and index.records == next_first - first_version
            and check_index(fd, first_version, index, size)
        ):
            return Segment(first_version, path, size, index.offsets, indexed=True)
    finally:
        os.close(fd)
    return Segment(first_version, path, size, array("Q"), indexed=False)


def _first_of(segment: Segment) -> int:
    return segment.first_version


class SegmentView:
    """The published state of a segment log and its read path. Thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.segments: list[Segment] = []
        self.first_version = 0
        self.readable_version = 0
        self.generation = 0  # bumped by a reset: a reader in flight re-checks where it stands

    def read_from(self, version: int, *, max_records: int | None = None) -> Iterator[Record]:
        """See SegmentLog.read_from."""
        self._check_start(version)
        return _records(self._runs(version), version, max_records)

    def read_frames_from(self, version: int, *, max_bytes: int | None = None) -> Iterator[bytes]:
        """See SegmentLog.read_frames_from."""
        self._check_start(version)
        return _chunks(self._runs(version), version, max_bytes)

    def first_ts(self, segment: Segment) -> int | None:
        """ts of a segment's first record (read once from the file), None if unreadable."""
        if segment.first_ts is None and segment.size_bytes:
            fd = os.open(segment.path, os.O_RDONLY)
            try:
                payload = first_frame(fd, segment.size_bytes)
            finally:
                os.close(fd)
            if payload is not None:
                segment.first_ts = decode_payload(payload).ts
        return segment.first_ts

    def _check_start(self, version: int) -> None:
        if version < 1:
            raise ValueError(f"versions start at 1, got {version}")
        with self.lock:
            if version < self.first_version:
                raise self._gone(version)

    def _gone(self, version: int) -> VersionGoneError:
        first = self.first_version
        return VersionGoneError(
            f"version {version} is below retention (first available {first})",
            requested=version,
            first_available=first,
        )

    def _runs(self, version: int) -> _Runs:
        """Checksum-verified frames from `version` on, a read buffer at a time, up to what is
        readable. Versions are by position: each consumer checks every frame it uses."""
        next_version = version
        hint: tuple[Segment, int] | None = None  # where next_version's frame starts
        while (pos := self._locate(next_version, hint)) is not None:
            try:
                at = pos.version  # version of the next frame read
                resume_at = pos.offset
                for buf, base, bounds in iter_frame_runs(pos.fd, pos.offset, pos.limit_bytes):
                    i, n = 0, len(bounds) - 1
                    while at < next_version and i < n:  # from the index entry up to `version`
                        got = payload_version(buf, bounds[i] + HEADER.size, bounds[i + 1])
                        if got != at:
                            raise FrameError(
                                f"{pos.segment.path.name}: frame at offset {base + bounds[i]} "
                                f"holds version {got}, expected {at}"
                            )
                        at, i = at + 1, i + 1
                    if i == n:
                        continue
                    if pos.generation != self.generation:
                        break  # reset under our feet: re-check what may still be served
                    j = min(n, i + pos.limit_version - at + 1)
                    yield buf, bounds, i, j
                    at += j - i
                    next_version, resume_at = at, base + bounds[j]
                    if at > pos.limit_version:
                        break
                else:
                    raise FrameError(
                        f"{pos.segment.path.name} ends at version {at - 1}, "
                        f"expected {pos.limit_version}"
                    )
                hint = (pos.segment, resume_at)
            finally:
                os.close(pos.fd)

    def _locate(self, version: int, hint: tuple[Segment, int] | None) -> _Position | None:
        """Open the segment holding `version`, positioned at or before its frame; None if
        `version` is not readable yet. Raises VersionGoneError below first_version."""
        while True:
            with self.lock:
                if version < self.first_version:
                    raise self._gone(version)
                if version > self.readable_version or not self.segments:
                    return None
                segments = self.segments
                i = bisect.bisect_right(segments, version, key=_first_of) - 1
                segment = segments[i]
                if i + 1 < len(segments):
                    limit_version = segments[i + 1].first_version - 1
                else:
                    limit_version = self.readable_version
                if segment.broken is not None:
                    raise FrameError(segment.broken)
                if segment.indexed:
                    if hint is not None and hint[0] is segment:
                        offset, at = hint[1], version
                    else:
                        k = (version - segment.first_version) // INDEX_STRIDE
                        offset = segment.offsets[k]
                        at = segment.first_version + k * INDEX_STRIDE
                    fd = os.open(segment.path, os.O_RDONLY)
                    return _Position(
                        segment, fd, offset, at, segment.size_bytes, limit_version, self.generation
                    )
            self._build_index(segment, limit_version - segment.first_version + 1)

    def _build_index(self, segment: Segment, records: int) -> None:
        """Index an old segment that had no usable sidecar, outside the lock (it takes a scan).

        A segment that does not hold exactly `records` intact records is marked broken.
        """
        with segment.build_lock:
            if segment.indexed or segment.broken is not None or segment.deleted:
                return
            name = segment.path.name
            try:
                fd = os.open(segment.path, os.O_RDONLY)
            except FileNotFoundError as exc:
                if segment.deleted:
                    return
                raise FrameError(f"{name} is missing") from exc
            try:
                size = os.fstat(fd).st_size
                scan = scan_segment(fd, segment.first_version, size, None, strict=True)
                if scan.index.records != records:
                    raise FrameError(
                        f"holds {scan.index.records} records, but the next segment starts at "
                        f"version {segment.first_version + records}"
                    )
            except FrameError as exc:
                with self.lock:
                    segment.broken = f"{name}: {exc.message}"
                log.error("changelog.segment_corrupt", path=str(segment.path), error=exc.message)
                raise FrameError(segment.broken) from exc
            finally:
                os.close(fd)
            with self.lock:
                if segment.deleted:
                    return
                segment.offsets = scan.index.offsets
                segment.size_bytes = size
                segment.indexed = True
            try:
                write_index(segment.path, segment.first_version, scan.index)
            except OSError as exc:
                log.warning(
                    "changelog.segment_index_write_failed", path=str(segment.path), error=str(exc)
                )


def _records(runs: _Runs, version: int, max_records: int | None) -> Iterator[Record]:
    expect = version
    left = max_records
    try:
        for buf, bounds, i, j in runs:
            if left is not None:
                if left <= 0:
                    return
                j = min(j, i + left)
                left -= j - i
            for k in range(i, j):
                record = decode_payload(buf[bounds[k] + HEADER.size : bounds[k + 1]])
                if record.version != expect:
                    raise FrameError(f"record holds version {record.version}, expected {expect}")
                expect += 1
                yield record
    finally:
        runs.close()


def _chunks(runs: _Runs, version: int, max_bytes: int | None) -> Iterator[bytes]:
    """One bytes per read buffer: the frames it holds from where the last one ended."""
    expect = version
    total = 0
    try:
        for buf, bounds, i, j in runs:
            k = i
            while k < j:
                size = bounds[k + 1] - bounds[k]
                if max_bytes is not None and total and total + size > max_bytes:
                    break
                got = payload_version(buf, bounds[k] + HEADER.size, bounds[k + 1])
                if got != expect:
                    raise FrameError(f"frame holds version {got}, expected {expect}")
                expect, total, k = expect + 1, total + size, k + 1
            if k > i:
                yield buf[bounds[i] : bounds[k]]
            if k < j:
                return
    finally:
        runs.close()
