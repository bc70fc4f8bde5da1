"""The block replicator against real SeaweedFS buckets and a real PostgreSQL replica: every block
ends in the mirror bucket, verified, under its own key, through restarts, injected S3 faults,
a killed worker, a vanished or corrupt source object, and pause/resume."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mirror.db import Database
from mirror.replicate.queue import SOURCE_CORRUPT, SOURCE_MISSING, Claim, CopyQueue
from mirror.replicate.replicator import PresenceCheck, Replicator, ReplicatorConfig
from mirror.worker import run_workers
from objstore import ObjectStore, TokenBucket, open_store
from objstore.checksum import checksum
from objstore.keys import BLOCK_PREFIX, block_key
from tests.mirror.volume import (
    SMALL,
    CountingLayer,
    KiB,
    MiB,
    Volume,
    all_copied,
    assert_mirror_holds_exactly,
    at_least,
    bucket_on,
    bucket_on_endpoint,
    copied_count,
    retries_of,
    running,
    states,
    wait_until,
)
from tests.servers.faultproxy import FaultProxy
from tests.servers.seaweed import SeaweedServer


async def status_of(rep: Replicator) -> dict[str, object]:
    """The replicator's part of the region status: the table's counts and this process's view."""
    return {**(await rep.queue.stats()).as_dict(), **rep.process_status()}


async def test_copies_every_block_to_its_own_key(
    db: Database, source: ObjectStore, mirror: ObjectStore
) -> None:
    vol = Volume(db, source)
    await vol.files("/a", 30, SMALL)
    await vol.files("/big", 2, [9 * MiB])  # 4 + 4 + 1 MiB blocks
    assert len(vol.blocks) == 36
    rep = Replicator(db, source, mirror, ReplicatorConfig(concurrency=8))
    async with running(rep):
        await wait_until("every block is copied", lambda: all_copied(db))
        await vol.files("/later", 5, SMALL)  # new blocks while idle: woken by NOTIFY
        await wait_until("the later blocks are copied", lambda: all_copied(db))
        st = await status_of(rep)
    await assert_mirror_holds_exactly(mirror, vol.blocks)
    assert st["blocks_pending"] == 0 and st["blocks_failed"] == 0
    assert st["blocks_copied_since_start"] == 41
    assert st["oldest_pending_s"] is None
    async with db.acquire() as conn:
        leftover = await conn.fetchval("SELECT count(*) FROM blocks WHERE claimed_by IS NOT NULL")
    assert leftover == 0, "a stopped replicator gives back every lease"


async def test_blocks_already_in_mirror_are_not_copied_again(
    db: Database, source: ObjectStore, mirror: ObjectStore
) -> None:
    """A mirror re-created over its old bucket: the blocks there are verified, not re-copied."""
    vol = Volume(db, source)
    blocks = await vol.files("/a", 40, [20 * KiB])
    bad, absent = blocks[10], blocks[20]
    for b in blocks:
        if b is not absent:
            await mirror.put(b.key, b.data if b is not bad else bytes(len(b.data)))
    counted = CountingLayer(source)
    rep = Replicator(db, counted, mirror, ReplicatorConfig(concurrency=4))
    async with running(rep):
        await wait_until("every block is copied", lambda: all_copied(db))
    assert counted.gets.get(bad.key) == 1, "a wrong copy in the mirror is replaced"
    assert counted.gets.get(absent.key) == 1
    # Until the first sampled check finds a block there, the blocks in flight are copied.
    assert sum(counted.gets.values()) <= 2 + 2 * 4
    assert rep.status.blocks_present >= 40 - 2 - 2 * 4
    await assert_mirror_holds_exactly(mirror, vol.blocks)


async def test_mirror_server_crash_and_restart_mid_copy(
    db: Database, source: ObjectStore, seaweed_factory: Callable[[], SeaweedServer]
) -> None:
    server = seaweed_factory()
    with bucket_on(server) as name:
        mirror = await open_store(f"s3://{name}?endpoint={server.endpoint}", name="mirror")
        vol = Volume(db, source)
        await vol.files("/a", 60, [256 * KiB])
        # capped at ~4 blocks/s so the copy is still running through both outages
        rep = Replicator(
            db,
            source,
            mirror,
            ReplicatorConfig(concurrency=8, bandwidth_bytes_per_s=MiB, retry_base_s=0.2),
        )
        async with running(rep):
            await wait_until("some blocks are copied", lambda: at_least(db, 8))
            await asyncio.to_thread(server.kill)  # crash: no goodbye to open connections
            await asyncio.sleep(0.3)  # let copies in flight hit the dead server
            await asyncio.to_thread(server.restart)
            copied_before = await copied_count(db)
            await wait_until("more blocks are copied", lambda: at_least(db, copied_before + 8))
            await asyncio.to_thread(server.restart)  # graceful stop + start
            assert await copied_count(db) < 60, "the copy finished before the second outage"
            await wait_until("every block is copied", lambda: all_copied(db), timeout_s=120)
        assert retries_of(mirror) + rep.status.copy_failures > 0, "no copy met the outages"
        await assert_mirror_holds_exactly(mirror, vol.blocks)
        await mirror.aclose()


async def test_throttling_errors_and_dropped_connections(
    db: Database, source: ObjectStore, seaweed: SeaweedServer, fault_proxy: FaultProxy
) -> None:
    with bucket_on(seaweed) as name:
        # Few retries in the store, so some failures reach the queue's own backoff too.
        mirror = await open_store(
            f"s3://{name}?endpoint={fault_proxy.url}", name="mirror", max_attempts=3
        )
        vol = Volume(db, source)
        await vol.files("/a", 40, [128 * KiB])
        rep = Replicator(
            db,
            source,
            mirror,
            ReplicatorConfig(concurrency=8, bandwidth_bytes_per_s=MiB, retry_base_s=0.05),
        )
        async with running(rep):
            await wait_until("some blocks are copied", lambda: at_least(db, 3))
            fault_proxy.set_down(True, mode="503")  # every request answered 503 for a while

            async def failures_recorded() -> bool:
                return rep.status.copy_failures >= 1

            await wait_until("a copy failed through the store's retries", failures_recorded)
            fault_proxy.set_down(False)
            for inject in (
                lambda: fault_proxy.fail_next(4, 503, "SlowDown"),
                lambda: fault_proxy.fail_next(4, 500, "InternalError"),
                lambda: fault_proxy.drop_next(3),
                lambda: fault_proxy.drop_next(3, after_upstream=True),  # PUT done, answer lost
            ):
                before = fault_proxy.stats().faults_injected
                inject()

                async def consumed(before: int = before) -> bool:
                    return fault_proxy.stats().faults_injected >= before + 3

                await wait_until("the faults were met", consumed)
            assert await copied_count(db) < 40, "the copy finished before the faults"
            await wait_until("every block is copied", lambda: all_copied(db), timeout_s=120)
        await assert_mirror_holds_exactly(mirror, vol.blocks)
        async with db.acquire() as conn:
            retried = await conn.fetchval("SELECT count(*) FROM blocks WHERE attempts > 0")
            errors = await conn.fetchval("SELECT count(*) FROM blocks WHERE last_error IS NOT NULL")
        assert retried >= 1, "no failure reached the queue's backoff"
        assert errors == 0, "a copied block still shows an error"
        await mirror.aclose()


async def test_killed_worker_blocks_are_taken_over(
    db: Database, pg_dsn: str, s3_url: str, source: ObjectStore, fault_proxy: FaultProxy
) -> None:
    seaweed_endpoint = fault_proxy.upstream
    with bucket_on_endpoint(seaweed_endpoint) as name:
        mirror_url = f"s3://{name}?endpoint={fault_proxy.url}"
        vol = Volume(db, source)
        await vol.files("/a", 30, [256 * KiB])
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.mirror.replicator_worker",
                pg_dsn,
                s3_url,
                mirror_url,
                "--worker-id",
                "doomed",
                "--lease-s",
                "2",
                "--concurrency",
                "4",
                "--bandwidth",
                str(512 * KiB),
            ],
            env={**os.environ},
        )
        try:

            async def doomed_holds_blocks() -> bool:
                async with db.acquire() as conn:
                    held = await conn.fetchval(
                        "SELECT count(*) FROM blocks WHERE claimed_by = 'doomed'"
                        " AND lease_until > now()"
                    )
                return bool(held >= 4) and await copied_count(db) >= 3

            await wait_until("the worker copied some and holds more", doomed_holds_blocks)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        async with db.acquire() as conn:
            done_before = {
                block_key(r["slice_id"], r["idx"], r["size"])
                for r in await conn.fetch("SELECT * FROM blocks WHERE state = 'copied'")
            }
            orphaned = await conn.fetchval(
                "SELECT count(*) FROM blocks WHERE claimed_by = 'doomed'"
            )
        assert orphaned >= 1 and len(done_before) < 30
        log_from = len(fault_proxy.seen())
        mirror = await open_store(mirror_url, name="mirror")
        rep = Replicator(
            db, source, mirror, ReplicatorConfig(concurrency=4, lease_s=2, worker_id="heir")
        )
        async with running(rep):
            await wait_until("every block is copied", lambda: all_copied(db))
        puts_after = [p for m, p in fault_proxy.seen()[log_from:] if m == "PUT"]
        assert not [p for p in puts_after if any(p.endswith(k) for k in done_before)], (
            "a block copied before the kill was copied again"
        )
        all_puts = [p for m, p in fault_proxy.seen() if m == "PUT"]
        twice = {p for p in all_puts if all_puts.count(p) > 1}
        assert len(twice) <= 4, "only blocks in flight at the kill may be written twice"
        await assert_mirror_holds_exactly(mirror, vol.blocks)
        await mirror.aclose()


async def test_block_gone_from_source_fails_with_the_reason(
    db: Database, source: ObjectStore, mirror: ObjectStore
) -> None:
    vol = Volume(db, source)
    gone, *_ = await vol.files("/a", 8, [50 * KiB])
    await source.delete(gone.key)
    rep = Replicator(db, source, mirror, ReplicatorConfig(concurrency=4))
    queue = CopyQueue(db)
    async with running(rep):

        async def settled() -> bool:
            return await states(db) == {"copied": 7, "failed": 1}

        await wait_until("all but the missing block are copied", settled)
        async with db.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM blocks WHERE slice_id = $1 AND idx = $2", gone.slice_id, gone.idx
            )
        assert row["attempts"] == 1, "a missing source object is not retried in a loop"
        assert row["last_error"].startswith(f"{SOURCE_MISSING}: ")
        assert "not in the source bucket" in row["last_error"] and gone.key in row["last_error"]
        st = await status_of(rep)
        assert st["blocks_failed"] == 1 and st["failed_reasons"] == {SOURCE_MISSING: 1}
        await source.put(gone.key, gone.data)  # e.g. restored; the operator retries
        assert await queue.retry_failed() == 1
        await wait_until("the retried block is copied", lambda: all_copied(db))
    await assert_mirror_holds_exactly(mirror, vol.blocks)


async def test_corrupt_source_block_is_reread_then_failed(
    db: Database, source: ObjectStore, mirror: ObjectStore
) -> None:
    vol = Volume(db, source)
    bad, *_ = await vol.files("/a", 4, [50 * KiB])
    await source.put(bad.key, bytes(len(bad.data)))
    counted = CountingLayer(source)
    rep = Replicator(db, counted, mirror, ReplicatorConfig(concurrency=4))
    async with running(rep):

        async def settled() -> bool:
            return await states(db) == {"copied": 3, "failed": 1}

        await wait_until("the corrupt block is failed", settled)
    assert counted.gets[bad.key] == 3, "a checksum mismatch is read again (torn read) first"
    async with db.acquire() as conn:
        error = await conn.fetchval(
            "SELECT last_error FROM blocks WHERE state = 'failed'",
        )
    assert error.startswith(f"{SOURCE_CORRUPT}: ") and "does not match" in error
    assert bad.key not in [m.key async for m in mirror.list(BLOCK_PREFIX)], "bad bytes copied"


async def test_pause_stops_copying_and_resume_continues(
    db: Database, source: ObjectStore, mirror: ObjectStore
) -> None:
    vol = Volume(db, source)
    await vol.files("/a", 30, [128 * KiB])
    queue = CopyQueue(db)
    await queue.set_paused(True)
    rep = Replicator(db, source, mirror, ReplicatorConfig(concurrency=4, bandwidth_bytes_per_s=MiB))

    async def state_is(state: str) -> bool:
        # ... and every finished copy already written to the table (completions are batched)
        settled = rep._results.empty() and not rep._unflushed
        return rep.status.state == state and rep.status.in_flight == 0 and settled

    async with running(rep):
        await wait_until("the replicator reports paused", lambda: state_is("paused"))
        await asyncio.sleep(1.0)  # a bounded look for copies that should not happen
        assert await copied_count(db) == 0
        await queue.set_paused(False)
        await wait_until("copying resumes", lambda: at_least(db, 3))
        await queue.set_paused(True)
        await wait_until("the pause is honoured", lambda: state_is("paused"), timeout_s=5)
        frozen = await copied_count(db)
        assert frozen < 30, "the copy finished before the pause"
        await asyncio.sleep(1.0)
        assert await copied_count(db) == frozen
        st = await status_of(rep)
        assert st["paused"] and st["blocks_in_flight"] == 0, "a paused worker holds no leases"
        await queue.set_paused(False)
        await wait_until("every block is copied", lambda: all_copied(db))
    await assert_mirror_holds_exactly(mirror, vol.blocks)


async def test_end_to_end_with_a_real_source(
    tmp_path: Path, pg_dsn: str, s3_url: str, seaweed: SeaweedServer
) -> None:
    """Files written through the client to a 1-node source reach the mirror bucket: the ones
    loaded by `mirror create` and the ones the follower applies later."""
    from cli.source import free_ports
    from fallback.client import FsClient
    from mirror.create import create_mirror
    from tests.changelog.cluster import SourceCluster
    from tests.mirror.region import MirrorRegion
    from volume.config import MirrorConfig, load_config

    cluster = SourceCluster(tmp_path / "vol", nodes=1, bucket=s3_url)
    cluster.start_all()
    region = MirrorRegion(cluster, "eu", pg_dsn)
    rng = random.Random(3)
    written: dict[str, bytes] = {}
    try:
        await cluster.wait_leader()
        async with await FsClient.for_source(cluster.cfg, uid=0, gid=0) as client:

            async def put(path: str, size: int) -> None:
                data = rng.randbytes(size)
                path_f = tmp_path / "upload"
                path_f.write_bytes(data)
                with path_f.open("rb") as f:
                    await client.put(f, path)
                written[path] = data

            await put("/before", 5 * MiB)
            with bucket_on(seaweed) as name:
                mirror_url = f"s3://{name}?endpoint={seaweed.endpoint}"
                mcfg = MirrorConfig(
                    bucket=mirror_url,
                    api=f"http://127.0.0.1:{free_ports(1)[0]}",
                    data_dir="mirrors/eu",
                    dsn=pg_dsn,
                )
                await create_mirror(load_config(cluster.config_path), mcfg, "eu")
                region.start()
                async with await Database.connect(pg_dsn) as db:
                    mirror = await open_store(mirror_url, name="mirror")
                    stop = asyncio.Event()
                    # what `mirrorfs mirror worker eu` runs, beside the daemon's follower
                    workers = asyncio.create_task(
                        run_workers(
                            load_config(cluster.config_path).mirror_region("eu"),
                            stop,
                            ReplicatorConfig(concurrency=4),
                        )
                    )
                    try:
                        await put("/after", 3 * MiB + 5)
                        await put("/small", 10)

                        async def synced() -> bool:
                            st = await states(db)
                            n = st.get("copied", 0)
                            return n == 4 and set(st) == {"copied"}  # 2 + 1 + 1 blocks

                        await wait_until("the mirror holds every block", synced)
                    finally:
                        stop.set()
                        await asyncio.wait_for(workers, 30)
                    async with db.acquire() as conn:
                        rows = await conn.fetch("SELECT * FROM blocks")
                    keys = sorted(block_key(r["slice_id"], r["idx"], r["size"]) for r in rows)
                    assert sorted([m.key async for m in mirror.list(BLOCK_PREFIX)]) == keys
                    for r in rows:
                        data = await mirror.get(block_key(r["slice_id"], r["idx"], r["size"]))
                        assert checksum(data) == r["checksum"]
                    await mirror.aclose()
    finally:
        region.kill()
        cluster.kill_all()


def test_presence_check_samples_until_it_finds_copies() -> None:
    fresh = Claim(1, 0, 10, "xxh3:0")
    retried = Claim(2, 0, 10, "xxh3:0", attempts=1)
    taken = Claim(3, 0, 10, "xxh3:0", taken_over=True)
    policy = PresenceCheck()
    assert policy.should_check(fresh), "the first block is always looked for"
    sampled = sum(policy.should_check(fresh) for _ in range(10 * PresenceCheck.SAMPLE_EVERY))
    assert sampled == 10
    assert policy.should_check(retried) and policy.should_check(taken)
    policy.found(True)  # a hit: check every block until a run of misses
    for _ in range(PresenceCheck.MISS_WINDOW):
        assert policy.should_check(fresh)
        policy.found(False)
    assert sum(policy.should_check(fresh) for _ in range(PresenceCheck.SAMPLE_EVERY)) == 1
    assert not PresenceCheck(enabled=False).should_check(taken)


async def test_bandwidth_cap_is_shared_by_all_takers() -> None:
    bucket = TokenBucket(1_000_000, burst_bytes=100_000)
    start = time.monotonic()
    # 100 kB of burst, then 500 kB more at 1 MB/s: no way to finish in under 0.5 s
    await asyncio.gather(*(bucket.take(100_000) for _ in range(6)))
    assert time.monotonic() - start >= 0.49
    with pytest.raises(ValueError):
        TokenBucket(0)


async def test_a_paused_replicator_sleeps(
    db: Database, source: ObjectStore, mirror: ObjectStore
) -> None:
    """Regression: the paused branch slept on a wake event it never cleared, so after the first
    notification (the pause's own) it spun, a whole core for as long as the pause lasted."""
    queue = CopyQueue(db)
    rep = Replicator(db, source, mirror, ReplicatorConfig(concurrency=4))
    async with running(rep):
        await queue.set_paused(True)
        await wait_until("the replicator reports paused", lambda: _state(rep, "paused"))
        rep._wake.set()  # a notification while paused (a new block, a retry, the pause itself)
        cpu = time.process_time()
        await asyncio.sleep(2.0)  # a bounded look at what the paused loop costs
        assert time.process_time() - cpu < 0.5, "the paused replicator spins"
        await queue.set_paused(False)


async def _state(rep: Replicator, state: str) -> bool:
    return str(rep.status.state) == state
