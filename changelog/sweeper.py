"""The upload sweeper: blocks uploaded to the source bucket but never committed leave it.

A put reserves slice ids (`alloc_slices`), uploads their blocks, then commits them (`write`). A
client that dies in between leaves blocks that no record names and no GC would ever find (the
GC barrier, changelog/gc.py, only knows slices a record freed). The sweeper finds them by
listing the bucket. It runs on every node; only the Raft leader lists and deletes. Each pass:

1. notes the ids the state holds as *expired* (committed `expire_slices` records: no write can
   commit them any more), then lists every block key of the bucket;
2. deletes the blocks of expired ids. An id whose expiry committed before the listing began,
   and none of whose listed blocks failed to delete, is then *forgotten* (dropped from the
   state's expired set, which so stays about one pass long);
3. expires, in one Raft op (`expire_slices`, with the forgotten ids), every pending id range
   reserved more than `grace_s` ago; its blocks go on the next pass.

Never deleted, only counted (`status`): blocks of live slices, of pending ids (a put in flight,
or one abandoned less than the grace ago), of slices neither live nor pending (freed slices
waiting behind the GC barrier, which deletes them; or garbage nothing can attribute), of ids
not allocated yet, and keys that are not block keys. The order makes it safe: a block is
deleted only for an id whose expiry is committed, and an expired id is never committed, so a
deleted block is one no record names or ever will. A late commit of an expired id fails with
EINVAL instead of committing a record that names deleted blocks.

Clocks: an id's reservation time is its `alloc_slices` record's ts (the proposing node's clock,
clamped monotone), compared with the leader's clock: skew shortens or lengthens the grace by
itself, against a default grace of an hour. The grace must outlast any one upload-to-commit span
(a put commits at least every quarter of it: fallback/writer.py).

Leader changes: the state carries the reservation times and the expired set, so a new leader
carries on where the old one stopped; a crash between an expiry and its deletes leaves the ids
expired, for the next pass. A deposed leader stops deleting at once (`is_leader` before every
delete). What can still leak: a PUT that lands after its id was forgotten (a client stalled for
longer than the grace plus a pass): counted under `unreferenced`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from changelog.namespace.chunks import IdRanges
from changelog.namespace.fileops import MAX_EXPIRE_RANGES
from changelog.raft import MetaState
from objstore.base import ObjectMeta, ObjectStore
from objstore.errors import StoreError
from objstore.keys import BLOCK_PREFIX, parse_block_key
from volume.errors import ChangelogError

log = structlog.get_logger(__name__)

EXPIRE_OP = "expire_slices"
MIN_INTERVAL_S = 0.2
MAX_INTERVAL_S = 600.0  # a pass lists the whole bucket: not more often than the grace needs
DEFAULT_DELETE_CONCURRENCY = 16
PAGE_KEYS = 1_000  # listed keys sorted per hold of the state lock

Submit = Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_interval_s(grace_s: float) -> float:
    """A pass every quarter grace (an abandoned upload goes within ~1.25 grace), bounded."""
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, grace_s / 4))


@dataclass
class Listing:
    """What one pass's listing of the bucket found (blocks and bytes by kind)."""

    blocks: int = 0
    bytes: int = 0
    live_blocks: int = 0
    live_bytes: int = 0
    uncommitted_blocks: int = 0  # of pending ids: a put in flight, or abandoned within grace
    uncommitted_bytes: int = 0
    expired_blocks: int = 0  # of expired ids: deleted by this pass
    expired_bytes: int = 0
    unreferenced_blocks: int = 0  # neither: freed, behind the GC barrier; or leaked
    unreferenced_bytes: int = 0
    unallocated_blocks: int = 0  # ids the state never reserved (never touched)
    foreign_keys: int = 0  # under blocks/ but not a block key


class UploadSweeper:
    """The source bucket's upload sweeper of one node (event-loop bound); see the module doc.

    `submit` commits ops through Raft and returns their per-op results (the node's
    `raft.submit`); `is_leader` says whether this node may list and delete.
    """

    def __init__(
        self,
        state: MetaState,
        store: ObjectStore,
        *,
        submit: Submit,
        is_leader: Callable[[], bool],
        grace_s: float,
        interval_s: float | None = None,
        delete_concurrency: int = DEFAULT_DELETE_CONCURRENCY,
    ) -> None:
        self.state = state
        self.store = store
        self.submit = submit
        self.is_leader = is_leader
        self.grace_ms = int(grace_s * 1000)
        self.interval_s = default_interval_s(grace_s) if interval_s is None else interval_s
        self.delete_concurrency = delete_concurrency
        self.last: Listing | None = None
        self.last_pass_at_ms: int | None = None
        self.last_pass_s: float | None = None
        self.passes = 0
        self.swept_total = 0
        self.swept_bytes_total = 0
        self.expired_ids_total = 0
        self.delete_errors_total = 0
        self.last_error: str | None = None

    # --- what the node asks ---

    def status(self) -> dict[str, Any]:
        """The garbage this node knows of: pending and expired ids from the state (any node),
        the last listing's counts (the leader's), and what this node swept."""
        with self.state.lock:
            pending = self.state.ns.tables.pending
            ranges = pending.ranges()
            expired = pending.expired_ranges()
            ids = len(pending)
        oldest = min((ts for _, _, ts in ranges), default=None)
        return {
            "sweeping": self.is_leader(),
            "grace_s": self.grace_ms / 1000,
            "interval_s": self.interval_s,
            "pending_ids": ids,
            "pending_ranges": len(ranges),
            "oldest_pending_age_s": None
            if oldest is None
            else round(max(0, now_ms() - oldest) / 1000, 3),
            "expired_ranges": len(expired),
            "expired_ids": sum(end - start for start, end in expired),
            "listing": asdict(self.last) if self.last else None,
            "last_pass_at_ms": self.last_pass_at_ms,
            "last_pass_s": self.last_pass_s,
            "passes": self.passes,
            "swept_total": self.swept_total,
            "swept_bytes_total": self.swept_bytes_total,
            "expired_ids_total": self.expired_ids_total,
            "delete_errors_total": self.delete_errors_total,
            "last_error": self.last_error,
        }

    # --- the loop ---

    async def run(self, stop: asyncio.Event) -> None:
        """A pass every `interval_s` while leader, until `stop`; failures are retried next pass
        (and shown in `status`), never fatal."""
        while not stop.is_set():
            if self.is_leader():
                try:
                    await self.run_pass()
                except (ChangelogError, StoreError, OSError) as exc:
                    self.last_error = str(exc)
                    log.warning("changelog.sweep_failed", error=str(exc))
                except Exception as exc:  # a bug: the sweeper must never take the node down
                    self.last_error = repr(exc)
                    log.exception("changelog.sweep_bug", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def run_pass(self) -> Listing:
        """List, delete the blocks of expired ids, then expire and forget (see the module doc).
        Raises StoreError if the listing fails (nothing is forgotten then)."""
        started = time.monotonic()
        with self.state.lock:
            noted = IdRanges(self.state.ns.tables.pending.expired_ranges())
        listing = Listing()
        failed: set[int] = set()
        page: list[ObjectMeta] = []
        async for meta in self.store.list(BLOCK_PREFIX):
            page.append(meta)
            if len(page) >= PAGE_KEYS:
                await self._sweep_page(page, listing, failed)
                page = []
        if page:
            await self._sweep_page(page, listing, failed)
        self.last = listing
        for slice_id in failed:
            noted.discard(slice_id, slice_id + 1)
        await self._expire(noted.ranges()[:MAX_EXPIRE_RANGES])
        self.passes += 1
        self.last_pass_at_ms = now_ms()
        self.last_pass_s = round(time.monotonic() - started, 3)
        return listing

    async def _sweep_page(self, page: list[ObjectMeta], listing: Listing, failed: set[int]) -> None:
        doomed: list[tuple[int, ObjectMeta]] = []
        parsed: list[tuple[int, ObjectMeta]] = []
        for meta in page:
            try:
                slice_id, _, _ = parse_block_key(meta.key)
            except ValueError:
                listing.foreign_keys += 1
                continue
            parsed.append((slice_id, meta))
        with self.state.lock:  # one consistent view of the state per page
            tables = self.state.ns.tables
            for slice_id, meta in parsed:
                listing.blocks += 1
                listing.bytes += meta.size
                if slice_id in tables.slices:
                    listing.live_blocks += 1
                    listing.live_bytes += meta.size
                elif slice_id in tables.pending:
                    listing.uncommitted_blocks += 1
                    listing.uncommitted_bytes += meta.size
                elif tables.pending.is_expired(slice_id):
                    listing.expired_blocks += 1
                    listing.expired_bytes += meta.size
                    doomed.append((slice_id, meta))
                elif slice_id >= tables.next_slice_id:
                    listing.unallocated_blocks += 1
                else:
                    listing.unreferenced_blocks += 1
                    listing.unreferenced_bytes += meta.size
        if doomed:
            await self._delete(doomed, failed)

    async def _delete(self, doomed: list[tuple[int, ObjectMeta]], failed: set[int]) -> None:
        work = iter(doomed)

        async def worker() -> None:
            for slice_id, meta in work:
                if not self.is_leader():
                    failed.add(slice_id)  # deposed: the new leader sweeps it
                    continue
                try:
                    await self.store.delete(meta.key)
                except StoreError as exc:
                    failed.add(slice_id)
                    self.delete_errors_total += 1
                    self.last_error = str(exc)
                    log.warning("changelog.sweep_delete_failed", key=meta.key, error=str(exc))
                    continue
                self.swept_total += 1
                self.swept_bytes_total += meta.size
                log.info("changelog.swept", key=meta.key, slice_id=slice_id)

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(self.delete_concurrency, len(doomed))):
                tg.create_task(worker())

    async def _expire(self, forget: list[list[int]]) -> None:
        """One `expire_slices` op when anything is due to expire or be forgotten."""
        before_ts = now_ms() - self.grace_ms
        with self.state.lock:
            due = bool(self.state.ns.tables.pending.expirable(before_ts, 1))
        if not (due or forget) or not self.is_leader():
            return
        args = {"before_ts": max(0, before_ts), "forget": forget, "uid": 0, "gid": 0}
        [result] = await self.submit([{"op": EXPIRE_OP, "args": args}])
        if not result.get("ok"):
            self.last_error = f"{EXPIRE_OP} refused: {result.get('error')}"
            log.error("changelog.sweep_expire_refused", error=result.get("error"))
            return
        effect = result["effect"]
        count = sum(end - start for start, end in effect["expired"])
        self.expired_ids_total += count
        if count or effect["forgotten"]:
            log.info(
                "changelog.slices_expired",
                version=result["version"],
                expired=effect["expired"][:20],
                ids=count,
                forgotten=len(effect["forgotten"]),
            )
