"""The replica's progress for readers: waits woken by the watermark's notification, bounded
by their deadline, and the clock estimate the follower keeps."""

from __future__ import annotations

import asyncio
import time

from mirror.db import Database
from mirror.follow.applier import apply_records
from mirror.follow.skew import SkewEstimator
from mirror.watermark import ReplicaWatermark, WatermarkState, save_clock_skew
from volume.records import TICK, Record


def tick(version: int, ts: int) -> Record:
    return Record(version, ts, TICK, {})


async def test_a_wait_returns_once_the_batch_commits_not_at_the_next_poll(db: Database) -> None:
    progress = ReplicaWatermark(db, poll_interval_s=30.0)  # only the notification can wake it
    try:
        assert await progress.current() == WatermarkState(0, 0, None)
        waiting = asyncio.create_task(progress.wait(version=2, timeout_s=20.0))
        await apply_records(db, [tick(1, 1000)])
        await asyncio.sleep(0.3)  # let the listener be up before the batch that matters
        assert not waiting.done()
        started = time.monotonic()
        await apply_records(db, [tick(2, 2000)])
        state = await asyncio.wait_for(waiting, 10)
        assert state == WatermarkState(2, 2000, None)
        assert time.monotonic() - started < 5.0
        # A wait for a time: every record stamped before ts_ms.
        assert (await progress.wait(ts_ms=2000, timeout_s=0)).applied_ts_ms == 2000
    finally:
        await progress.aclose()


async def test_current_follows_the_notifications_without_reading_the_row(db: Database) -> None:
    progress = ReplicaWatermark(db)
    try:
        assert (await progress.current()).applied_version == 0  # read: not listening yet
        deadline = time.monotonic() + 10
        while not progress._listening:
            assert time.monotonic() < deadline, "the watermark listener did not start"
            await asyncio.sleep(0.02)

        async def no_read() -> WatermarkState:
            raise AssertionError("current() read the row while listening")

        progress._read = no_read  # type: ignore[method-assign]
        await apply_records(db, [tick(1, 1000), tick(2, 1500)])
        while (await progress.current()).applied_version < 2:
            assert time.monotonic() < deadline, "current() never showed the move"
            await asyncio.sleep(0.01)
        assert await progress.current() == WatermarkState(2, 1500, None)
    finally:
        await progress.aclose()


async def test_a_wait_that_is_not_met_returns_the_latest_state_at_its_deadline(
    db: Database,
) -> None:
    progress = ReplicaWatermark(db)
    try:
        await apply_records(db, [tick(1, 1000)])
        started = time.monotonic()
        state = await progress.wait(version=5, ts_ms=0, timeout_s=0.6)
        assert 0.55 <= time.monotonic() - started < 3.0
        assert state.applied_version == 1
        state = await progress.wait(version=1, ts_ms=5000, timeout_s=0.3)
        assert state.applied_ts_ms == 1000  # a version alone is not enough when a time is asked
    finally:
        await progress.aclose()


async def test_the_clock_estimate_is_saved_for_readers_and_does_not_wake_them(
    db: Database,
) -> None:
    progress = ReplicaWatermark(db, poll_interval_s=30.0)
    try:
        waiting = asyncio.create_task(progress.wait(version=1, timeout_s=1.0))
        await asyncio.sleep(0.3)
        await save_clock_skew(db, -7)
        state = await waiting  # ran to its deadline: a skew update is no watermark move
        assert state == WatermarkState(0, 0, -7)
    finally:
        await progress.aclose()


def test_the_skew_estimate_is_the_largest_recent_lower_bound() -> None:
    est = SkewEstimator(bucket_s=10.0, buckets=3)
    assert est.estimate_ms(at=0.0) is None
    est.observe(1000, received_ms=1040, at=0.0)  # 40 ms on the way
    est.observe(2000, received_ms=2005, at=1.0)  # 5 ms: the tightest bound
    est.observe(500, received_ms=3000, at=2.0)  # an old record of a catch-up: ignored
    assert est.estimate_ms(at=2.0) == -5
    est.observe(9000, received_ms=8000, at=15.0)  # the source's clock 1 s ahead
    assert est.estimate_ms(at=15.0) == 1000
    # The window forgets: a clock stepped back shows within buckets * bucket_s.
    est.observe(10_000, received_ms=10_050, at=31.0)
    assert est.estimate_ms(at=31.0) == 1000
    est.observe(20_000, received_ms=20_050, at=46.0)
    assert est.estimate_ms(at=46.0) == -50
