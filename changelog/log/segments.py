"""The durable changelog of one source node: append-only segment files, read back by version.

The Raft apply thread appends each applied record here; HTTP handlers stream `GET /v1/changelog`
out of it from other threads; retention drops whole old segments. Appends are buffered and
become visible to readers only when handed to the OS whole (`flush`, `sync`, or a full buffer),
so a reader never sees part of a frame. Only the last segment can have a torn tail (a crash
mid-write); `open` cuts it off. Damage anywhere else is reported when read, as FrameError.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import structlog

from changelog.log.files import (
    INDEX_STRIDE,
    SegmentIndex,
    fsync_directory,
    index_entries,
    index_path,
    list_segments,
    recover_tail,
    segment_path,
    unlink_all,
    unlink_segment,
    write_index,
)
from changelog.log.reader import Segment, SegmentView, load_sealed
from volume.errors import ChangelogError
from volume.records import Record, decode_payload, encode_frame

log = structlog.get_logger(__name__)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
FLUSH_BYTES = 1024 * 1024  # buffered appends past this go to the OS (and to readers) at once
CHECKPOINT_BYTES = 4 * 1024 * 1024  # sync() refreshes the active segment's sidecar this often


class SegmentGapError(ChangelogError):
    """An append would leave a hole: its first new record is not `expected`."""

    def __init__(self, message: str, *, expected: int, got: int) -> None:
        super().__init__(message, hint="reset the log at the version the state restarts from")
        self.expected = expected
        self.got = got


class SegmentLog:
    """Segment files of one node. Thread-safe: one writer at a time, any number of readers.

    Empty log: `first_version == last_version == 0` when it never held a record and was never
    reset (the next append may start at any version); after `reset(v)` it is `v` and `v - 1`
    until records arrive. Otherwise versions first_version..last_version are held, contiguous.
    Build it with `SegmentLog.open`.
    """

    def __init__(self, directory: Path, *, segment_bytes: int, fsync: bool) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._view = SegmentView()  # what readers see; changed under self._lock only
        self._lock = self._view.lock
        self._write_lock = threading.Lock()  # one writer at a time; readers never take it
        self._last_version = 0  # appended, maybe still buffered
        self._last_ts = 0
        self._fd: int | None = None
        self._pending = bytearray()
        self._active_bytes = 0  # size of the active segment including the buffer
        self._checkpointed_bytes = 0
        self._dir_dirty = False
        self._closed = False
        self._failed: str | None = None

    # --- opening ---

    @classmethod
    def open(
        cls, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True
    ) -> SegmentLog:
        """Open (or create) the log in `directory`, cutting a torn tail off the last segment.

        Plain blocking IO; async callers use asyncio.to_thread. Only the last segment is scanned
        (from its sidecar checkpoint on); older ones are trusted to their sidecar, which is
        checked against the frames it points at, and are indexed on first read if it is missing.
        """
        self = cls(directory, segment_bytes=segment_bytes, fsync=fsync)
        directory.mkdir(parents=True, exist_ok=True)
        firsts = list_segments(directory)
        while firsts:
            if self._recover_last(firsts[-1], has_predecessor=len(firsts) > 1):
                break
            firsts.pop()  # an empty segment left by a crash right after a roll: its
            # predecessor is the real end, and may itself have a torn tail
        if not firsts:
            return self
        sealed = [
            load_sealed(segment_path(directory, a), a, b) for a, b in itertools.pairwise(firsts)
        ]
        self._view.segments = [*sealed, *self._view.segments]
        self._view.first_version = self._view.segments[0].first_version
        return self

    def _recover_last(self, first: int, *, has_predecessor: bool) -> bool:
        """Make the last segment, torn tail cut off, the active one.

        Returns False (and removes the file) if it holds no record and has a predecessor.
        """
        path = segment_path(self.directory, first)
        scan, checked_bytes = recover_tail(path, first, fsync=self._fsync)
        if scan.index.records == 0 and has_predecessor:
            unlink_segment(path)
            return False
        good = scan.index.covered_bytes
        segment = Segment(first, path, good, scan.index.offsets, indexed=True)
        self._view.segments = [segment]
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._active_bytes = good
        self._last_version = self._view.readable_version = first + scan.index.records - 1
        if scan.last_payload is not None:
            self._last_ts = decode_payload(scan.last_payload).ts
        self._checkpointed_bytes = checked_bytes
        if good - checked_bytes >= CHECKPOINT_BYTES or scan.problem is not None:
            self._checkpoint()
        return True

    # --- state ---

    @property
    def first_version(self) -> int:
        """Lowest version that may be read (see the class docstring for an empty log)."""
        return self._view.first_version

    @property
    def last_version(self) -> int:
        """Highest version appended, including appends not yet flushed to readers."""
        return self._last_version

    @property
    def readable_version(self) -> int:
        """Highest version readers can see now (flushed to the OS, not necessarily fsynced)."""
        return self._view.readable_version

    @property
    def last_ts(self) -> int:
        """ts of the last appended record; 0 if none since the log was created or reset."""
        return self._last_ts

    @property
    def records_bytes(self) -> int:
        """Bytes of all segments, the write buffer included."""
        with self._lock:
            return sum(s.size_bytes for s in self._view.segments) + len(self._pending)

    # --- writing ---

    def append(self, records: Sequence[Record]) -> int:
        """Append records in version order; returns how many were new.

        Idempotent: records with version <= last_version are skipped (a journal replay). The
        rest must run on from last_version + 1 (from any version >= 1 into a never-used log),
        else SegmentGapError and nothing of the batch is written. Buffered: readers see the
        records after `flush`/`sync` (or once the buffer passes FLUSH_BYTES); durable after `sync`.
        """
        with self._write_lock:
            self._check_open()
            fresh = not self._view.segments
            new = [r for r in records if fresh or r.version > self._last_version]
            if not new:
                return 0
            expected = new[0].version if fresh else self._last_version + 1
            if expected < 1:
                raise ValueError(f"versions start at 1, got {expected}")
            for i, record in enumerate(new):
                if record.version != expected + i:
                    raise SegmentGapError(
                        f"append of version {record.version} after {expected + i - 1}",
                        expected=expected + i,
                        got=record.version,
                    )
            frames = [encode_frame(r) for r in new]  # a bad record fails before any is written
            if fresh:
                self._create_segment(expected)
            for record, frame in zip(new, frames, strict=True):
                self._append_one(record, frame)
            return len(new)

    def _append_one(self, record: Record, frame: bytes) -> None:
        active = self._view.segments[-1]
        if self._active_bytes >= self._segment_bytes and self._last_version >= active.first_version:
            self._roll(record.version)
            active = self._view.segments[-1]
        n = record.version - active.first_version
        if n % INDEX_STRIDE == 0:
            active.offsets.append(self._active_bytes)
        if n == 0:
            active.first_ts = record.ts
        self._pending += frame
        self._active_bytes += len(frame)
        self._last_version = record.version
        self._last_ts = record.ts
        if len(self._pending) >= FLUSH_BYTES:
            self._flush()

    def flush(self) -> None:
        """Hand buffered appends to the OS: readers see them; a process crash keeps them."""
        with self._write_lock:
            self._check_open()
            self._flush()

    def sync(self) -> None:
        """flush, then fsync the active segment (and the directory after a new file).

        Group commit: append many, sync once. The fsync runs outside the writer lock, so the
        Raft thread's appends do not wait for the disk. With fsync=False this only flushes. A
        failed fsync fails the log (later writes raise): the kernel may have dropped the data.
        """
        with self._write_lock:
            self._check_open()
            if self._fd is None:
                return
            self._flush()
            segment = self._view.segments[-1]
            size, version = segment.size_bytes, self._view.readable_version
            if not self._fsync:
                self._maybe_checkpoint(segment, size, version)
                return
            fd = os.dup(self._fd)  # a roll may close self._fd meanwhile
            dir_dirty, self._dir_dirty = self._dir_dirty, False
        try:
            os.fsync(fd)
            if dir_dirty:
                fsync_directory(self.directory)
        except OSError as exc:
            self._failed = f"fsync failed ({exc}): what was written may be lost"
            raise
        finally:
            os.close(fd)
        with self._write_lock:
            self._maybe_checkpoint(segment, size, version)

    def _sync_locked(self) -> None:
        assert self._fd is not None
        self._flush()
        if self._fsync:
            os.fsync(self._fd)
            if self._dir_dirty:
                fsync_directory(self.directory)
                self._dir_dirty = False

    def _maybe_checkpoint(self, segment: Segment, size: int, version: int) -> None:
        """Refresh the sidecar of `segment` up to `size` (synced) if it is still the active one
        and has grown by CHECKPOINT_BYTES since the last time."""
        active = self._view.segments[-1] if self._view.segments else None
        if (
            active is segment
            and not self._closed
            and size - self._checkpointed_bytes >= CHECKPOINT_BYTES
        ):
            self._checkpoint(size, version)

    def _flush(self) -> None:
        if not self._pending or self._fd is None:
            return
        active = self._view.segments[-1]
        try:
            with memoryview(self._pending) as view:
                done = 0
                while done < len(view):
                    done += os.write(self._fd, view[done:])
        except OSError as exc:
            # ENOSPC and friends: leave no partial frame behind for the next write to follow
            try:
                os.ftruncate(self._fd, active.size_bytes)
            except OSError:
                self._failed = f"a write failed ({exc}) and its partial frame could not be removed"
            raise
        with self._lock:
            active.size_bytes += len(self._pending)
            self._view.readable_version = self._last_version
        self._pending.clear()

    def _checkpoint(self, size: int | None = None, version: int | None = None) -> None:
        """Write the active segment's sidecar up to `size`/`version` (default: all flushed),
        a hint for the next open; only ever over data that is already synced."""
        active = self._view.segments[-1]
        size = active.size_bytes if size is None else size
        version = self._view.readable_version if version is None else version
        records = version - active.first_version + 1
        index = SegmentIndex(size, records, active.offsets[: index_entries(records)])
        try:
            write_index(active.path, active.first_version, index)
        except OSError as exc:
            log.warning(
                "changelog.segment_index_write_failed", path=str(active.path), error=str(exc)
            )
        self._checkpointed_bytes = size

    def _roll(self, next_version: int) -> None:
        """Seal the active segment (durably, with a complete sidecar) and start the next one."""
        assert self._fd is not None
        self._flush()
        if self._fsync:
            os.fsync(self._fd)
        self._checkpoint()
        os.close(self._fd)
        self._fd = None
        self._create_segment(next_version)

    def _create_segment(self, first: int) -> None:
        path = segment_path(self.directory, first)
        index_path(path).unlink(missing_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        segment = Segment(first, path, 0, array("Q"), indexed=True)
        with self._lock:
            if not self._view.segments:
                self._view.first_version = first
            self._view.segments.append(segment)
        self._active_bytes = 0
        self._checkpointed_bytes = 0
        self._dir_dirty = True

    def reset(self, start_version: int) -> None:
        """Drop every segment and restart empty, so the next append begins at start_version.

        For a jump of the node's state (a Raft snapshot install). Afterwards nothing below
        start_version is served (VersionGoneError); a reader already in flight raises it too,
        after at most the rest of its current read buffer (~1 MiB of records read before).
        """
        if start_version < 1:
            raise ValueError(f"versions start at 1, got {start_version}")
        with self._write_lock:
            self._check_open()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._pending.clear()
            with self._lock:
                dropped, self._view.segments = self._view.segments, []
                for segment in dropped:
                    segment.deleted = True
                self._view.generation += 1
                self._view.first_version = start_version
                self._last_version = self._view.readable_version = start_version - 1
                self._last_ts = 0
            unlink_all([s.path for s in dropped])
            self._create_segment(start_version)
            if self._fsync:
                fsync_directory(self.directory)
                self._dir_dirty = False
            log.info("changelog.segments_reset", start_version=start_version, dropped=len(dropped))

    def truncate_before(self, version: int, *, min_age_s: float = 0.0) -> int:
        """Retention: delete whole segments whose every record is below `version` and, with
        `min_age_s`, older than that (by record ts). Never the active segment. Returns how many
        were deleted; first_version moves up to the first kept one. Idempotent."""
        now_ms = time.time_ns() // 1_000_000
        with self._write_lock:
            self._check_open()
            with self._lock:
                candidates = [
                    (seg, nxt)
                    for seg, nxt in itertools.pairwise(self._view.segments)
                    if nxt.first_version <= version
                ]
            doomed: list[Segment] = []
            for seg, nxt in candidates:  # nxt's first record is newer than all of seg's
                if min_age_s > 0:
                    ts = self._view.first_ts(nxt)
                    if ts is None or ts > now_ms - min_age_s * 1000:
                        break
                doomed.append(seg)
            if not doomed:
                return 0
            with self._lock:
                del self._view.segments[: len(doomed)]
                for seg in doomed:
                    seg.deleted = True
                self._view.first_version = self._view.segments[0].first_version
            unlink_all([s.path for s in doomed])
            if self._fsync:
                fsync_directory(self.directory)
            return len(doomed)

    # --- reading ---

    def read_from(self, version: int, *, max_records: int | None = None) -> Iterator[Record]:
        """Records version, version + 1, ... as far as readable now (or max_records of them).

        Raises VersionGoneError at once if version < first_version, and during iteration if a
        reset or retention removes what the reader has not reached yet; yields nothing if
        version > readable_version. A damaged frame raises FrameError: a record is never
        skipped or returned wrong. Safe while another thread appends; never blocks the writer.
        """
        return self._view.read_from(version, max_records=max_records)

    def read_frames_from(self, version: int, *, max_bytes: int | None = None) -> Iterator[bytes]:
        """The same records as read_from, as stored frames (checksums verified), so the HTTP
        server streams them without re-encoding.

        Each item is one or more whole frames of consecutive versions (~1 MiB at most, unless one
        frame is larger), the first starting exactly at `version`. Altogether at most max_bytes,
        but at least one frame when any is readable. Errors as read_from.
        """
        return self._view.read_frames_from(version, max_bytes=max_bytes)

    def close(self) -> None:
        """sync, write the active segment's sidecar, close. Idempotent. A failing sync (a full
        disk) still closes the log, then raises: what it could not write the journal refills."""
        with self._write_lock:
            if self._closed:
                return
            try:
                if self._fd is not None:
                    self._sync_locked()
                    if self._checkpointed_bytes != self._view.segments[-1].size_bytes:
                        self._checkpoint()
            finally:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                with self._lock:
                    self._closed = True

    def __enter__(self) -> SegmentLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ChangelogError(f"segment log {self.directory} is closed")
        if self._failed is not None:
            raise ChangelogError(f"segment log {self.directory}: {self._failed}")
