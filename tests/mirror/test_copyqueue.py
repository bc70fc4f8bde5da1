"""The copy queue's SQL on a real PostgreSQL: claim order, leases shared by several workers,
failures with backoff and reasons, retry, priorities, pause, and the wake-up NOTIFY."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.db import Database
from mirror.replicate.queue import (
    MIRROR_UNAVAILABLE,
    NOTIFY_CHANNEL,
    PRIORITY_FALLBACK,
    PRIORITY_WARMUP,
    SOURCE_MISSING,
    BlockId,
    CopyQueue,
    Failure,
)
from objstore import ObjectStore, open_store
from tests.mirror.volume import Volume
from volume.errors import FsError


@pytest.fixture
async def local_source(tmp_path: Path) -> AsyncIterator[ObjectStore]:
    (tmp_path / "src").mkdir()
    store = await open_store((tmp_path / "src").as_uri(), name="source")
    yield store
    await store.aclose()


async def add_blocks(db: Database, rows: list[tuple[int, int, int, float]]) -> None:
    """(slice_id, idx, priority, age_s) rows, pending, enqueued `age_s` seconds ago."""
    async with db.acquire() as conn:
        await conn.executemany(
            "INSERT INTO blocks (slice_id, idx, size, checksum, priority, enqueued_at)"
            " VALUES ($1, $2, 100, 'xxh3:0', $3, now() - make_interval(secs => $4))",
            rows,
        )


async def row(db: Database, slice_id: int, idx: int = 0) -> dict[str, object]:
    async with db.acquire() as conn:
        found = await conn.fetchrow(
            "SELECT *, next_attempt_at > now() AS backing_off FROM blocks"
            " WHERE slice_id = $1 AND idx = $2",
            slice_id,
            idx,
        )
    assert found is not None
    return dict(found)


async def test_claim_order_is_priority_then_age_then_position(db: Database) -> None:
    await add_blocks(
        db,
        [(1, 0, 0, 10), (2, 0, 0, 20), (3, 1, 5, 1), (3, 0, 5, 1), (4, 0, 0, 30), (5, 0, 0, 0)],
    )
    q = CopyQueue(db)
    got = [c.id for c in await q.claim(4)]
    assert got == [(3, 0), (3, 1), (4, 0), (2, 0)]
    assert [c.id for c in await q.claim(10)] == [(1, 0), (5, 0)]
    assert await q.claim(10) == []


async def test_workers_never_share_a_block(db: Database) -> None:
    await add_blocks(db, [(i, j, 0, 0) for i in range(100) for j in range(3)])
    queues = [CopyQueue(db, worker_id=f"w{i}") for i in range(4)]
    taken: list[BlockId] = []

    async def drain(q: CopyQueue) -> None:
        while claims := await q.claim(7):
            taken.extend(c.id for c in claims)

    await asyncio.gather(*(drain(q) for q in queues))
    assert len(taken) == 300 and len(set(taken)) == 300


async def test_expired_lease_is_taken_over_and_renewal_keeps_it(db: Database) -> None:
    await add_blocks(db, [(1, 0, 0, 0), (2, 0, 0, 0)])
    alive = CopyQueue(db, worker_id="alive", lease_s=2.0)
    dead = CopyQueue(db, worker_id="dead", lease_s=2.0)
    heir = CopyQueue(db, worker_id="heir", lease_s=2.0)
    assert [c.id for c in await alive.claim(1)] == [(1, 0)]
    assert [c.id for c in await dead.claim(1)] == [(2, 0)]
    assert await heir.claim(10) == [], "a live lease is never taken"
    deadline = time.monotonic() + 20
    taken: list[BlockId] = []
    while not taken:
        assert time.monotonic() < deadline, "the dead worker's lease never expired"
        assert await alive.renew() == 1
        taken = [c.id for c in await heir.claim(10)]
        await asyncio.sleep(0.2)
    assert taken == [(2, 0)], "only the expired lease is taken over"
    assert (await row(db, 1))["claimed_by"] == "alive"
    assert (await row(db, 2))["claimed_by"] == "heir"


async def test_failures_back_off_then_fail_with_the_reason(db: Database) -> None:
    await add_blocks(db, [(1, 0, 0, 0), (2, 0, 0, 0)])
    q = CopyQueue(db, max_attempts=3, retry_base_s=30.0)
    for attempt in range(1, 4):
        (claim,) = await q.claim(1)
        assert claim.id == (1, 0)
        states = await q.fail([Failure(claim.id, MIRROR_UNAVAILABLE, f"503 #{attempt}")])
        r = await row(db, 1)
        assert (
            r["attempts"] == attempt and r["last_error"] == f"{MIRROR_UNAVAILABLE}: 503 #{attempt}"
        )
        assert r["claimed_by"] is None
        if attempt < 3:
            assert states == {(1, 0): "pending"} and r["backing_off"]
            waiting = [c.id for c in await q.claim(5)]
            assert waiting == [(2, 0)], "a block backing off is not claimed"
            async with db.acquire() as conn:  # skip the wait: make it due now
                await conn.execute(
                    "UPDATE blocks SET next_attempt_at = now(), claimed_by = NULL,"
                    " lease_until = NULL"
                )
        else:
            assert states == {(1, 0): "failed"}
    # A permanent failure fails at once.
    (claim,) = await q.claim(1)
    assert claim.id == (2, 0)
    assert await q.fail([Failure(claim.id, SOURCE_MISSING, "gone", permanent=True)]) == {
        (2, 0): "failed"
    }
    st = await q.stats()
    assert st.blocks_failed == 2 and st.blocks_pending == 0
    assert st.failed_reasons == {MIRROR_UNAVAILABLE: 1, SOURCE_MISSING: 1}
    assert await q.retry_failed() == 2
    r = await row(db, 2)
    assert r["state"] == "pending" and r["attempts"] == 0 and not r["backing_off"]
    assert str(r["last_error"]).startswith(SOURCE_MISSING), "why it failed stays visible"
    assert len(await q.claim(10)) == 2


async def test_complete_marks_copied_once_and_checks_the_checksum(db: Database) -> None:
    await add_blocks(db, [(1, 0, 0, 0), (2, 0, 0, 0)])
    q = CopyQueue(db)
    a, b = await q.claim(2)
    stale = type(b)(b.slice_id, b.idx, b.size, "xxh3:ffff")  # the row was replaced meanwhile
    assert await q.complete([a, stale]) == 1
    assert await q.complete([a]) == 0, "completing twice changes nothing"
    assert (await row(db, 1))["state"] == "copied"
    assert (await row(db, 2))["state"] == "pending"
    st = await q.stats()
    assert st.blocks_pending == 1 and st.blocks_in_flight == 1 and st.oldest_pending_s is not None


async def test_prioritise_path_and_blocks(db: Database, local_source: ObjectStore) -> None:
    vol = Volume(db, local_source)
    await vol.files("/cold", 3, [100])
    warm = await vol.files("/warm", 2, [100])
    other = await vol.files("/x", 2, [100])
    q = CopyQueue(db)
    assert await q.prioritise_path("/warm", PRIORITY_WARMUP) == 2
    assert await q.prioritise_path("/warm", 1) == 0, "a raise never lowers a priority"
    assert await q.prioritise_blocks([BlockId(other[1].slice_id, 0)], PRIORITY_FALLBACK) == 1
    claims = await q.claim(3)
    assert [c.key for c in claims] == [other[1].key, warm[0].key, warm[1].key]
    with pytest.raises(FsError) as info:
        await q.prioritise_path("/nope", PRIORITY_WARMUP)
    assert info.value.errno == errno.ENOENT


async def test_pause_stops_claims(db: Database) -> None:
    await add_blocks(db, [(1, 0, 0, 0)])
    q = CopyQueue(db)
    assert not await q.is_paused()
    await q.set_paused(True)
    assert await q.is_paused() and (await q.stats()).paused
    assert await q.claim(5) == []
    await q.set_paused(False)
    assert len(await q.claim(5)) == 1


async def test_enqueued_blocks_notify_listeners(db: Database, local_source: ObjectStore) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()

    def listener(*args: object) -> None:
        got.put_nowait(str(args[3]))

    async with db.acquire() as conn:
        await conn.add_listener(NOTIFY_CHANNEL, listener)
        try:
            vol = Volume(db, local_source)
            await vol.files("/a", 1, [10])  # the follower's COPY into blocks
            assert await asyncio.wait_for(got.get(), 10) == ""
            await CopyQueue(db).set_paused(True)
            assert await asyncio.wait_for(got.get(), 10) == "pause"
        finally:
            await conn.remove_listener(NOTIFY_CHANNEL, listener)
