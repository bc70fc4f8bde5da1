"""The block replicator: copy workers draining the copy queue into the mirror bucket.

One feeder claims batches from the queue (queue.py) into a small local queue; a fixed
pool of copy tasks GETs each block from the source bucket, verifies it against the checksum the
changelog recorded, and PUTs it to the mirror bucket; one completer marks the results in
batches. So the database sees a few statements per batch, not per block, and a slow block never
holds up the others. Idle workers sleep on a PostgreSQL NOTIFY fired when blocks are enqueued,
so a new block starts copying within a round trip of its commit (a poll is the fallback).

Temporary store errors are retried by the stores' own RetryLayer (tenacity) inside the copy;
when that gives up, the block goes back to the queue with a backoff (`next_attempt_at`), and the
pool holds off claiming for a while so an outage does not burn every block's attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import asyncpg
import structlog

from mirror.db import Database
from mirror.errors import MirrorError
from mirror.replicate.copier import BlockCopier, CopyError
from mirror.replicate.queue import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_BASE_S,
    INTERNAL_ERROR,
    MIRROR_UNAVAILABLE,
    NOTIFY_CHANNEL,
    SOURCE_UNAVAILABLE,
    BlockState,
    Claim,
    CopyQueue,
    Failure,
)
from objstore import BandwidthLayer, ObjectStore, TokenBucket, open_store
from volume.config import MirrorRegion

log = structlog.get_logger(__name__)

DEFAULT_CONCURRENCY = 16
DEFAULT_POLL_INTERVAL_S = 1.0
PAUSE_CHECK_INTERVAL_S = 0.5
HOLD_MIN_S = 0.5
HOLD_MAX_S = 30.0
STOP_GRACE_S = 10.0
RATE_WINDOW_S = 10.0
DB_RETRY_MAX_S = 5.0


class RateMeter:
    """Events per second over the last RATE_WINDOW_S (a moving window, not a lifetime mean)."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int, int]] = deque()
        self._started = time.monotonic()

    def add(self, blocks: int, nbytes: int) -> None:
        self._events.append((time.monotonic(), blocks, nbytes))

    def rates(self) -> tuple[float, float]:
        """(blocks/s, bytes/s)."""
        now = time.monotonic()
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()
        span = max(1e-3, min(self.window_s, now - self._started))
        return (
            sum(e[1] for e in self._events) / span,
            sum(e[2] for e in self._events) / span,
        )


class PresenceCheck:
    """Whether to look in the mirror bucket before copying a block (see BlockCopier.is_present).

    Always for a block an earlier attempt may have written (a retry, a lease taken over from a
    dead worker). Otherwise by sampling: new blocks are never in the mirror yet, and a HEAD per
    block cost ~20% of bulk throughput on a busy server (scenarios/bench_replication.py), so
    only every SAMPLE_EVERY-th block is checked (the first one included). A sampled hit (a
    mirror re-created over its old bucket) switches to checking every block, where a local
    HEAD saves a cross-region copy, until MISS_WINDOW checks in a row find nothing.
    """

    MISS_WINDOW = 32
    SAMPLE_EVERY = 16

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._misses = self.MISS_WINDOW  # checks in a row that found nothing: start sampling
        self._seen = 0

    def should_check(self, claim: Claim) -> bool:
        if not self.enabled:
            return False
        if claim.may_be_copied or self._misses < self.MISS_WINDOW:
            return True
        self._seen += 1
        return self._seen % self.SAMPLE_EVERY == 1

    def found(self, present: bool) -> None:
        self._misses = 0 if present else self._misses + 1


class ReplicatorState(StrEnum):
    """What the copy pool is doing; the values are the documented `replicator_state` strings."""

    STARTING = "starting"
    COPYING = "copying"
    IDLE = "idle"
    PAUSED = "paused"
    HOLDING = "holding"  # backing off after store or database trouble (see hold_reason)
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReplicatorConfig:
    """How one replicator process copies: its pool, its cap, its queue settings."""

    concurrency: int = DEFAULT_CONCURRENCY
    bandwidth_bytes_per_s: float | None = None  # None: no cap
    lease_s: float = DEFAULT_LEASE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_base_s: float = DEFAULT_RETRY_BASE_S
    check_existing: bool = True  # look in the mirror bucket before copying (see PresenceCheck)
    server_side: bool = False  # the mirror's endpoint copies out of the source (see copier.py)
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    worker_id: str | None = None  # None: host:pid:random

    @classmethod
    def of(cls, region: MirrorRegion, **overrides: Any) -> ReplicatorConfig:
        """The region's configured copier (mirrorfs.toml), with `overrides` on top."""
        base: dict[str, Any] = {
            "concurrency": region.copy_concurrency,
            "bandwidth_bytes_per_s": region.copy_bandwidth_bytes_per_s or None,
            "server_side": region.copy_mode == "server",
        }
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {self.bandwidth_bytes_per_s}")


@dataclass
class ReplicatorStatus:
    """This process's view; counts of pending/failed blocks come from the table (see
    `Replicator.status`), these counters only say what this process did since it started."""

    worker_id: str = ""
    state: ReplicatorState = ReplicatorState.STARTING
    blocks_copied: int = 0
    bytes_copied: int = 0
    blocks_present: int = 0
    copy_failures: int = 0
    in_flight: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    hold_reason: str | None = None
    meter: RateMeter = field(default_factory=RateMeter)

    def error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, time.time()


class Replicator:
    """Copy pending blocks until stopped. Several replicators (processes, machines) may share
    one replica database; each block is claimed by one at a time."""

    def __init__(
        self,
        db: Database,
        source: ObjectStore,
        mirror: ObjectStore,
        config: ReplicatorConfig | None = None,
    ) -> None:
        config = config or ReplicatorConfig()
        self.config = config
        self.db = db
        self.queue = CopyQueue(
            db,
            worker_id=config.worker_id,
            lease_s=config.lease_s,
            max_attempts=config.max_attempts,
            retry_base_s=config.retry_base_s,
        )
        meter = TokenBucket(config.bandwidth_bytes_per_s) if config.bandwidth_bytes_per_s else None
        if meter is not None:
            source = BandwidthLayer(source, meter)
        self.copier = BlockCopier(source, mirror, server_side=config.server_side, meter=meter)
        self.concurrency = config.concurrency
        self.presence = PresenceCheck(config.check_existing)
        self.poll_interval_s = config.poll_interval_s
        self.status = ReplicatorStatus(worker_id=self.queue.worker_id)
        self._local: asyncio.Queue[Claim | None] = asyncio.Queue()
        self._results: asyncio.Queue[tuple[Claim, Failure | None] | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._drained = False
        self._check_pause = False
        self._paused = False
        self._hold_until = 0.0
        self._hold_s = HOLD_MIN_S
        self._unflushed: list[tuple[Claim, Failure | None]] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Copy until `stop` is set; then finish the copies in flight (up to STOP_GRACE_S),
        mark them, and give back every lease not done. Store and database failures are
        retried and shown in status, never raised."""
        log.info("replicator.start", worker=self.queue.worker_id, concurrency=self.concurrency)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._listen(stop))
            tg.create_task(self._renew_leases(stop))
            tg.create_task(self._wake_on(stop))
            completer = tg.create_task(self._complete_loop())
            workers = [tg.create_task(self._copy_loop()) for _ in range(self.concurrency)]
            await self._feed(stop)
            for _ in workers:
                self._local.put_nowait(None)
            _, late = await asyncio.wait(workers, timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.wait(workers)
            self._results.put_nowait(None)
            await completer
        with contextlib.suppress(MirrorError):
            await self.queue.release_all()
        self.status.state = ReplicatorState.STOPPED
        log.info("replicator.stopped", worker=self.queue.worker_id)

    def process_status(self) -> dict[str, Any]:
        """This process's part of the region status: state, rates and counters since start.
        Queue counts (pending, failed, in flight) are the table's: see mirror/status.py."""
        blocks_per_s, bytes_per_s = self.status.meter.rates()
        st = self.status
        return {
            "replicator_state": self.state(),
            "copy_blocks_per_s": round(blocks_per_s, 1),
            "copy_bytes_per_s": round(bytes_per_s),
            "copy_concurrency": self.concurrency,
            "blocks_copied_since_start": st.blocks_copied,
            "blocks_present_since_start": st.blocks_present,
            "copy_server_side": self.copier.server_side,
            "blocks_server_copied_since_start": self.copier.server_copies,
            "copy_failures_since_start": st.copy_failures,
            "replicator_hold_reason": st.hold_reason,
            "replicator_last_error": st.last_error,
            "replicator_last_error_at": st.last_error_at,
        }

    def state(self) -> ReplicatorState:
        """The pool's state now (copying vs idle from what is in hand, not the last claim)."""
        if self.status.state in (ReplicatorState.COPYING, ReplicatorState.IDLE):
            busy = self.status.in_flight or not self._local.empty()
            return ReplicatorState.COPYING if busy else ReplicatorState.IDLE
        return self.status.state

    # -- feeder ----------------------------------------------------------------------------

    async def _feed(self, stop: asyncio.Event) -> None:
        next_pause_check = 0.0
        min_batch = max(1, self.concurrency // 4)
        while not stop.is_set():
            now = time.monotonic()
            if self._check_pause or now >= next_pause_check:
                self._check_pause = False
                try:
                    self._paused = await self.queue.is_paused()
                except MirrorError as exc:
                    await self._db_trouble(exc, stop)
                    continue
                next_pause_check = now + PAUSE_CHECK_INTERVAL_S
            if self._paused:
                self.status.state = ReplicatorState.PAUSED
                await self._release(self._drain_local())
                await self._rest(PAUSE_CHECK_INTERVAL_S, stop)
                continue
            if now < self._hold_until:
                self.status.state = ReplicatorState.HOLDING
                await self._rest(self._hold_until - now, stop)
                continue
            self.status.hold_reason = None
            self._wake.clear()
            room = 2 * self.concurrency - self._local.qsize() - self.status.in_flight
            if room < min_batch:
                await self._sleep(self.poll_interval_s)  # a copy task wakes us on taking one
                continue
            try:
                claims = await self.queue.claim(room)
            except MirrorError as exc:
                await self._db_trouble(exc, stop)
                continue
            for claim in claims:
                self._local.put_nowait(claim)
            if claims:
                self.status.state = ReplicatorState.COPYING
            elif self.status.in_flight == 0 and self._local.empty():
                self.status.state = ReplicatorState.IDLE
            if len(claims) < room:
                # Nothing more is due: sleep until a NOTIFY (new, retried or raised blocks),
                # the poll interval (a backoff ran out), or stop; not on every finished copy.
                self._drained = True
                await self._sleep(self.poll_interval_s)
                self._drained = False
        await self._release(self._drain_local())

    async def _rest(self, timeout_s: float, stop: asyncio.Event) -> None:
        """Sleep while paused or holding, woken early by a notification or stop. The wake is
        cleared first: left set by an earlier notification, the sleep returned at once and
        the loop spun a core for as long as the pause lasted."""
        self._wake.clear()
        if not stop.is_set():
            await self._sleep(timeout_s)

    async def _sleep(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _db_trouble(self, exc: MirrorError, stop: asyncio.Event) -> None:
        self.status.error(f"database: {exc}")
        log.warning("replicator.db_error", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DB_RETRY_MAX_S)

    def _drain_local(self) -> list[Claim]:
        out: list[Claim] = []
        while not self._local.empty():
            item = self._local.get_nowait()
            if item is not None:
                out.append(item)
        return out

    async def _release(self, claims: list[Claim]) -> None:
        if claims:
            with contextlib.suppress(MirrorError):  # else the leases simply expire
                await self.queue.release(c.id for c in claims)

    # -- copy tasks ------------------------------------------------------------------------

    async def _copy_loop(self) -> None:
        while True:
            claim = await self._local.get()
            if claim is None:
                return
            if not self._drained:
                self._wake.set()  # room in the local queue: the feeder may claim more
            if self._paused:
                await self._release([claim])
                continue
            self.status.in_flight += 1
            try:
                failure = await self._copy_one(claim)
            finally:
                self.status.in_flight -= 1
            self._results.put_nowait((claim, failure))

    async def _copy_one(self, claim: Claim) -> Failure | None:
        try:
            check = self.presence.should_check(claim)
            copied = await self.copier.copy(claim, check_existing=check)
            if check:
                self.presence.found(not copied)
        except CopyError as exc:
            if exc.reason in (SOURCE_UNAVAILABLE, MIRROR_UNAVAILABLE):
                self._hold(exc)
            self.status.copy_failures += 1
            self.status.error(str(exc))
            log.warning("replicator.copy_failed", key=claim.key, error=str(exc))
            return Failure(claim.id, exc.reason, exc.detail, exc.permanent)
        except Exception as exc:  # one block's bug must not stop the pool
            log.exception("replicator.copy_crashed", key=claim.key)
            self.status.copy_failures += 1
            self.status.error(f"{INTERNAL_ERROR}: {exc!r}")
            return Failure(claim.id, INTERNAL_ERROR, f"{claim.key}: {exc!r}")
        self._hold_s = HOLD_MIN_S
        if copied:
            self.status.blocks_copied += 1
            self.status.bytes_copied += claim.size
            self.status.meter.add(1, claim.size)
        else:
            self.status.blocks_present += 1
            self.status.meter.add(1, 0)
        return None

    def _hold(self, exc: CopyError) -> None:
        """A bucket is down (the store's retries gave up): stop claiming for a while."""
        now = time.monotonic()
        if now >= self._hold_until:  # the copies in flight all fail together: back off once
            self._hold_until = now + self._hold_s
            self._hold_s = min(HOLD_MAX_S, self._hold_s * 2)
        self.status.hold_reason = str(exc)

    # -- completer, leases, notifications ---------------------------------------------------

    async def _complete_loop(self) -> None:
        done = False
        while not done:
            item = await self._results.get()
            batch = [item]
            while not self._results.empty():
                batch.append(self._results.get_nowait())
            done = None in batch
            self._unflushed.extend(x for x in batch if x is not None)
            await self._flush(final=done)

    async def _flush(self, *, final: bool) -> None:
        delay = 0.1
        while self._unflushed:
            results = self._unflushed
            try:
                await self.queue.complete([c for c, f in results if f is None])
                states = await self.queue.fail([f for _, f in results if f is not None])
                self._unflushed = []
            except MirrorError as exc:
                # Keep the results and try again; if we never get through, the leases expire
                # and the next worker finds the blocks already in the mirror bucket.
                self.status.error(f"database: {exc}")
                if final:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX_S)
                continue
            for block, state in states.items():
                if state == BlockState.FAILED:
                    log.warning("replicator.block_failed", slice_id=block[0], idx=block[1])

    async def _renew_leases(self, stop: asyncio.Event) -> None:
        interval_s = self.queue.lease_s / 3
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            try:
                await self.queue.renew()
            except MirrorError as exc:
                self.status.error(f"database: {exc}")

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == "pause":
            self._check_pause = True
        self._wake.set()

    async def _listen(self, stop: asyncio.Event) -> None:
        """Hold one connection LISTENing for enqueued blocks; reconnect if it drops."""
        while not stop.is_set():
            try:
                async with self.db.acquire() as conn:
                    await conn.add_listener(NOTIFY_CHANNEL, self._notified)
                    try:
                        while not stop.is_set() and not conn.is_closed():
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(stop.wait(), 2.0)
                    finally:
                        if not conn.is_closed():
                            await conn.remove_listener(NOTIFY_CHANNEL, self._notified)
            except (MirrorError, asyncpg.InterfaceError) as exc:
                log.info("replicator.listen_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def run_replicator(
    db: Database,
    source_url: str,
    mirror_url: str,
    stop: asyncio.Event,
    config: ReplicatorConfig | None = None,
) -> None:
    """Open both buckets (layered: retry, metrics, logging) and replicate until `stop`.
    Raises StoreError if a bucket cannot be opened (missing, unreachable)."""
    source = await open_store(source_url, name="source")
    try:
        mirror = await open_store(mirror_url, name="mirror")
        try:
            await Replicator(db, source, mirror, config).run(stop)
        finally:
            await mirror.aclose()
    finally:
        await source.aclose()
