"""A mirror region against a real 3-node source: create, follow, crash, resync, bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mirror.errors import MirrorDbError, MirrorError
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, make_files, source_dump
from tests.mirror.waits import postmaster
from volume.config import load_config
from volume.errors import AuthError, ConfigError


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=3) as cluster:
        yield cluster


@pytest.fixture
async def region(source: SourceCluster, pg_dsn: str) -> AsyncIterator[MirrorRegion]:
    r = MirrorRegion(source, "eu", pg_dsn)
    try:
        yield r
    finally:
        r.kill()


async def test_create_loads_snapshot_and_follows(
    source: SourceCluster, region: MirrorRegion
) -> None:
    await make_files(source, "before", 200)
    v0 = await region.create()
    assert (await region.watermark())[0] == v0
    region.start()
    await make_files(source, "after", 200)
    async with source.client() as c:
        await c.op("rename", src="/before/f1", dst="/after/f1")
        await c.op("unlink", path="/before/f2")
    await region.assert_equal_to_source()
    deadline = time.monotonic() + 30
    while True:
        st = await region.status()
        if st["state"] == "following" and st["lag_versions"] <= 5:
            break
        assert time.monotonic() < deadline, st
        await asyncio.sleep(0.1)
    # 400 files of one block each; the rename replaced /after/f1 and the unlink freed /before/f2.
    # (make_files writes metadata only, so the replicator fails these copies: source-missing.)
    assert await region.block_rows() == 398
    assert st["blocks_pending"] + st["blocks_failed"] == 398
    assert st["lag_seconds"] is not None and st["lag_seconds"] < 5
    cfg = load_config(source.config_path)
    assert "eu" in cfg.mirrors


async def test_follower_killed_mid_batch_applies_nothing_twice(
    source: SourceCluster, region: MirrorRegion
) -> None:
    await region.create()
    head = await make_files(source, "backlog", 6000, batch=500)
    start = (await region.watermark())[0]
    region.start()
    deadline = time.monotonic() + 60
    while True:  # kill while it is part-way through the backlog
        applied = (await region.watermark())[0]
        if applied > start:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    region.kill()
    assert (await region.watermark())[0] < head, "backlog applied before the kill: no fault"
    region.start()
    await region.assert_equal_to_source()


async def test_source_leader_killed_while_streaming(
    source: SourceCluster, region: MirrorRegion
) -> None:
    await region.create()
    region.start()
    await make_files(source, "a", 100)
    leader = await source.wait_leader()
    source.kill_node(leader)
    await make_files(source, "b", 100)
    await region.assert_equal_to_source()


async def test_records_dropped_while_offline_trigger_a_resync(tmp_path: Path, pg_dsn: str) -> None:
    cluster = SourceCluster(
        tmp_path / "vol",
        nodes=1,
        retention_min_records=0,
        retention_min_s=0,
        retention_max_records=100,
        segment_bytes=4096,
    )
    cluster.start_all()
    region = MirrorRegion(cluster, "eu", pg_dsn)
    try:
        await cluster.wait_leader()
        await region.create()
        await make_files(cluster, "gone", 1500, batch=50)
        async with cluster.client() as c:
            deadline = time.monotonic() + 30
            while (await c.status(cluster.api(1)))["first_available"] <= (await region.watermark())[
                0
            ] + 1:
                assert time.monotonic() < deadline, "retention did not drop the mirror's records"
                await asyncio.sleep(0.2)
        region.start()
        await region.assert_equal_to_source()
        st = await region.status()
        assert st["resyncs"] >= 1
        assert "resync" in region.log_path.read_text()
    finally:
        region.kill()
        cluster.kill_all()


async def test_wrong_token_is_refused_and_nothing_is_created(
    source: SourceCluster, region: MirrorRegion
) -> None:
    good = source.cfg.token
    text = source.config_path.read_text().replace(good, "x" * 32)
    source.config_path.write_text(text)
    with pytest.raises(AuthError):
        await region.create()
    assert load_config(source.config_path).mirrors == {}
    source.config_path.write_text(text.replace("x" * 32, good))
    await region.create()  # after fixing the cause, create works
    async with source.client() as c:
        st = await c.status(source.api(1))
    assert list(st["mirrors"]) == ["eu"]


async def test_bad_dsn_is_refused_and_nothing_is_registered(source: SourceCluster) -> None:
    for dsn in (
        "postgresql://nobody@127.0.0.1:1/nothing",
        "not a dsn at all",
        "postgresql://postgres@/nope?host=/tmp/no-such-dir",
    ):
        region = MirrorRegion(source, "bad", dsn)
        with pytest.raises(MirrorDbError) as info:
            await region.create()
        assert info.value.hint or info.value.message
    async with source.client() as c:
        st = await c.status(source.api(1))
    assert st["mirrors"] == {}
    assert load_config(source.config_path).mirrors == {}


async def test_unknown_mirror_name_is_a_clear_error(source: SourceCluster) -> None:
    cfg = load_config(source.config_path)
    with pytest.raises(ConfigError, match="no mirror named 'nope'"):
        cfg.mirror("nope")
    region = MirrorRegion(source, "Bad_Name", "postgresql://x@/y")
    with pytest.raises(MirrorError, match="bad mirror name"):
        await region.create()


async def test_replica_dump_matches_snapshot_dump(source: SourceCluster) -> None:
    await make_files(source, "x", 10)
    version, dump = await source_dump(source)
    assert version > 0 and "/x/f3" in dump


async def test_two_mirrors_side_by_side_one_embedded(source: SourceCluster, pg_dsn: str) -> None:
    """Each region has its own PostgreSQL (one external, one embedded) and its own bucket.

    Regression: a full run left the embedded PostgreSQL running after pytest exited. This test
    looked at the replica (starting the server) before the daemon came up, and that look
    never stopped it; the daemon then attached without owning it and did not stop it either.
    """
    eu = MirrorRegion(source, "eu", pg_dsn)
    ap = MirrorRegion(source, "ap", "")
    pg_dir = source.config_path.parent / "mirrors" / "ap" / "pg"
    try:
        await make_files(source, "x", 50)
        await eu.create()
        await ap.create()
        v0 = (await ap.watermark())[0]  # a look before the daemon runs: it starts the server
        assert v0 > 0
        eu.start()
        ap.start()
        await make_files(source, "y", 50)
        await eu.assert_equal_to_source()
        await ap.assert_equal_to_source()
        cfg = load_config(source.config_path)
        assert cfg.mirrors["eu"].bucket != cfg.mirrors["ap"].bucket
        assert (source.config_path.parent / "mirrors" / "ap" / "pg" / "PG_VERSION").exists()
    finally:
        eu.kill()
        ap.stop()
    assert ap.proc is not None and ap.proc.returncode == 0
    assert postmaster(pg_dir) is None, "the embedded PostgreSQL outlived every user"
