"""The changelog follower: stream from the source, apply into PostgreSQL, exactly once.

Two tasks joined by a bounded queue: the reader pulls records off the stream; the applier takes
whatever has arrived (one request when idle, about MAX_BATCH records when catching up) and
applies it with the watermark in one transaction. So lag stays at one round trip when following,
and catch-up runs in large batches. The watermark in PostgreSQL is the only cursor: on any
restart the stream resumes from applied_version + 1, so nothing is skipped and nothing applied
twice.

Whole requests only (volume/records.py): a batch is cut after the last record that ends its
request, and the records of a request not yet complete (the stream is cut anywhere: every
~1 MiB, at a reconnect) wait for the rest, so no batch, and no crash between batches, leaves
half a request in the replica. The held-back part is at most MAX_RECORDS_PER_REQUEST records; a
stream that runs longer without a boundary is refused (PartialRequestError) and reconnected.

When the source no longer retains applied_version + 1 (VersionGoneError), the follower loads a
fresh snapshot by itself and goes on from there.

Records' timestamps against their receipt time give the estimate of the source's clock that the
region's readers measure staleness with (mirror/follow/skew.py, saved in the watermark row).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import structlog

from mirror.db import Database
from mirror.errors import ApplyGapError, MirrorDbError, MirrorError, PartialRequestError
from mirror.follow.applier import apply_records
from mirror.follow.loader import load_from_source
from mirror.follow.skew import SkewEstimator
from mirror.replica import Replica
from mirror.watermark import save_clock_skew
from volume.client import SourceClient, SourceUnreachableError
from volume.errors import ChangelogError, MirrorRemovedError, VersionGoneError
from volume.records import MAX_RECORDS_PER_REQUEST, Record, request_end

log = structlog.get_logger(__name__)

MAX_BATCH = 2_000
QUEUE_RECORDS = 20_000
DEFAULT_ACK_INTERVAL_S = 2.0
ACK_TIMEOUT_S = 5.0
RECONNECT_MAX_WAIT_S = 5.0
SOURCE_POLL_INTERVAL_S = 2.0
SKEW_SAVE_INTERVAL_S = 5.0  # how often a changed clock estimate is written for readers


class FollowerState(StrEnum):
    """The documented `state` strings of a region's status."""

    STARTING = "starting"
    SYNCING = "syncing"  # catching up
    FOLLOWING = "following"  # at the head
    RESYNCING = "resyncing"  # loading a snapshot
    DISCONNECTED = "disconnected"  # no source node answers
    DEGRADED = "degraded"  # the replica's PostgreSQL does not answer


@dataclass
class FollowerStatus:
    """What the follower knows about itself; status JSON is built from it and the database."""

    state: FollowerState = FollowerState.STARTING
    applied_version: int = 0
    applied_ts: int = 0
    source_version: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    resyncs: int = 0
    records_applied: int = 0
    source_gc_hold: dict[str, Any] | None = None  # this mirror holding the source's GC back
    source_clock_skew_ms: int | None = None  # mirror/follow/skew.py (None: no recent record)
    _rate: float = 0.0
    _rate_at: float = field(default_factory=time.monotonic)

    def applied(self, version: int, ts: int, count: int) -> None:
        now = time.monotonic()
        dt = max(now - self._rate_at, 1e-3)
        alpha = min(1.0, dt / 5.0)  # ~5 s moving average
        self._rate = (1 - alpha) * self._rate + alpha * (count / dt)
        self._rate_at = now
        self.applied_version, self.applied_ts = version, ts
        self.source_version = max(self.source_version, version)
        self.records_applied += count

    @property
    def records_per_s(self) -> float:
        idle = time.monotonic() - self._rate_at
        return self._rate if idle < 5 else 0.0

    def error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, time.time()


def take_whole_requests(
    held: list[Record], first: Record, queue: asyncio.Queue[Record]
) -> tuple[list[Record], list[Record]]:
    """(batch, still held): `held` + `first` + what the queue has now (up to MAX_BATCH new
    records), cut after the last record that ends its request. Raises PartialRequestError if
    more than MAX_RECORDS_PER_REQUEST records are held without a boundary (the source never
    makes a request that long: the stream is not to be trusted)."""
    records = [*held, first]
    taken = 1
    while taken < MAX_BATCH and not queue.empty():
        records.append(queue.get_nowait())
        taken += 1
    cut = request_end(records)
    batch, rest = records[:cut], records[cut:]
    if len(rest) > MAX_RECORDS_PER_REQUEST:
        raise PartialRequestError(
            f"{len(rest)} records from version {rest[0].version} without a request boundary "
            f"(a request has at most {MAX_RECORDS_PER_REQUEST})",
            version=rest[-1].version,
        )
    return batch, rest


class Follower:
    def __init__(
        self,
        name: str,
        db: Database,
        source: SourceClient,
        *,
        ack_interval_s: float = DEFAULT_ACK_INTERVAL_S,
    ) -> None:
        self.name = name
        self.db = db
        self.replica = Replica(db)
        self.source = source
        self.ack_interval_s = ack_interval_s
        self.status = FollowerStatus()
        self._acked = 0
        self.skew = SkewEstimator()
        self._skew_saved: tuple[int | None, float] = (None, 0.0)  # (value, monotonic time)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until `stop`; every failure is retried (and shown in status), never fatal,
        except one: the source no longer knowing this mirror (its ack answered "unknown
        mirror": it was removed), raised as MirrorRemovedError so the daemon stops. A lost
        database is retried like a lost source (state `degraded` meanwhile): the stream resumes
        from the watermark in PostgreSQL, so nothing is skipped and nothing applied twice."""
        version, ts = await self.replica.watermark()
        self.status.applied(version, ts, 0)
        delay = 0.1
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._ack_loop(stop))
                tg.create_task(self._poll_source(stop))
                while not stop.is_set():
                    try:
                        try:
                            await self._follow_once(stop)
                            delay = 0.1
                            continue
                        except VersionGoneError as exc:
                            log.warning("mirror.resync", mirror=self.name, reason=str(exc))
                            self.status.error(f"resync: {exc.message}")
                            await self.resync()
                            continue
                    except MirrorRemovedError:
                        raise
                    except (ChangelogError, MirrorError, OSError) as exc:
                        self._failed(exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    delay = min(delay * 2, RECONNECT_MAX_WAIT_S)
        except* MirrorRemovedError as group:
            raise _first_removed(group) from None

    def _failed(self, exc: Exception) -> None:
        """Show a failure in status (and the log) before the retry."""
        if isinstance(exc, SourceUnreachableError):
            self.status.state = FollowerState.DISCONNECTED
        elif isinstance(exc, MirrorDbError) and exc.temporary:
            self.status.state = FollowerState.DEGRADED
        self.status.error(str(exc))
        log.warning("mirror.follow_error", mirror=self.name, error=str(exc))

    async def _follow_once(self, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=QUEUE_RECORDS)
        start = self.status.applied_version + 1
        self.status.state = FollowerState.SYNCING

        async def reader() -> None:
            async for rec in self.source.stream(start):
                self.skew.observe(rec.ts)  # at receipt, before any queueing delay
                await queue.put(rec)

        read_task = asyncio.create_task(reader())
        stop_task = asyncio.create_task(stop.wait())
        held: list[Record] = []  # the start of a request whose end has not arrived yet
        try:
            while not stop.is_set():
                get = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {get, read_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
                )
                if get not in done:
                    get.cancel()
                    if read_task in done:
                        read_task.result()  # raises the stream's error
                    return
                batch, held = take_whole_requests(held, get.result(), queue)
                if batch:
                    await self._apply(batch)
                if queue.empty() and not held:
                    self.status.state = FollowerState.FOLLOWING
        finally:
            read_task.cancel()
            stop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await read_task

    async def _apply(self, batch: list[Record]) -> None:
        """Apply whole requests with the watermark (the applier refuses anything else)."""
        try:
            version, ts = await apply_records(self.db, batch)
        except ApplyGapError:
            # Only possible if two followers share one replica; re-read the watermark.
            version, ts = await self.replica.watermark()
            self.status.applied(version, ts, 0)
            raise
        self.status.applied(version, ts, len(batch))
        await self._save_skew()

    async def _save_skew(self) -> None:
        """Show the clock estimate in status, and write it for the region's readers when it
        changed (at most every SKEW_SAVE_INTERVAL_S: it moves by milliseconds)."""
        skew = self.skew.estimate_ms()
        self.status.source_clock_skew_ms = skew
        saved, at = self._skew_saved
        if skew is None or skew == saved:
            return
        if saved is not None and time.monotonic() - at < SKEW_SAVE_INTERVAL_S:
            return
        await save_clock_skew(self.db, skew)
        self._skew_saved = (skew, time.monotonic())

    async def resync(self) -> None:
        """Replace the replica with a fresh snapshot of the source (watermark included)."""
        self.status.state = FollowerState.RESYNCING
        self.status.resyncs += 1
        version, ts = await load_from_source(self.db, self.source)
        self.status.applied(version, ts, 0)
        log.info("mirror.resynced", mirror=self.name, version=version)

    async def _poll_source(self, stop: asyncio.Event) -> None:
        """Learn the source's head version (so lag is known even while the stream is down) and
        whether this mirror is what holds the source's GC back."""
        while not stop.is_set():
            for url in self.source.urls:
                try:
                    st = await self.source.status(url)
                except (ChangelogError, aiohttp.ClientError, TimeoutError, OSError):
                    continue  # an unreachable node: try the next
                self.status.source_version = max(
                    self.status.source_version, int(st["applied_version"])
                )
                held_by = (st.get("gc") or {}).get("held_by") or {}
                self.status.source_gc_hold = held_by.get(self.name)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SOURCE_POLL_INTERVAL_S)

    async def _ack_loop(self, stop: asyncio.Event) -> None:
        """Tell the source how far we got, so its retention and GC barrier can advance. Acks
        every interval even when the version has not moved (a replica stuck on its database):
        the answer is how a removed mirror learns that it was removed. Raises
        MirrorRemovedError then."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.ack_interval_s)
            await self.ack(only_if_new=stop.is_set())

    async def ack(self, timeout_s: float = ACK_TIMEOUT_S, *, only_if_new: bool = True) -> None:
        """Ack the applied version (`only_if_new`: only if it moved since the last ack);
        bounded, so an unreachable source never holds up the loop or a shutdown (the next ack
        carries the same version). Raises MirrorRemovedError if the source no longer knows
        this mirror: it was removed, and the daemon must stop."""
        version = self.status.applied_version
        if only_if_new and version <= self._acked:
            return
        try:
            await asyncio.wait_for(self.source.mirror(self.name, "ack", version=version), timeout_s)
            self._acked = max(self._acked, version)
        except MirrorRemovedError as exc:
            log.error("mirror.removed", mirror=self.name, error=str(exc))
            self.status.error(f"removed from the source: {exc.message}")
            raise
        except (ChangelogError, TimeoutError) as exc:
            log.info("mirror.ack_failed", mirror=self.name, error=str(exc) or "timed out")


def _first_removed(group: BaseExceptionGroup[MirrorRemovedError]) -> MirrorRemovedError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, MirrorRemovedError)
    return exc
