"""GC of the source bucket: blocks of freed slices leave only behind the GC barrier.

A record that frees slices (the `freed` list of write/truncate/setattr/unlink/rename, see
volume/effects.py) makes their blocks garbage, but older records still name them: a mirror
that has not applied the record may still copy them, and a client that resolved a path before
it may still read them (a mirror client falls back to this bucket). So the blocks of a slice
freed at version V are deleted only once every registered mirror has acked >= V *and*
`grace_s` has passed since then: since this node saw the last of those acks (or, with no
mirror registered, saw the record), on this node's own clock. Not since V's ts: that comes
from whichever node proposed the record, and a mirror that lagged past the grace would have
its readers' blocks deleted the instant it acked. The barrier is monotone in V (acks only
grow; a mirror registers acked at the head), so garbage is released strictly in version order.

When the barrier passed is kept in memory only: after a restart, or on a new leader, the grace
starts again from when that node saw it pass, which only ever deletes later, never sooner.

Every node runs a `SourceGc` over its own changelog segments; only the Raft leader deletes.
Progress is a cursor: the lowest version whose garbage is not yet deleted. It is persisted in
the node's data dir (never ahead of what was deleted, so a restart at worst deletes some
blocks again: deleting is idempotent) and holds retention (`retention_hold`), so the records
the scan resumes from are still there. A non-leader moves its cursor past garbage only
`follower_lag_s` after the leader would have deleted it: a new leader re-deletes that window,
covering a batch the old leader may have lost in a crash.

Failures never cause a wrong delete, only leaked garbage: records lost below the cursor (the
`retention_max_records` cap, a Raft snapshot install) are logged and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from changelog.log import SegmentLog
from changelog.raft import MetaState
from objstore.base import ObjectStore
from objstore.errors import StoreError
from objstore.keys import block_key, block_sizes
from volume.errors import ChangelogError, VersionGoneError
from volume.records import Record

log = structlog.get_logger(__name__)

CURSOR_FILE = "gc.cursor"
DEFAULT_INTERVAL_S = 2.0
DEFAULT_FOLLOWER_LAG_S = 600.0
DEFAULT_MAX_PENDING_BLOCKS = 100_000  # bounds memory; the scan pauses while this many wait
DEFAULT_DELETE_CONCURRENCY = 16
DELETE_BATCH_BLOCKS = 1_000  # blocks released per round trip of the barrier check
SCAN_BATCH_RECORDS = 20_000  # records decoded per worker-thread call
CURSOR_PERSIST_INTERVAL_S = 5.0  # persisting late is always safe (deletes are idempotent)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Garbage:
    """The slices one record freed: (slice id, size) each."""

    version: int
    ts: int
    slices: tuple[tuple[int, int], ...]

    @property
    def blocks(self) -> int:
        return sum(len(block_sizes(size)) for _, size in self.slices)

    @property
    def size_bytes(self) -> int:
        return sum(size for _, size in self.slices)

    def block_keys(self) -> Iterator[tuple[int, str, int]]:
        """(slice id, block key, block size) of every block."""
        for slice_id, size in self.slices:
            for index, block_size in enumerate(block_sizes(size)):
                yield slice_id, block_key(slice_id, index, block_size), block_size


@dataclass(frozen=True, slots=True)
class _Scan:
    found: list[Garbage]
    next_version: int
    caught_up: bool  # (or the pending list is full)
    gone: bool = False  # the records ran out under the read


def garbage_of(record: Record) -> Garbage | None:
    """The garbage a record makes, or None. Any op whose effect has a `freed` list counts."""
    freed = record.effect.get("freed")
    if not freed:
        return None
    slices = tuple((int(item["id"]), int(item["size"])) for item in freed)
    return Garbage(record.version, record.ts, slices)


def read_cursor(path: Path) -> int | None:
    """The persisted cursor, or None if there is none (or it is unreadable: start over)."""
    try:
        data = json.loads(path.read_bytes())
        cursor = int(data["cursor"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("changelog.gc_cursor_unreadable", path=str(path), error=str(exc))
        return None
    return cursor if cursor >= 1 else None


def write_cursor(path: Path, cursor: int) -> None:
    """Atomically replace the cursor file: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps({"cursor": cursor}).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SourceGc:
    """The source bucket's GC service of one node. Event-loop bound except where noted.

    Construct with what a SourceNode has: its replicated `state`, its `segments`, its
    `data_dir` (the cursor file goes there), the source bucket `store`, and `is_leader`.
    """

    def __init__(
        self,
        state: MetaState,
        segments: SegmentLog,
        data_dir: Path,
        store: ObjectStore,
        *,
        is_leader: Callable[[], bool],
        grace_s: float,
        interval_s: float = DEFAULT_INTERVAL_S,
        follower_lag_s: float = DEFAULT_FOLLOWER_LAG_S,
        max_pending_blocks: int = DEFAULT_MAX_PENDING_BLOCKS,
        delete_concurrency: int = DEFAULT_DELETE_CONCURRENCY,
    ) -> None:
        self.state = state
        self.segments = segments
        self.store = store
        self.is_leader = is_leader
        self.grace_ms = int(grace_s * 1000)
        self.interval_s = interval_s
        self.follower_lag_ms = int(follower_lag_s * 1000)
        self.max_pending_blocks = max_pending_blocks
        self.delete_concurrency = delete_concurrency
        self.cursor_path = data_dir / CURSOR_FILE
        stored = read_cursor(self.cursor_path)
        self._cursor = stored if stored is not None else max(1, segments.first_version)
        self._persisted = self._cursor if stored is not None else None
        self._persisted_at = time.monotonic()
        self._scan = self._cursor  # next version to read from the segments
        self._pending: deque[Garbage] = deque()
        # When (time.monotonic) this node saw the barrier pass for each of the first
        # len(_released) entries of _pending: their grace runs from then.
        self._released: deque[float] = deque()
        self._pending_blocks = 0
        self._pending_bytes = 0
        self.passes = 0
        self.deleted_total = 0
        self.deleted_bytes_total = 0
        self.delete_errors_total = 0
        self.skipped_live_total = 0
        self.leaked_records = 0
        self.last_error: str | None = None

    # --- what the node asks ---

    def retention_hold(self) -> int | None:
        """Retention must keep records at and above this version: where a restart resumes."""
        return self._persisted if self._persisted is not None else self._cursor

    @property
    def cursor(self) -> int:
        """The lowest version whose garbage is not yet deleted (in memory, maybe not persisted)."""
        return self._cursor

    def status(self) -> dict[str, Any]:
        """Garbage waiting and who holds it; counts of the pending list (`scanned_version` says
        how far the changelog was read: the list is bounded, so it may not cover the head)."""
        now = now_ms()
        oldest = self._pending[0] if self._pending else None
        held_by: dict[str, dict[str, Any]] = {}
        if oldest is not None:
            for name, m in sorted(self.state.mirror_table().items()):
                if int(m["acked"]) < oldest.version:
                    held_by[name] = {
                        "acked": int(m["acked"]),
                        "version": oldest.version,
                        "since_ms": oldest.ts,
                        "age_s": round(max(0, now - oldest.ts) / 1000, 3),
                    }
        return {
            "deleting": self.is_leader(),
            "cursor": self._cursor,
            "scanned_version": self._scan - 1,
            "garbage_records": len(self._pending),
            "garbage_blocks": self._pending_blocks,
            "garbage_bytes": self._pending_bytes,
            "oldest_garbage_version": oldest.version if oldest else None,
            "oldest_garbage_age_s": round(max(0, now - oldest.ts) / 1000, 3) if oldest else None,
            "past_barrier_records": len(self._released),
            "oldest_garbage_due_in_s": self._due_in_s(),
            "held_by": held_by,
            "grace_s": self.grace_ms / 1000,
            "passes": self.passes,
            "deleted_total": self.deleted_total,
            "deleted_bytes_total": self.deleted_bytes_total,
            "delete_errors_total": self.delete_errors_total,
            "skipped_live_total": self.skipped_live_total,
            "leaked_records": self.leaked_records,
            "last_error": self.last_error,
        }

    def _due_in_s(self) -> float | None:
        """Seconds until the oldest garbage is due here; None while the barrier holds it."""
        if not self._released:
            return None
        lag_s = 0 if self.is_leader() else self.follower_lag_ms / 1000
        due = self._released[0] + self.grace_ms / 1000 + lag_s
        return round(max(0.0, due - time.monotonic()), 3)

    # --- the loop ---

    async def run(self, stop: asyncio.Event) -> None:
        """Scan, release, persist, every `interval_s` until `stop`; failures are retried next
        pass (and shown in `status`), never fatal. Persists the cursor on the way out."""
        try:
            while not stop.is_set():
                try:
                    await self.run_pass()
                except (ChangelogError, StoreError, OSError) as exc:
                    self.last_error = str(exc)
                    log.warning("changelog.gc_failed", error=str(exc))
                except Exception as exc:  # a bug: GC must never take the node down
                    self.last_error = repr(exc)
                    log.exception("changelog.gc_bug", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            await asyncio.to_thread(self._persist)

    async def run_pass(self) -> None:
        """One pass: read new garbage, release what passed the barrier, persist if due."""
        await self._fill()
        await self._release()
        if time.monotonic() - self._persisted_at >= CURSOR_PERSIST_INTERVAL_S:
            await asyncio.to_thread(self._persist)
        self.passes += 1

    def _persist(self) -> None:
        self._persisted_at = time.monotonic()
        if self._persisted == self._cursor:
            return
        write_cursor(self.cursor_path, self._cursor)
        self._persisted = self._cursor

    # --- scanning ---

    async def _fill(self) -> None:
        """Read garbage from the segments until caught up or the pending list is full."""
        while self._pending_blocks < self.max_pending_blocks:
            first = self.segments.first_version
            if first and self._scan < first:
                self._leak(first)
            scan = await asyncio.to_thread(self._read, self._scan)
            self._scan = scan.next_version
            for g in scan.found:
                self._pending.append(g)
                self._pending_blocks += g.blocks
                self._pending_bytes += g.size_bytes
            head = self._pending[0].version if self._pending else self._scan
            self._cursor = max(self._cursor, head)
            if scan.caught_up or (scan.gone and self._scan >= self.segments.first_version):
                return

    def _read(self, start: int) -> _Scan:
        """Worker thread: the garbage of the records from `start` on, as far as readable."""
        found: list[Garbage] = []
        budget = self.max_pending_blocks - self._pending_blocks
        scan = start
        try:
            for record in self.segments.read_from(start, max_records=SCAN_BATCH_RECORDS):
                scan = record.version + 1
                g = garbage_of(record)
                if g is not None:
                    found.append(g)
                    budget -= g.blocks
                    if budget <= 0:
                        return _Scan(found, scan, caught_up=True)
        except VersionGoneError:  # retention or a reset overtook the read: _fill leaks
            return _Scan(found, scan, caught_up=False, gone=True)
        return _Scan(found, scan, caught_up=scan - start < SCAN_BATCH_RECORDS)

    def _leak(self, first: int) -> None:
        log.error(
            "changelog.gc_garbage_leaked",
            from_version=self._scan,
            to_version=first - 1,
            reason="records below the GC cursor left the changelog (retention cap or reset);"
            " blocks they freed stay in the bucket",
        )
        self.leaked_records += first - self._scan
        self._scan = first

    # --- releasing ---

    def _mark_released(self, min_acked: int | None) -> None:
        """Start the grace, on this node's clock, of the entries the barrier now lets pass."""
        now = time.monotonic()
        for g in itertools.islice(self._pending, len(self._released), None):
            if min_acked is not None and min_acked < g.version:
                return
            self._released.append(now)

    async def _release(self) -> None:
        """Delete (leader) or just pass (others, after follower_lag) what the barrier let go."""
        while self._pending:
            leader = self.is_leader()
            lag_s = 0 if leader else self.follower_lag_ms / 1000
            mirrors = self.state.mirror_table()
            self._mark_released(min((int(m["acked"]) for m in mirrors.values()), default=None))
            due_before = time.monotonic() - self.grace_ms / 1000 - lag_s
            batch: list[Garbage] = []
            blocks = 0
            for g, released in zip(self._pending, self._released, strict=False):
                if blocks >= DELETE_BATCH_BLOCKS or released > due_before:
                    break
                batch.append(g)
                blocks += g.blocks
            if not batch:
                return
            done = await self._delete(batch) if leader else len(batch)
            for _ in range(done):
                g = self._pending.popleft()
                self._released.popleft()
                self._pending_blocks -= g.blocks
                self._pending_bytes -= g.size_bytes
            self._cursor = self._pending[0].version if self._pending else self._scan
            if done < len(batch):
                return

    def _live(self, batch: list[Garbage]) -> set[int]:
        """Slices of `batch` still in the live slice table: never deleted (cannot happen, since
        a slice id is committed once and a freed slice never comes back; checked anyway)."""
        with self.state.lock:
            tables = self.state.ns.tables
            return {sid for g in batch for sid, _ in g.slices if tables.refcount(sid) > 0}

    async def _delete(self, batch: list[Garbage]) -> int:
        """Delete the blocks of `batch`; return how many leading entries are wholly gone."""
        live = self._live(batch)
        for sid in sorted(live):
            log.error("changelog.gc_live_slice_skipped", slice_id=sid)
        self.skipped_live_total += len(live)
        jobs = [
            (i, key, size)
            for i, g in enumerate(batch)
            for sid, key, size in g.block_keys()
            if sid not in live
        ]
        failed: set[int] = set()
        work = iter(jobs)

        async def worker() -> None:
            for i, key, size in work:
                if failed and i >= min(failed):
                    continue  # past a failure nothing can be released this pass: save the work
                if not self.is_leader():
                    failed.add(i)  # deposed: the new leader takes over from its own cursor
                    continue
                try:
                    await self.store.delete(key)
                except StoreError as exc:
                    failed.add(i)
                    self.delete_errors_total += 1
                    self.last_error = str(exc)
                    log.warning("changelog.gc_delete_failed", key=key, error=str(exc))
                    continue
                self.deleted_total += 1
                self.deleted_bytes_total += size

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self.delete_concurrency, max(1, len(jobs)))):
                tg.create_task(worker())
        done = min(failed, default=len(batch))
        if done:
            log.info("changelog.gc_deleted", up_to_version=batch[done - 1].version, entries=done)
        return done
