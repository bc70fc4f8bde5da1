"""How far the replica has applied the changelog, for the region's readers, and waits on it.

`ReplicaWatermark(db)` implements the client's `ReplicaProgress` port (fallback/consistency.py,
wired by cli/): the watermark row (applied version, the source's timestamp of that record) and
the follower's estimate of the source's clock, and waits until the replica has applied a
version, or every record the source stamped before a time. A wait is woken by the
`mirrorfs_watermark` notification (migration 0005: every watermark move, applier or snapshot
load, NOTIFYs "version:ts" at commit) on one LISTENing connection per process, and polls every
POLL_INTERVAL_S as well, so a lost notification or a dropped connection only slows a wait.
The same notifications keep `current()` in memory (no round trip per read through the gate).

Clock assumption: staleness is measured on the source's clock and this host's is assumed in
sync with it to NTP level (milliseconds). `source_clock_skew_ms` is the follower's estimate
from record timestamps against local receipt times (mirror/follow/skew.py): a lower bound of
how far the source's clock runs ahead; the one-way delay is inside it, so it is an upper bound
of the delay-blurred offset, not the offset itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import asyncpg
import structlog

from mirror.db import Database
from mirror.errors import MirrorError, ReplicaDivergedError

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL = "mirrorfs_watermark"
# A wait re-reads the watermark at least this often, notification or not.
POLL_INTERVAL_S = 0.25
LISTEN_RETRY_S = 1.0
# `current` re-reads the row at least this often for the clock estimate (which moves by
# milliseconds and sends no notification).
SKEW_REFRESH_S = 5.0
_SQL_READ = "SELECT applied_version, applied_ts, source_clock_skew_ms FROM watermark"


@dataclass(frozen=True)
class WatermarkState:
    applied_version: int
    applied_ts_ms: int
    source_clock_skew_ms: int | None = None


async def save_clock_skew(db: Database, skew_ms: int) -> None:
    """Record the follower's clock estimate for the region's readers (does not wake waits)."""
    async with db.acquire() as conn:
        await conn.execute("UPDATE watermark SET source_clock_skew_ms = $1", skew_ms)


class ReplicaWatermark:
    """The replica's progress, read from its database. Safe for concurrent use.

    `current()` answers from memory while the LISTENing connection is up (every move's
    notification carries the new version and timestamp), so a read through the gate costs no
    extra round trip; the first call, and every call while that connection is down, reads the
    row. A remembered state is never ahead of the database (a notification is delivered after
    its commit), only possibly behind by the notification's flight: the safe side, since a
    state that looks staler only makes a read wait, and a wait reads the row itself.
    """

    def __init__(self, db: Database, *, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.db = db
        self.poll_interval_s = poll_interval_s
        self._waiters: set[asyncio.Future[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._listening = False  # notifications are arriving: `_latest` follows every move
        self._latest: WatermarkState | None = None
        self._read_at = 0.0  # monotonic time of the last read of the row (the skew's source)
        self._closed = False

    async def current(self) -> WatermarkState:
        self._start_listening()
        latest = self._latest
        fresh_skew = time.monotonic() - self._read_at < SKEW_REFRESH_S
        if self._listening and latest is not None and fresh_skew:
            return latest
        return await self._read()

    async def _read(self) -> WatermarkState:
        async with self.db.acquire() as conn:
            row = await conn.fetchrow(_SQL_READ)
        if row is None:
            raise ReplicaDivergedError("the replica has no watermark row")
        skew = row["source_clock_skew_ms"]
        state = WatermarkState(
            int(row["applied_version"]), int(row["applied_ts"]), None if skew is None else int(skew)
        )
        self._read_at = time.monotonic()
        self._remember(state)
        return state

    def _remember(self, state: WatermarkState) -> None:
        latest = self._latest
        if latest is None or state.applied_version >= latest.applied_version:
            self._latest = state
        elif state.source_clock_skew_ms != latest.source_clock_skew_ms:  # an older read
            self._latest = WatermarkState(
                latest.applied_version, latest.applied_ts_ms, state.source_clock_skew_ms
            )

    async def wait(self, *, version: int = 0, ts_ms: int = 0, timeout_s: float) -> WatermarkState:
        """The state once it has applied `version` and a record stamped at or after `ts_ms`,
        or the latest at `timeout_s` (not an error). MirrorDbError if the replica cannot be
        read."""
        deadline = time.monotonic() + timeout_s
        self._start_listening()
        while True:
            woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(woken)  # before the read: a move committed after it wakes us
            try:
                state = await self._read()
                left = deadline - time.monotonic()
                if (state.applied_version >= version and state.applied_ts_ms >= ts_ms) or left <= 0:
                    return state
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, min(left, self.poll_interval_s))
            finally:
                self._waiters.discard(woken)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        version, _, ts = payload.partition(":")
        try:
            moved = WatermarkState(
                int(version),
                int(ts),
                self._latest.source_clock_skew_ms if self._latest is not None else None,
            )
        except ValueError:
            log.warning("mirror.watermark_bad_notification", payload=payload[:100])
        else:
            self._remember(moved)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

    def _start_listening(self) -> None:
        if self._closed:
            return  # closed: calls still answer, from the row, but never listen again
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="watermark-listen")

    async def _listen(self) -> None:
        """Hold one connection LISTENing; reconnect after a failure (waits poll meanwhile, and
        `current` reads the row)."""
        while True:
            try:
                async with self.db.acquire() as conn:
                    closed = asyncio.Event()
                    conn.add_termination_listener(lambda _c, ev=closed: ev.set())
                    await conn.add_listener(NOTIFY_CHANNEL, self._notified)
                    try:
                        await self._read()  # after LISTEN: no move falls between the two
                        self._listening = True
                        await closed.wait()
                    finally:
                        self._listening = False
                        # A connection the server dropped was already handed back to the pool
                        # (its proxy refuses every call): nothing left to unlisten then.
                        with contextlib.suppress(asyncpg.InterfaceError):
                            if not conn.is_closed():
                                await conn.remove_listener(NOTIFY_CHANNEL, self._notified)
            except (MirrorError, asyncpg.InterfaceError) as exc:
                log.info("mirror.watermark_listen_failed", error=str(exc))
            await asyncio.sleep(LISTEN_RETRY_S)

    async def aclose(self) -> None:
        """Stop listening (the database is the caller's to close)."""
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
