"""Region-wide block claims: one process of a region at a time fetches a block from the source.

The egress-once rule (DESIGN section 6): when many processes of a region fall back for the same
block at once (the model-load storm), one fetches it from the source bucket and writes it into
the mirror bucket while the others wait, then find it there. `RegionClaims.claim(slice, idx)`
is that mutual exclusion, over the region's PostgreSQL, shared by every process of the region.

How: session-level advisory locks in the two-int4 key space (`pg_try_advisory_lock(a, b)`;
the migration lock uses the one-bigint space, which never collides with it), all taken on ONE
connection per process that multiplexes every claim the process holds. A waiter never blocks a
connection in `pg_advisory_lock`: it retries the try-lock when a releasing holder's NOTIFY
arrives (LISTEN on the same connection) or after a short poll, until its deadline. So claiming
many blocks at once costs one pooled connection, never one per block: the reader's pool is not
exhausted and cannot deadlock behind its own claims.

Contract:
- A claim is an efficiency device, never a correctness one (blocks are immutable; copying one
  twice is harmless). So a claim never fails a read: when the database does not answer, or the
  waiter's deadline passes, `claim` yields a `Claim` with `held=False` and the caller goes on
  (at worst one more source GET), and says so in the log.
- A holder that dies (kill -9, a lost connection) releases its claims with its connection:
  PostgreSQL drops a session's advisory locks when the session ends. Its waiters see that by
  polling (no NOTIFY comes from a dead process) within `DEFAULT_POLL_MAX_S`, and the first to
  get the claim then holds it (it fetches in the dead holder's place; the others wait again).
- A waiter woken by the holder's NOTIFY (a normal release: the block is in the mirror bucket
  now, or the holder gave up on writing it) does not keep the claim: it yields `held=False,
  waited=True` at once, so the waiters of a block re-check the mirror bucket in parallel
  rather than one after another (the 8-reader storm of tests/fallback/test_storm.py: 27 s
  with the claim kept, 17 s without; egress 1.00x either way). Only if the holder released
  without writing the block do those waiters each fetch it. `hold_after_wait=True` keeps it.
- Within a process, session locks are re-entrant, so exclusion among the tasks of one process
  is kept here, in memory, before the database is asked.
- Holds are bounded (`max_held` per process): advisory locks live in PostgreSQL's shared lock
  table (max_locks_per_transaction x max_connections slots for the whole server).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import structlog

from mirror.db import Database, translating
from mirror.errors import MirrorDbError

log = structlog.get_logger(__name__)

NOTIFY_CHANNEL = "mirrorfs_claims"
# A waiter's deadline: a holder GETs one block (<= 4 MiB) from the source and PUTs it into the
# mirror bucket; far longer than that means it is stuck, and the waiter reads on its own.
DEFAULT_WAIT_S = 30.0
# Polls between NOTIFYs: the only way to see a killed holder's claims go.
DEFAULT_POLL_MIN_S = 0.02
DEFAULT_POLL_MAX_S = 0.25
# PostgreSQL's default lock table holds 64 x max_connections (100) locks server-wide; a reader
# has far fewer blocks in flight than this.
DEFAULT_MAX_HELD = 64
_INT4 = 1 << 32
_DIRECT_KEY_BITS = 63  # (slice_id << 8 | idx) fits a bigint below this


def claim_key(slice_id: int, index: int) -> tuple[int, int]:
    """The advisory lock key (two signed int4) of a block: `slice_id << 8 | index` split in
    halves, collision-free for every slice id below 2**55 and index below 256 (blocks per slice
    are at most 16); beyond, a hash (a collision only makes two blocks wait for each other)."""
    if slice_id >= 0 and 0 <= index < 256 and slice_id.bit_length() + 8 < _DIRECT_KEY_BITS:
        v = slice_id << 8 | index
    else:
        digest = hashlib.blake2b(f"{slice_id}:{index}".encode(), digest_size=8).digest()
        v = int.from_bytes(digest, "big") & ((1 << _DIRECT_KEY_BITS) - 1) | (1 << 62)
    return _signed(v >> 32), _signed(v & (_INT4 - 1))


def _signed(u: int) -> int:
    return u - _INT4 if u >= 1 << 31 else u


@dataclass(frozen=True, slots=True)
class Claim:
    """What `claim` yields: `held` False when the claim could not be had (deadline, database
    down): the caller reads anyway. `waited` True when another holder had it first (so the
    block is probably in the mirror bucket now)."""

    held: bool
    waited: bool
    waited_s: float


@dataclass
class ClaimStats:
    """This process's claims, for tests and logs (the region's sums are RegionCounters')."""

    held: int = 0
    waited: int = 0
    timeouts: int = 0
    unavailable: int = 0


class RegionClaims:
    """Claims over the region database `db`; holds one of its pooled connections from the first
    claim until `aclose` (so the pool needs one connection more than the reader's queries)."""

    def __init__(
        self,
        db: Database,
        *,
        wait_s: float = DEFAULT_WAIT_S,
        max_held: int = DEFAULT_MAX_HELD,
        poll_min_s: float = DEFAULT_POLL_MIN_S,
        poll_max_s: float = DEFAULT_POLL_MAX_S,
        hold_after_wait: bool = False,
    ) -> None:
        self.db = db
        self.hold_after_wait = hold_after_wait
        self.wait_s = wait_s
        self.poll_min_s = poll_min_s
        self.poll_max_s = poll_max_s
        self.stats = ClaimStats()
        self._slots = asyncio.Semaphore(max_held)
        self._stack: contextlib.AsyncExitStack | None = None
        self._conn: asyncpg.Connection | None = None
        self._conn_lock = asyncio.Lock()  # one query at a time on the shared connection
        self._open_lock = asyncio.Lock()
        self._local: dict[tuple[int, int], asyncio.Event] = {}  # key -> set when released here
        self._wakeups: dict[tuple[int, int], asyncio.Event] = {}  # key -> set on a NOTIFY
        self._closed = False

    @contextlib.asynccontextmanager
    async def claim(
        self, slice_id: int, index: int, *, wait_s: float | None = None
    ) -> AsyncIterator[Claim]:
        """Hold block (slice_id, index) against every process of the region for the block.

        Waits up to `wait_s` (default: the instance's) for another holder; never raises for
        the database or the deadline (see the module docstring): `Claim.held` says."""
        key = claim_key(slice_id, index)
        started = time.monotonic()
        deadline = started + (self.wait_s if wait_s is None else wait_s)
        waited = False
        # In this process first: a second task for the same block queues here, in memory.
        while (event := self._local.get(key)) is not None:
            waited = True
            if not await _wait_until(event, deadline):
                self.stats.timeouts += 1
                log.warning("mirror.claim_timeout", slice_id=slice_id, index=index, local=True)
                yield Claim(False, waited, time.monotonic() - started)
                return
        mine = self._local[key] = asyncio.Event()
        try:
            async with self._slots:
                conn, got_waited, notified = await self._acquire(key, deadline, slice_id, index)
                waited = waited or got_waited
                if conn is not None and notified and not self.hold_after_wait:
                    await asyncio.shield(self._release(conn, key))
                    conn = None
                try:
                    yield Claim(conn is not None, waited, time.monotonic() - started)
                finally:
                    if conn is not None:
                        await asyncio.shield(self._release(conn, key))
        finally:
            del self._local[key]
            mine.set()

    async def _acquire(
        self, key: tuple[int, int], deadline: float, slice_id: int, index: int
    ) -> tuple[asyncpg.Connection | None, bool, bool]:
        """(the connection holding the lock, or None if not had; whether we waited; whether
        the last wakeup was the previous holder's NOTIFY rather than a poll)."""
        poll_s = self.poll_min_s
        waited = False
        wakeup = self._wakeups[key] = asyncio.Event()
        try:
            while True:
                try:
                    conn = await self._connection()
                    notified = wakeup.is_set()
                    wakeup.clear()  # before asking: a NOTIFY from here on wakes us
                    if await self._try_lock(conn, key):
                        self.stats.held += 1
                        if waited:
                            self.stats.waited += 1
                        return conn, waited, waited and notified
                except MirrorDbError as exc:
                    self.stats.unavailable += 1
                    log.warning(
                        "mirror.claim_unavailable", slice_id=slice_id, index=index, error=str(exc)
                    )
                    await self._drop_connection()
                    return None, waited, False
                waited = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stats.timeouts += 1
                    log.warning("mirror.claim_timeout", slice_id=slice_id, index=index)
                    return None, waited, False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), min(poll_s, remaining))
                poll_s = min(poll_s * 2, self.poll_max_s)
        finally:
            del self._wakeups[key]

    async def _try_lock(self, conn: asyncpg.Connection, key: tuple[int, int]) -> bool:
        # Shielded: a cancelled caller must not leave a lock the server granted behind it.
        query = asyncio.ensure_future(self._query(conn, "SELECT pg_try_advisory_lock($1, $2)", key))
        try:
            return bool(await asyncio.shield(query))
        except asyncio.CancelledError:
            query.add_done_callback(lambda f: self._release_if_granted(f, conn, key))
            raise

    def _release_if_granted(
        self, fut: asyncio.Future[object], conn: asyncpg.Connection, key: tuple[int, int]
    ) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result():
            task = asyncio.ensure_future(self._release(conn, key))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _release(self, conn: asyncpg.Connection, key: tuple[int, int]) -> None:
        if conn is not self._conn:
            return  # that connection is gone, and its locks with it
        try:
            await self._query(
                conn,
                "SELECT pg_advisory_unlock($1, $2), pg_notify($3, $1::text || ':' || $2::text)",
                (*key, NOTIFY_CHANNEL),
            )
        except MirrorDbError as exc:
            log.warning("mirror.claim_release_failed", key=key, error=str(exc))
            await self._drop_connection()

    async def _query(self, conn: asyncpg.Connection, sql: str, args: tuple[object, ...]) -> object:
        async with self._conn_lock:
            with translating(self.db.dsn):
                return await conn.fetchval(sql, *args)

    async def _connection(self) -> asyncpg.Connection:
        if _is_live(self._conn):
            return self._conn
        async with self._open_lock:
            if _is_live(self._conn):
                return self._conn
            if self._closed:
                raise MirrorDbError("region claims are closed", dsn=self.db.dsn)
            await self._drop_connection()
            stack = contextlib.AsyncExitStack()
            try:
                conn = await stack.enter_async_context(self.db.acquire())
                with translating(self.db.dsn):
                    await conn.add_listener(NOTIFY_CHANNEL, self._notified)
            except BaseException:
                await stack.aclose()
                raise
            self._stack, self._conn = stack, conn
            return conn

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        a, _, b = payload.partition(":")
        with contextlib.suppress(ValueError):
            event = self._wakeups.get((int(a), int(b)))
            if event is not None:
                event.set()

    async def _drop_connection(self) -> None:
        """Forget the shared connection: terminated (the server drops its locks), not pooled."""
        stack, conn = self._stack, self._conn
        self._stack = self._conn = None
        if _is_live(conn):
            assert conn is not None
            conn.terminate()
        if stack is not None:
            with contextlib.suppress(MirrorDbError), warnings.catch_warnings():
                # asyncpg warns that a connection goes back with our LISTEN callback on it; a
                # dead connection cannot UNLISTEN, and the pool discards it anyway.
                warnings.simplefilter("ignore", asyncpg.InterfaceWarning)
                await stack.aclose()

    async def aclose(self) -> None:
        """Give the connection back to the pool (its reset drops any lock still held)."""
        self._closed = True
        stack, conn = self._stack, self._conn
        self._stack = self._conn = None
        if stack is not None:
            with contextlib.suppress(MirrorDbError):
                if _is_live(conn):
                    assert conn is not None
                    async with self._conn_lock:
                        await conn.remove_listener(NOTIFY_CHANNEL, self._notified)
                await stack.aclose()


def _is_live(conn: asyncpg.Connection | None) -> bool:
    """False for no connection, a closed one, and one asyncpg's pool took back after the server
    cut it (its proxy then raises InterfaceError on any call)."""
    if conn is None:
        return False
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


async def _wait_until(event: asyncio.Event, deadline: float) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return event.is_set()
    try:
        await asyncio.wait_for(event.wait(), remaining)
    except TimeoutError:
        return False
    return True
