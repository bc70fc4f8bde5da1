"""One source node: Raft member + durable changelog segments + the loops around them.

Threads: pysyncobj's thread applies commands (MetaState) and appends the resulting records to
the segment log; the event loop serves HTTP, commits ticks, fsyncs segments and trims them.
The freshest records are served from the in-state tail (`MetaState.recent`), older ones from
segment files, so a subscriber at the head sees a record as soon as it is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from changelog.gc import SourceGc
from changelog.log import SegmentGapError, SegmentLog
from changelog.raft import MetaState, RaftNode, make_conf, now_ms
from changelog.sweeper import UploadSweeper
from volume.config import VolumeConfig
from volume.errors import ChangelogError, VersionGoneError
from volume.records import TICK, Record, encode_frame

log = structlog.get_logger(__name__)

RETENTION_INTERVAL_S = 5.0
SEGMENT_FSYNC_INTERVAL_S = 0.1
READ_BATCH_BYTES = 1024 * 1024
EXIT_IO_FATAL = 74  # EX_IOERR, as a failed journal fsync (changelog/raft/journal.py)


class SourceNode:
    def __init__(self, cfg: VolumeConfig, node_id: int) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.me = cfg.node(node_id)
        self.data_dir = cfg.resolve(self.me.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.segments = SegmentLog.open(
            self.data_dir / "changelog", segment_bytes=cfg.source.segment_bytes
        )
        self._seg_lock = threading.Lock()
        self._seg_queue: queue.SimpleQueue[list[Record] | None] = queue.SimpleQueue()
        self._seg_thread = threading.Thread(
            target=self._segment_writer, name="segment-writer", daemon=True
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self.started_at = time.time()
        # Set when the node begins to stop: long-lived answers (a followed changelog stream)
        # end at once, so the HTTP server can close and Raft step down within seconds.
        self.stopping = asyncio.Event()
        self.state = MetaState(
            on_records=self._on_records, dedup_window_s=cfg.source.dedup_window_s
        )
        api_by_raft = {n.raft: n.api for n in cfg.source.nodes}
        partners = [n.raft for n in cfg.source.nodes if n.id != node_id]
        conf = make_conf(
            journal_file=self.data_dir / "raft.journal",
            dump_file=self.data_dir / "raft.dump",
            password=cfg.secret,
            log_compaction_min_entries=cfg.source.compaction_min_entries,
        )
        self.raft = RaftNode(self.me.raft, partners, conf, self.state, api_by_raft=api_by_raft)
        self.gc: SourceGc | None = None  # set by serve_node once the bucket is open
        self.segment_error: str | None = None
        self._on_fatal: Callable[[Exception], None] = _exit_on_io_error
        self.sweeper: UploadSweeper | None = None  # likewise

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = asyncio.Event()
        with self._seg_lock:
            self._sync_segments()
        if not self._seg_thread.is_alive():
            self._seg_thread.start()

    # --- Raft thread ---

    def _on_records(self, records: list[Record]) -> None:
        """Hand records to the segment writer and wake readers; never touches the disk, since
        anything slow on the Raft thread delays every commit (and can depose the leader)."""
        self._seg_queue.put(records)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._notify)

    def _segment_writer(self) -> None:
        """Append what the Raft thread applied and hand it to the OS at once (readers see it);
        fsync at most every SEGMENT_FSYNC_INTERVAL_S. Segments are not the source of truth:
        after a crash, journal replay and the in-state tail refill whatever the last fsync
        missed, so an fsync per commit would only compete with the Raft journal's fsyncs.

        An I/O error (ENOSPC, EIO, a failed fsync) stops the node loudly, as a failed journal
        fsync does: a node that goes on committing while its changelog stops growing would
        serve mirrors a log with a hole. Its peers keep the quorum and the stream; restarted
        (with space), the node refills its segments from the journal."""
        try:
            self._write_segments()
        except (OSError, ChangelogError) as exc:  # ChangelogError: a log failed by an earlier fsync
            code = errno.errorcode.get(getattr(exc, "errno", None) or 0, "")
            self.segment_error = f"{exc} ({code})" if code else str(exc)
            log.critical(
                "changelog.segment_write_failed",
                node=self.node_id,
                error=self.segment_error,
                path=str(self.data_dir / "changelog"),
            )
            self._on_fatal(exc)
        except Exception as exc:  # a bug: still never a silently dead writer
            self.segment_error = repr(exc)
            log.exception("changelog.segment_writer_crashed", node=self.node_id)
            self._on_fatal(exc)

    def _write_segments(self) -> None:
        last_sync = time.monotonic()
        while True:
            try:
                batch = self._seg_queue.get(timeout=SEGMENT_FSYNC_INTERVAL_S)
            except queue.Empty:
                batch = []
            stop = batch is None
            records: list[Record] = list(batch or ())
            while not self._seg_queue.empty():
                more = self._seg_queue.get_nowait()
                if more is None:
                    stop = True
                else:
                    records.extend(more)
            with self._seg_lock:
                if records:
                    try:
                        self.segments.append(records)
                    except SegmentGapError:
                        self._sync_segments()
                    self.segments.flush()
                if stop or time.monotonic() - last_sync >= SEGMENT_FSYNC_INTERVAL_S:
                    self.segments.sync()
                    last_sync = time.monotonic()
            if stop:
                return

    def _sync_segments(self) -> None:
        """Make the segment log end at the state's version, refilling from the in-state tail.

        After a restart or a Raft snapshot install the state can be ahead of the segments; if the
        tail no longer reaches back to the segments' end, the log restarts at the tail's first
        version and readers below it get VersionGoneError (they resync), never a gap.
        """
        with self.state.lock:
            recent = list(self.state.recent)
            version = self.state.version
        last = self.segments.last_version
        if version <= last:
            return
        if not recent or recent[0].version > last + 1:
            start = recent[0].version if recent else version + 1
            log.warning("changelog.segments_reset", last=last, restart_at=start, state=version)
            self.segments.reset(start)
        self.segments.append([r for r in recent if r.version > self.segments.last_version])

    # --- event loop ---

    def _notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    @property
    def version(self) -> int:
        return int(self.state.version)

    async def wait_version(self, version: int, timeout_s: float) -> bool:
        """True once the state has applied `version`; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        while self.state.version < version:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def first_available(self) -> int:
        first = self.segments.first_version
        return first if first else self.version + 1

    def frames_recent(self, version: int, max_bytes: int = READ_BATCH_BYTES) -> list[bytes] | None:
        """Frames from the in-state tail, or None if `version` is not in it. Memory only, so the
        event loop calls it directly: a subscriber at the head gets a record without a thread hop.
        Raises VersionGoneError below retention."""
        first = self.segments.first_version
        if first and version < first:
            raise VersionGoneError(
                f"version {version} is below retention (first available {first})",
                requested=version,
                first_available=first,
            )
        with self.state.lock:
            recent = self.state.recent
            if not recent or version > recent[-1].version:
                return [] if version > self.state.version else None
            if version < recent[0].version:
                return None
            # Walk from the newer end: a follower at the head asks for the last few records.
            tail = list(itertools.islice(reversed(recent), recent[-1].version - version + 1))
        out: list[bytes] = []
        size = 0
        for rec in reversed(tail):
            frame = encode_frame(rec)
            out.append(frame)
            size += len(frame)
            if size >= max_bytes:
                break
        return out

    def frames_from(self, version: int, max_bytes: int = READ_BATCH_BYTES) -> list[bytes]:
        """Frames of records version.., at most ~max_bytes; [] when caught up. Reads segment
        files when the tail does not reach back (run it in a worker thread then).
        Raises VersionGoneError below retention."""
        frames = self.frames_recent(version, max_bytes)
        if frames is not None:
            return frames
        # SegmentLog is thread-safe for readers; the writer thread is never held up by a read.
        return list(self.segments.read_frames_from(version, max_bytes=max_bytes))

    async def run_ticker(self, stop: asyncio.Event) -> None:
        """The leader commits a tick every tick_interval so mirrors can tell quiet from lagging."""
        interval = self.cfg.source.tick_interval_s
        while not stop.is_set():
            if self.raft.is_leader:
                try:
                    await self.raft.submit(None, [{"op": TICK}], timeout_s=max(1.0, interval * 5))
                except Exception as exc:  # noqa: BLE001 - a missed tick is retried next period
                    log.debug("changelog.tick_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def retention_target(self) -> int:
        """Segments wholly below this version may go: never inside `retention_min_records`,
        never past what a registered mirror still needs unless `retention_max_records` says so."""
        src = self.cfg.source
        target = self.segments.last_version - src.retention_min_records + 1
        floor = self.state.retention_floor()
        if floor is not None:
            target = min(target, floor)
        hold = self.gc.retention_hold() if self.gc else None
        if hold is not None:  # GC still has to read the freed blocks out of these records
            target = min(target, hold)
        if src.retention_max_records:
            target = max(target, self.segments.last_version - src.retention_max_records + 1)
        return target

    async def run_retention(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETENTION_INTERVAL_S)
            target = self.retention_target()
            if target > 1:
                await asyncio.to_thread(self._trim, target)

    def _trim(self, target: int) -> None:
        min_age_s = self.cfg.source.retention_min_s
        with self._seg_lock:
            dropped = self.segments.truncate_before(target, min_age_s=min_age_s)
        if dropped:
            log.info("changelog.trimmed", segments=dropped, below=target)

    def status(self) -> dict[str, Any]:
        raft = self.raft.status()
        with self.state.lock:
            version, ts = self.state.version, self.state.last_ts
        mirrors = self.state.mirror_table()
        return {
            "node": self.node_id,
            "api": self.me.api,
            **raft,
            "applied_version": version,
            "head_ts": ts,
            "first_available": self.first_available(),
            "retention_floor": self.state.retention_floor(),
            "mirrors": mirrors,
            "registrations_never_acked": never_acked(mirrors, now_ms()),
            "gc": self.gc.status() if self.gc else None,
            "segment_error": self.segment_error,
            "sweeper": self.sweeper.status() if self.sweeper else None,
            "uptime_s": round(time.time() - self.started_at, 1),
            "now_ms": now_ms(),
        }

    def close(self) -> None:
        self.raft.close()
        self._seg_queue.put(None)
        if self._seg_thread.is_alive():
            self._seg_thread.join(timeout=10)
        with self._seg_lock:
            try:
                if self.segment_error is None:  # a failed log refills from the journal on start
                    self._sync_segments()
                self.segments.close()
            except (OSError, ChangelogError) as exc:
                log.error("changelog.segment_close_failed", node=self.node_id, error=str(exc))
                self.segments.close()  # closed even when its last sync failed; idempotent


def _exit_on_io_error(exc: Exception) -> None:
    os._exit(EXIT_IO_FATAL)


def never_acked(mirrors: dict[str, dict[str, Any]], now: int) -> list[dict[str, Any]]:
    """Registrations that never acked, oldest first, with their age: a `mirror create` that
    died after registering (re-run it, or `mirror remove` it), or a daemon that never ran.
    Each holds the source's retention and GC from its registration on."""
    out = []
    for name, m in mirrors.items():
        if not m.get("never_acked"):
            continue
        since = m.get("registered_ms")
        age_s = round(max(0, now - since) / 1000, 1) if since else None
        out.append({"name": name, "registered": m["registered"], "since_ms": since, "age_s": age_s})
    return sorted(out, key=lambda r: (r["registered"], r["name"]))


def node_data_dir(cfg: VolumeConfig, node_id: int) -> Path:
    return cfg.resolve(cfg.node(node_id).data_dir)
