"""A removed mirror stops: the source answers its ack "unknown mirror" and its daemon exits
non-zero saying so; a `create` that died after registering is cleaned up by `create` again or
by `remove`, and `source status` lists registrations that never acked, with their age."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from mirror.db import Database
from mirror.errors import MirrorError
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, make_files
from tests.mirror.waits import mirrorfs, start_mirrorfs, wait_following
from volume.config import load_config
from volume.errors import FsError, MirrorRemovedError


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=3) as cluster:
        yield cluster


async def test_a_removed_mirrors_daemon_exits_non_zero_within_10_s(
    source: SourceCluster, pg_dsn: str
) -> None:
    """Regression: after `mirror remove`, the daemon kept "following" and looked healthy."""
    region = MirrorRegion(source, "eu", pg_dsn)
    await region.create()
    region.start()
    try:
        await wait_following(region)
        assert region.proc is not None
        mirrorfs(source.config_path, "mirror", "remove", "eu")
        removed_at = time.monotonic()
        code = await asyncio.to_thread(region.proc.wait, 30)
        took = time.monotonic() - removed_at
        text = region.log_path.read_text()
        assert code == 1, text[-2000:]
        assert took < 10, f"the daemon went on for {took:.1f}s after its removal"
        assert "error: mirror 'eu' was removed from the source" in text, text[-2000:]
        assert "unknown mirror 'eu'" in text and "Traceback" not in text
    finally:
        region.kill()


async def test_the_source_answers_an_unknown_mirrors_ack_with_a_typed_error(
    source: SourceCluster,
) -> None:
    async with source.client() as c:
        for action, body in (("ack", {"version": 0}), ("remove", {})):
            with pytest.raises(MirrorRemovedError) as info:
                await c.mirror("nope", action, **body)
            err = info.value
            assert err.mirror == "nope" and err.http_status == 404 and err.hint
            assert isinstance(err, FsError) and err.errno == 2  # still "not found" by errno
            assert "unknown mirror 'nope'" in err.message


async def test_a_create_killed_after_registering_is_taken_over_by_create_again(
    source: SourceCluster, pg_dsn: str
) -> None:
    """Regression: a `create` that died after registering left a registration that held the
    source's retention and GC forever, invisible in `source status`."""
    await make_files(source, "a", 50)
    # Hold the snapshot load: the killed create has registered, and its load waits on this lock.
    async with await Database.connect(pg_dsn) as db:
        await db.migrate()
    blocker = await asyncpg.connect(pg_dsn)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("LOCK TABLE watermark IN ACCESS EXCLUSIVE MODE")
    log = source.directory / "create.log"
    create = start_mirrorfs(source.config_path, "mirror", "create", "eu", "--dsn", pg_dsn, log=log)
    try:
        deadline = time.monotonic() + 60
        async with source.client() as c:
            while "eu" not in (await c.status(source.api(1)))["mirrors"]:
                assert create.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "create never registered"
                await asyncio.sleep(0.05)
        create.send_signal(signal.SIGKILL)
        create.wait(10)
    finally:
        await tx.rollback()
        await blocker.close()
    assert "eu" not in load_config(source.config_path).mirrors
    await asyncio.sleep(1.5)  # an age worth showing
    listed = orjson.loads(mirrorfs(source.config_path, "source", "status", "--json").stdout)
    for node in listed:
        [stale] = node["registrations_never_acked"]
        assert stale["name"] == "eu" and stale["age_s"] >= 1.0, stale
    text = mirrorfs(source.config_path, "source", "status").stdout
    assert "registrations that never acked" in text and "eu: registered" in text, text
    assert "not in the config" in text

    region = MirrorRegion(source, "eu", pg_dsn)
    await region.create()  # takes the dead create's registration over
    listed = orjson.loads(mirrorfs(source.config_path, "source", "status", "--json").stdout)
    assert all(node["registrations_never_acked"] == [] for node in listed)
    region.start()
    try:
        await make_files(source, "b", 20)
        await region.assert_equal_to_source()
    finally:
        region.kill()


async def test_remove_cleans_up_a_registration_that_never_made_the_config(
    source: SourceCluster,
) -> None:
    """Regression: `mirror remove` refused a name missing from the config, so a dead
    create's registration could not be removed with it."""
    async with source.client() as c:
        await c.mirror("eu", "register")  # what a create killed after registering leaves
    out = mirrorfs(source.config_path, "mirror", "remove", "eu")
    assert "removed from the source" in out.stdout
    async with source.client() as c:
        assert (await c.status(source.api(1)))["mirrors"] == {}
    again = mirrorfs(source.config_path, "mirror", "remove", "eu", check=False)
    assert again.returncode == 1 and "no mirror named 'eu'" in again.stderr
    assert "Traceback" not in again.stderr


async def test_create_never_takes_a_name_a_running_region_acked(
    source: SourceCluster, pg_dsn: str
) -> None:
    async with source.client() as c:
        await c.mirror("eu", "register")
        await c.mirror("eu", "ack", version=1)  # a region that ran under this name
    with pytest.raises(MirrorError, match="already registered with the source and has acked"):
        await MirrorRegion(source, "eu", pg_dsn).create()
    async with source.client() as c:
        assert list((await c.status(source.api(1)))["mirrors"]) == ["eu"]
