"""Region claims (mirror/claims.py): one holder per block across the region's processes, on a
real PostgreSQL; a killed holder's claim goes with its connection; waiters have a deadline; many
claims at once cost one connection; a claim never fails a read."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from mirror.claims import RegionClaims, claim_key
from mirror.db import Database

HOLDER_START_TIMEOUT_S = 30.0


@pytest.fixture
async def claims(db: Database) -> AsyncIterator[RegionClaims]:
    c = RegionClaims(db, wait_s=10.0)
    try:
        yield c
    finally:
        await c.aclose()


@contextlib.asynccontextmanager
async def other_process(dsn: str, **kwargs: float | bool) -> AsyncIterator[RegionClaims]:
    """Claims over a pool of their own: another session, as another process of the region."""
    async with await Database.connect(dsn, max_size=2) as db:
        c = RegionClaims(db, **kwargs)  # type: ignore[arg-type]
        try:
            yield c
        finally:
            await c.aclose()


@contextlib.contextmanager
def holder(dsn: str, slice_id: int, index: int) -> Iterator[subprocess.Popen[str]]:
    """A real process holding the claim (until a line on its stdin); killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.mirror.claim_holder", dsn, str(slice_id), str(index)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the holder prints at once or dies (then: EOF)
        assert line.strip() == "held", f"holder did not claim (exit {proc.poll()}): {line!r}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_keys_are_distinct_and_int4() -> None:
    keys = {claim_key(s, i) for s in [*range(300), 2**40, 2**54, 2**60] for i in range(16)}
    assert len(keys) == (300 + 3) * 16
    assert all(-(2**31) <= k < 2**31 for pair in keys for k in pair)


async def test_a_second_process_waits_for_the_holder(claims: RegionClaims, pg_dsn: str) -> None:
    async with other_process(pg_dsn, wait_s=10.0) as other:
        async with claims.claim(7, 0) as first:
            assert first.held and not first.waited
            waiter = asyncio.create_task(_enter(other, 7, 0))
            await asyncio.sleep(0.3)
            assert not waiter.done(), "the other process got a claim someone holds"
            # Another block is free meanwhile.
            async with other.claim(7, 1) as free:
                assert free.held and not free.waited
            released = time.monotonic()
        claim, entered = await asyncio.wait_for(waiter, 10)
        # Woken by the release's NOTIFY, not by a poll; the holder is done (the block is in the
        # mirror bucket now), so the waiter does not keep the claim: it re-checks at once.
        assert claim.waited and not claim.held  # type: ignore[attr-defined]
        assert entered - released < 0.2, f"waiter took {entered - released:.3f} s after release"
    assert await advisory_locks(claims.db) == 0


async def test_hold_after_wait_keeps_the_claim(claims: RegionClaims, pg_dsn: str) -> None:
    async with other_process(pg_dsn, wait_s=10.0, hold_after_wait=True) as other:
        async with claims.claim(8, 0):
            waiter = asyncio.create_task(_enter(other, 8, 0))
            await asyncio.sleep(0.2)
        claim, _ = await asyncio.wait_for(waiter, 10)
        assert claim.waited and claim.held  # type: ignore[attr-defined]


async def advisory_locks(db: Database) -> int:
    async with db.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))


async def _enter(c: RegionClaims, slice_id: int, index: int) -> tuple[object, float]:
    async with c.claim(slice_id, index) as claim:
        return claim, time.monotonic()


async def test_tasks_of_one_process_take_turns(claims: RegionClaims) -> None:
    inside = 0
    most = 0

    async def one() -> None:
        nonlocal inside, most
        async with claims.claim(3, 2) as claim:
            assert claim.held
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    async with asyncio.TaskGroup() as tg:
        for _ in range(6):
            tg.create_task(one())
    assert most == 1  # session locks are re-entrant: this exclusion is the process's own
    assert claims.stats.held == 6


async def test_a_waiter_gives_up_at_its_deadline_and_reads_anyway(
    claims: RegionClaims, pg_dsn: str
) -> None:
    async with other_process(pg_dsn, wait_s=0.4) as other, claims.claim(9, 3):
        started = time.monotonic()
        async with other.claim(9, 3) as claim:
            assert not claim.held and claim.waited
        assert 0.35 < time.monotonic() - started < 2.0
        assert other.stats.timeouts == 1


async def test_a_killed_holder_releases_its_claim(pg_dsn: str) -> None:
    async with other_process(pg_dsn, wait_s=20.0, poll_max_s=0.1) as waiter:
        with holder(pg_dsn, 11, 0) as proc:
            task = asyncio.create_task(_enter(waiter, 11, 0))
            await asyncio.sleep(0.5)
            assert not task.done(), "claimed while a live process holds it"
            proc.kill()
            killed = time.monotonic()
            proc.wait(timeout=10)
            claim, entered = await asyncio.wait_for(task, 20)
        # No NOTIFY from a dead holder: the waiter that sees the claim free takes it over.
        assert claim.held and claim.waited  # type: ignore[attr-defined]
        assert entered - killed < 3.0, f"waited {entered - killed:.1f} s after the kill"


async def test_a_holder_process_that_releases_wakes_the_waiter(pg_dsn: str) -> None:
    async with other_process(pg_dsn, wait_s=20.0, poll_max_s=5.0) as waiter:
        with holder(pg_dsn, 12, 1) as proc:
            task = asyncio.create_task(_enter(waiter, 12, 1))
            await asyncio.sleep(0.5)
            assert not task.done()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("release\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "released"
            released = time.monotonic()
            claim, entered = await asyncio.wait_for(task, 10)
        assert claim.waited and not claim.held  # type: ignore[attr-defined]
        # poll_max_s is 5 s: only the NOTIFY can have woken it this soon.
        assert entered - released < 1.0


async def test_many_claims_at_once_use_one_connection_and_stay_bounded(pg_dsn: str) -> None:
    async with await Database.connect(pg_dsn, max_size=2) as db:
        claims = RegionClaims(db, max_held=4)
        inside = 0
        most = 0

        async def one(i: int) -> None:
            nonlocal inside, most
            async with claims.claim(100 + i // 16, i % 16) as claim:
                assert claim.held
                inside += 1
                most = max(most, inside)
                # The reader's own queries still get a connection while claims are held.
                async with db.acquire() as conn:
                    assert await conn.fetchval("SELECT 1") == 1
                await asyncio.sleep(0.005)
                inside -= 1

        try:
            async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
                for i in range(200):
                    tg.create_task(one(i))
            assert most == 4
            assert claims.stats.held == 200
            assert await advisory_locks(db) == 0, "a released claim left its lock behind"
        finally:
            await claims.aclose()


async def test_a_cancelled_waiter_leaves_no_lock(claims: RegionClaims, pg_dsn: str) -> None:
    async with other_process(pg_dsn, wait_s=10.0) as other:
        async with claims.claim(20, 0):
            task = asyncio.create_task(_enter(other, 20, 0))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        async with other.claim(20, 0) as claim:  # not stuck behind a lock it leaked
            assert claim.held and not claim.waited
    async with claims.claim(20, 0) as again:
        assert again.held and not again.waited


async def test_a_lost_connection_never_fails_a_claim(claims: RegionClaims, db: Database) -> None:
    async with claims.claim(30, 0) as first:
        assert first.held
        async with db.acquire() as conn:
            # The claims' own session is cut, as a PostgreSQL restart or a network cut would.
            cut = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
            )
        assert cut == 1
    # The release found its connection gone (no error); the next claim reconnects.
    async with claims.claim(30, 0) as second:
        assert second.held and not second.waited


async def test_a_database_that_does_not_answer_yields_an_unheld_claim(pg_dsn: str) -> None:
    db = await Database.connect(pg_dsn, max_size=2)
    claims = RegionClaims(db)
    await db.aclose()  # every connection gone: as good as a server that does not answer
    async with claims.claim(40, 0) as claim:
        assert not claim.held
    assert claims.stats.unavailable == 1
    await claims.aclose()
