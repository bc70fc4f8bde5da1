"""A mirror's database and bucket belong to that mirror: the stamp (volume id, mirror, bucket)
refuses a foreign database, `--force` wipes one, and no `copied` row outlives its bucket."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fallback.client import FsClient
from mirror.errors import MirrorError
from objstore import open_store
from objstore.keys import BLOCK_PREFIX
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, make_files
from tests.mirror.waits import mirrorfs, wait_following, wait_status
from volume.config import load_config, write_config


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        yield cluster


async def database_contents(dsn: str) -> dict[str, list[str]]:
    """Every row of every table of the database's schema, as sorted text."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
        out = {}
        for t in tables:
            rows = await conn.fetch(f'SELECT * FROM "{t["tablename"]}"')
            out[t["tablename"]] = sorted(repr(tuple(r.values())) for r in rows)
        return out
    finally:
        await conn.close()


async def registrations(cluster: SourceCluster) -> list[str]:
    async with cluster.client() as c:
        return sorted((await c.status(cluster.api(1)))["mirrors"])


async def test_create_on_another_mirrors_database_is_refused_and_nothing_changes(
    source: SourceCluster, pg_dsn: str
) -> None:
    """Regression: `mirror create ap` on eu's database loaded ap over eu's replica."""
    await make_files(source, "a", 30)
    await MirrorRegion(source, "eu", pg_dsn).create()
    before = await database_contents(pg_dsn)
    config_before = source.config_path.read_text()
    with pytest.raises(MirrorError, match="already holds mirror 'eu' of volume 'test'") as info:
        await MirrorRegion(source, "ap", pg_dsn).create()
    assert info.value.hint and "--force" in info.value.hint
    out = mirrorfs(source.config_path, "mirror", "create", "ap", "--dsn", pg_dsn, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "error: " in out.stderr and "holds mirror 'eu'" in out.stderr, out.stderr
    assert await database_contents(pg_dsn) == before
    assert source.config_path.read_text() == config_before
    assert await registrations(source) == ["eu"]


async def test_force_wipes_it_with_a_warning_and_the_old_daemon_refuses_it(
    source: SourceCluster, pg_dsn: str
) -> None:
    eu = MirrorRegion(source, "eu", pg_dsn)
    ap = MirrorRegion(source, "ap", pg_dsn)
    await make_files(source, "a", 30)
    await eu.create()
    out = mirrorfs(source.config_path, "mirror", "create", "ap", "--dsn", pg_dsn, "--force")
    assert "warning: wiping database" in out.stdout + out.stderr, out
    assert "held mirror 'eu'" in out.stdout + out.stderr
    try:
        eu.start()  # its config still names that database, now ap's
        assert eu.proc is not None
        assert await asyncio.to_thread(eu.proc.wait, 60) == 1
        text = eu.log_path.read_text()
        assert "holds mirror 'ap' of volume 'test'" in text and "refusing" in text, text[-2000:]
        assert "Traceback" not in text
        ap.start()
        await make_files(source, "b", 10)
        await ap.assert_equal_to_source()
        await wait_following(ap)
    finally:
        eu.kill()
        ap.kill()


async def test_a_volume_of_the_same_name_is_another_volume(
    source: SourceCluster, tmp_path: Path, pg_dsn: str
) -> None:
    """Two volumes both named "test": the volume id minted by `init` tells them apart."""
    await MirrorRegion(source, "eu", pg_dsn).create()
    async with SourceCluster.running(tmp_path / "other", nodes=1) as other:
        assert other.cfg.name == source.cfg.name and other.cfg.id != source.cfg.id
        with pytest.raises(MirrorError, match=f"id {source.cfg.id}"):
            await MirrorRegion(other, "eu", pg_dsn).create()
        assert await registrations(other) == []


async def test_a_database_with_other_tables_is_never_taken(
    source: SourceCluster, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("CREATE TABLE customers (id int PRIMARY KEY)")
    await conn.close()
    out = mirrorfs(
        source.config_path, "mirror", "create", "eu", "--dsn", pg_dsn, "--force", check=False
    )
    assert out.returncode == 1 and "not a mirrorfs replica (customers)" in out.stderr, out.stderr
    assert list(await database_contents(pg_dsn)) == ["customers"]
    assert await registrations(source) == []


async def write_files(cluster: SourceCluster, prefix: str, count: int) -> set[str]:
    """Files with real blocks in the source bucket; returns their block keys."""
    cfg = load_config(cluster.config_path)
    async with await FsClient.for_source(cfg, uid=0, gid=0) as fs:
        await fs.mkdir(prefix)
        for i in range(count):
            await fs.put(io.BytesIO(os.urandom(300_000 + i)), f"{prefix}/f{i}")  # type: ignore[arg-type]
    source_store = await open_store(cfg.source.bucket, name="test")
    try:
        return {m.key async for m in source_store.list(BLOCK_PREFIX)}
    finally:
        await source_store.aclose()


async def bucket_keys(url: str) -> set[str]:
    store = await open_store(url, name="test")
    try:
        return {m.key async for m in store.list(BLOCK_PREFIX)}
    finally:
        await store.aclose()


async def wait_bucket_holds(url: str, keys: set[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (missing := keys - await bucket_keys(url)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not missing, f"{len(missing)} of {len(keys)} blocks never reached {url}"


def copied(st: dict[str, Any]) -> bool:
    return st["blocks_pending"] == 0 and st["blocks_failed"] == 0


async def test_a_changed_bucket_in_the_config_leaves_no_copied_row_behind(
    source: SourceCluster, pg_dsn: str, tmp_path: Path
) -> None:
    """Regression: the config moved the mirror to a new bucket; the block table still said
    `copied` for every block, so nothing was copied there and status saw no backlog."""
    region = MirrorRegion(source, "eu", pg_dsn)
    keys = await write_files(source, "/m", 4)
    await region.create()
    old_bucket = load_config(source.config_path).mirror("eu").bucket
    region.start()
    try:
        await wait_status(region, copied, "every block copied to the first bucket")
        assert await bucket_keys(old_bucket) == keys
        region.stop()
        cfg = load_config(source.config_path)
        new_bucket = (tmp_path / "new-bucket").as_uri()
        moved = cfg.mirrors["eu"].model_copy(update={"bucket": new_bucket})
        write_config(cfg.model_copy(update={"mirrors": {"eu": moved}}), source.config_path)
        region.start()
        await wait_bucket_holds(new_bucket, keys)
        await wait_status(region, copied, "every block copied to the new bucket")
        assert "mirror.bucket_changed" in region.log_path.read_text()
        mirrorfs(source.config_path, "mirror", "verify", "eu")
    finally:
        region.kill()


async def test_create_again_with_another_bucket_keeps_no_copied_row(
    source: SourceCluster, pg_dsn: str, tmp_path: Path
) -> None:
    """Regression: re-creating a mirror on its old database with a new bucket kept the old
    bucket's `copied` rows across the snapshot reload."""
    region = MirrorRegion(source, "eu", pg_dsn)
    keys = await write_files(source, "/m", 3)
    await region.create()
    region.start()
    try:
        await wait_status(region, copied, "every block copied")
        region.stop()
        mirrorfs(source.config_path, "mirror", "remove", "eu")
        new_bucket = (tmp_path / "second-bucket").as_uri()
        mirrorfs(
            source.config_path, "mirror", "create", "eu", "--dsn", pg_dsn, "--bucket", new_bucket
        )
        conn = await asyncpg.connect(pg_dsn)
        states = await conn.fetch("SELECT state, count(*) FROM blocks GROUP BY 1")
        await conn.close()
        assert {r["state"]: r["count"] for r in states} == {"pending": len(keys)}
        region.start()
        await wait_bucket_holds(new_bucket, keys)
    finally:
        region.kill()
