"""The block copy queue: the `blocks` table of the replica, shared by every copy worker.

A worker *claims* a batch in one short statement (`FOR UPDATE SKIP LOCKED`, so workers in
several processes or machines never take the same rows) and holds the rows by a lease
(`claimed_by`, `lease_until`), not by an open transaction: a copy takes far longer than a
transaction should stay open. A live worker renews its leases; a killed worker's leases expire
and its blocks become claimable again. Copying a block twice is harmless (keys are immutable),
so a lease is an efficiency device, not a correctness one.

Every failure is written to the row with the reason (`last_error` is "<reason>: <detail>"):
a failed block stays visible and queued for a retry after a backoff, and becomes 'failed' only
after `max_attempts` (or at once when retrying cannot help, e.g. the source object is gone).
It never blocks the blocks behind it. Counts come from the table, never from memory.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from mirror.db import Database
from mirror.replica import Replica
from objstore.keys import block_key

DEFAULT_LEASE_S = 30.0
DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_RETRY_BASE_S = 1.0
DEFAULT_RETRY_MAX_S = 600.0
# Priorities: a block a client just read from the source beats a path being warmed up, which
# beats the background backlog. A raise never lowers a priority already set.
PRIORITY_BACKLOG = 0
PRIORITY_WARMUP = 10
PRIORITY_FALLBACK = 100
NOTIFY_CHANNEL = "mirrorfs_blocks"
PAUSED_META_KEY = "replicator_paused"

# Reasons, the first word of `last_error`: status groups failures by them.
SOURCE_MISSING = "source-missing"
SOURCE_CORRUPT = "source-corrupt"
SOURCE_UNAVAILABLE = "source-unavailable"
SOURCE_ERROR = "source-error"
MIRROR_UNAVAILABLE = "mirror-unavailable"
MIRROR_ERROR = "mirror-error"
INTERNAL_ERROR = "internal-error"

_SQL_CLAIM = (
    "WITH due AS ("
    " SELECT slice_id, idx, claimed_by AS expired_claim FROM blocks"
    " WHERE state = 'pending' AND next_attempt_at <= now()"
    " AND (lease_until IS NULL OR lease_until < now())"
    f" AND NOT EXISTS (SELECT 1 FROM meta WHERE key = '{PAUSED_META_KEY}' AND value = 'true')"
    " ORDER BY priority DESC, enqueued_at, slice_id, idx"
    " LIMIT $1 FOR UPDATE SKIP LOCKED)"
    " UPDATE blocks b SET claimed_by = $2, lease_until = now() + make_interval(secs => $3)"
    " FROM due WHERE b.slice_id = due.slice_id AND b.idx = due.idx"
    " RETURNING b.slice_id, b.idx, b.size, b.checksum, b.attempts, b.priority, b.enqueued_at,"
    " due.expired_claim IS NOT NULL AS taken_over"
)
_SQL_RENEW = (
    "UPDATE blocks SET lease_until = now() + make_interval(secs => $2)"
    " WHERE claimed_by = $1 AND state = 'pending'"
)
_SQL_COMPLETE = (
    "UPDATE blocks b SET state = 'copied', copied_at = now(), claimed_by = NULL,"
    " lease_until = NULL, last_error = NULL"
    " FROM unnest($1::bigint[], $2::integer[], $3::text[]) AS x(slice_id, idx, checksum)"
    " WHERE b.slice_id = x.slice_id AND b.idx = x.idx AND b.checksum = x.checksum"
    " AND b.state <> 'copied'"
)
# Backoff with jitter in SQL, from the row's own attempt count, so every worker agrees on it.
_SQL_FAIL = (
    "UPDATE blocks b SET attempts = b.attempts + 1, last_error = x.error,"
    " state = CASE WHEN x.permanent OR b.attempts + 1 >= $5 THEN 'failed' ELSE 'pending' END,"
    " next_attempt_at = now() + make_interval(secs =>"
    " least($7::float8, $6::float8 * power(2, least(b.attempts, 30))) * (0.5 + random() / 2)),"
    " claimed_by = NULL, lease_until = NULL"
    " FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::boolean[])"
    " AS x(slice_id, idx, error, permanent)"
    " WHERE b.slice_id = x.slice_id AND b.idx = x.idx AND b.state = 'pending'"
    " RETURNING b.slice_id, b.idx, b.state"
)
_SQL_RELEASE = (
    "UPDATE blocks b SET claimed_by = NULL, lease_until = NULL"
    " FROM unnest($2::bigint[], $3::integer[]) AS x(slice_id, idx)"
    " WHERE b.slice_id = x.slice_id AND b.idx = x.idx AND b.claimed_by = $1"
)
# {p}: the parameter holding the priority.
_SQL_PRIORITISE = (
    "UPDATE blocks b SET priority = greatest(b.priority, {p}),"
    " next_attempt_at = least(b.next_attempt_at, now()) FROM {source}"
    " WHERE b.slice_id = x.slice_id AND {match}"
    " AND b.state = 'pending' AND (b.priority < {p} OR b.next_attempt_at > now())"
)
# Every inode under (and including) $1; UNION, not UNION ALL: a hard-linked file counts once.
SQL_SUBTREE_SLICES = (
    "WITH RECURSIVE tree(ino) AS (SELECT $1::bigint UNION"
    " SELECT d.ino FROM dentries d JOIN tree t ON d.parent = t.ino)"
    " SELECT DISTINCT r.slice_id FROM chunk_refs r JOIN tree t ON r.ino = t.ino"
)
_SQL_STATS = (
    "SELECT (SELECT count(*) FROM blocks WHERE state = 'pending') AS pending,"
    " (SELECT coalesce(sum(size), 0) FROM blocks WHERE state = 'pending') AS bytes,"
    " (SELECT count(*) FROM blocks WHERE state = 'failed') AS failed,"
    " (SELECT count(*) FROM blocks WHERE claimed_by IS NOT NULL AND lease_until > now())"
    " AS in_flight,"
    " (SELECT count(*) FROM blocks WHERE state = 'pending' AND attempts > 0) AS retrying,"
    " (SELECT extract(epoch FROM now() - min(enqueued_at)) FROM blocks"
    " WHERE state = 'pending') AS oldest_s,"
    f" (SELECT value = 'true' FROM meta WHERE key = '{PAUSED_META_KEY}') AS paused"
)
_SQL_REASONS = (
    "SELECT 'failed' AS state, split_part(last_error, ':', 1) AS reason, count(*) AS n"
    " FROM blocks WHERE state = 'failed' GROUP BY 2"
    " UNION ALL SELECT 'retrying', split_part(last_error, ':', 1), count(*)"
    " FROM blocks WHERE state = 'pending' AND attempts > 0 GROUP BY 2"
)


class BlockState(StrEnum):
    """A block row's `state` (the SQL CHECK constraint of 0001_replica.sql lists the same)."""

    PENDING = "pending"  # not in the mirror bucket yet (maybe claimed, maybe backing off)
    COPIED = "copied"  # in the mirror bucket, verified
    FAILED = "failed"  # gave up after max_attempts or a permanent failure: see last_error


class BlockId(NamedTuple):
    slice_id: int
    idx: int


@dataclass(frozen=True, slots=True)
class Claim:
    """One claimed block: what a worker needs to copy and verify it."""

    slice_id: int
    idx: int
    size: int
    checksum: str
    attempts: int = 0
    priority: int = 0
    taken_over: bool = False  # from a worker whose lease expired (it may have copied it)

    @property
    def may_be_copied(self) -> bool:
        """An earlier attempt may have written it to the mirror bucket already."""
        return self.attempts > 0 or self.taken_over

    @property
    def id(self) -> BlockId:
        return BlockId(self.slice_id, self.idx)

    @property
    def key(self) -> str:
        return block_key(self.slice_id, self.idx, self.size)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one copy attempt failed. `permanent`: retrying cannot help, fail the block now."""

    block: BlockId
    reason: str
    detail: str
    permanent: bool = False

    @property
    def message(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class QueueStats:
    """The queue as the table says, at the time of asking (so right after any restart)."""

    blocks_pending: int
    bytes_pending: int
    blocks_failed: int
    blocks_in_flight: int
    blocks_retrying: int
    oldest_pending_s: float | None
    paused: bool
    failed_reasons: dict[str, int] = field(default_factory=dict)
    retrying_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "blocks_pending": self.blocks_pending,
            "bytes_pending": self.bytes_pending,
            "blocks_failed": self.blocks_failed,
            "blocks_in_flight": self.blocks_in_flight,
            "blocks_retrying": self.blocks_retrying,
            "oldest_pending_s": self.oldest_pending_s,
            "paused": self.paused,
            "failed_reasons": dict(self.failed_reasons),
            "retrying_reasons": dict(self.retrying_reasons),
        }


def new_worker_id() -> str:
    """host:pid:random, unique per process start, readable in `claimed_by`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _columns(blocks: Iterable[BlockId]) -> tuple[list[int], list[int]]:
    ids = list(blocks)
    return [b.slice_id for b in ids], [b.idx for b in ids]


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class CopyQueue:
    """The queue operations of one worker (`worker_id`) against one replica database."""

    def __init__(
        self,
        db: Database,
        *,
        worker_id: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_base_s: float = DEFAULT_RETRY_BASE_S,
        retry_max_s: float = DEFAULT_RETRY_MAX_S,
    ) -> None:
        if lease_s <= 0 or max_attempts < 1:
            raise ValueError(f"bad queue settings lease_s={lease_s} max_attempts={max_attempts}")
        self.db = db
        self.worker_id = worker_id or new_worker_id()
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s

    async def claim(self, limit: int) -> list[Claim]:
        """Lease up to `limit` due pending blocks (none while paused), in queue order: highest
        priority, then oldest, then slice and index. Due: next_attempt_at has passed and no
        live lease is held on it (an expired lease is taken over). One statement."""
        if limit <= 0:
            return []
        async with self.db.acquire() as conn:
            rows = await conn.fetch(_SQL_CLAIM, limit, self.worker_id, self.lease_s)
        rows = sorted(
            rows, key=lambda r: (-r["priority"], r["enqueued_at"], r["slice_id"], r["idx"])
        )
        return [
            Claim(
                r["slice_id"],
                r["idx"],
                r["size"],
                r["checksum"],
                r["attempts"],
                r["priority"],
                r["taken_over"],
            )
            for r in rows
        ]

    async def renew(self) -> int:
        """Extend the lease of every block this worker holds; returns how many."""
        async with self.db.acquire() as conn:
            return _count(await conn.execute(_SQL_RENEW, self.worker_id, self.lease_s))

    async def complete(self, blocks: Sequence[Claim]) -> int:
        """Mark blocks copied (their bytes are in the mirror bucket) and drop their leases.

        Idempotent; whoever holds the lease. A row whose checksum changed (the block was
        replaced by a resync) or that is gone (its slice was freed) is left alone. Returns the
        number of rows changed."""
        if not blocks:
            return 0
        args = (
            [b.slice_id for b in blocks],
            [b.idx for b in blocks],
            [b.checksum for b in blocks],
        )
        async with self.db.acquire() as conn:
            return _count(await conn.execute(_SQL_COMPLETE, *args))

    async def fail(self, failures: Sequence[Failure]) -> dict[BlockId, str]:
        """Record failed attempts: attempts + 1, last_error = "<reason>: <detail>", retry after
        an exponential backoff with jitter (retry_base_s * 2^attempts, capped at retry_max_s);
        state 'failed' once attempts reach max_attempts, or at once for a permanent failure.
        Releases the leases. Returns {block: new state} for the rows still pending or failed."""
        if not failures:
            return {}
        slices, idxs = _columns(f.block for f in failures)
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                _SQL_FAIL,
                slices,
                idxs,
                [f.message for f in failures],
                [f.permanent for f in failures],
                self.max_attempts,
                self.retry_base_s,
                self.retry_max_s,
            )
        return {BlockId(r["slice_id"], r["idx"]): r["state"] for r in rows}

    async def release(self, blocks: Iterable[BlockId]) -> int:
        """Give leases back without counting an attempt (worker stopping or paused), so another
        worker can take the blocks at once instead of after the lease."""
        slices, idxs = _columns(blocks)
        if not slices:
            return 0
        async with self.db.acquire() as conn:
            return _count(await conn.execute(_SQL_RELEASE, self.worker_id, slices, idxs))

    async def release_all(self) -> int:
        """Give back every lease this worker holds."""
        async with self.db.acquire() as conn:
            return _count(
                await conn.execute(
                    "UPDATE blocks SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = $1",
                    self.worker_id,
                )
            )

    async def retry_failed(self) -> int:
        """Re-queue every failed block now with its attempts reset (`mirrorfs mirror retry`).
        last_error is kept until a copy succeeds, so status still says why it failed before."""
        async with self.db.acquire() as conn, conn.transaction():
            n = _count(
                await conn.execute(
                    "UPDATE blocks SET state = 'pending', attempts = 0, next_attempt_at = now(),"
                    " claimed_by = NULL, lease_until = NULL WHERE state = 'failed'"
                )
            )
            await conn.execute("SELECT pg_notify($1, 'retry')", NOTIFY_CHANNEL)
        return n

    async def prioritise_blocks(self, blocks: Iterable[BlockId], priority: int) -> int:
        """Raise pending blocks to at least `priority` and make them due now (e.g. a block a
        client just read from the source). Returns the number of rows changed."""
        slices, idxs = _columns(blocks)
        if not slices:
            return 0
        async with self.db.acquire() as conn, conn.transaction():
            n = _count(
                await conn.execute(
                    _SQL_PRIORITISE.format(
                        p="$1",
                        source="unnest($2::bigint[], $3::integer[]) AS x(slice_id, idx)",
                        match="b.idx = x.idx",
                    ),
                    priority,
                    slices,
                    idxs,
                )
            )
            await conn.execute("SELECT pg_notify($1, 'priority')", NOTIFY_CHANNEL)
        return n

    async def prioritise_path(self, path: str, priority: int = PRIORITY_WARMUP) -> int:
        """Raise every pending block of every file at or under `path` (warm-up). Raises the
        replica's FsError (ENOENT, ENOTDIR...) for a bad path. Returns the rows changed."""
        ino = (await Replica(self.db).lookup(path)).ino
        async with self.db.acquire() as conn, conn.transaction():
            n = _count(
                await conn.execute(
                    f"WITH x AS ({SQL_SUBTREE_SLICES}) "
                    + _SQL_PRIORITISE.format(p="$2", source="x", match="true"),
                    ino,
                    priority,
                )
            )
            await conn.execute("SELECT pg_notify($1, 'priority')", NOTIFY_CHANNEL)
        return n

    async def set_paused(self, paused: bool) -> None:
        """Pause or resume copying for every worker of this mirror (it is a row, so it holds
        across restarts). Workers stop claiming at once and notice within a second."""
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                PAUSED_META_KEY,
                "true" if paused else "false",
            )
            await conn.execute("SELECT pg_notify($1, 'pause')", NOTIFY_CHANNEL)

    async def is_paused(self) -> bool:
        return await self.db.get_meta(PAUSED_META_KEY) == "true"

    async def stats(self) -> QueueStats:
        """Counts, bytes, oldest pending age and failure reasons, all from the table."""
        async with self.db.acquire() as conn:
            row = await conn.fetchrow(_SQL_STATS)
            reasons = await conn.fetch(_SQL_REASONS)
        assert row is not None
        failed = {r["reason"]: int(r["n"]) for r in reasons if r["state"] == "failed"}
        retrying = {r["reason"]: int(r["n"]) for r in reasons if r["state"] == "retrying"}
        oldest = row["oldest_s"]
        return QueueStats(
            blocks_pending=int(row["pending"]),
            bytes_pending=int(row["bytes"]),
            blocks_failed=int(row["failed"]),
            blocks_in_flight=int(row["in_flight"]),
            blocks_retrying=int(row["retrying"]),
            oldest_pending_s=None if oldest is None else round(float(oldest), 3),
            paused=bool(row["paused"]),
            failed_reasons=failed,
            retrying_reasons=retrying,
        )
