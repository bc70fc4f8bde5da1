"""The dashboard in a real browser against a running volume: a 3-node source region, two
mirror regions (their daemons as processes, each on its own real PostgreSQL database), the
`mirrorfs dashboard` process, and headless Chromium loading its page.

Claims: the numbers the page shows are the ones `mirror status --json` and the nodes' status
give (a page value lies between two status calls made around the page's round: within one
refresh); a stopped region daemon shows as unreachable and comes back when restarted; a
stopped source leader shows as unreachable and a new leader is named, and the old one comes
back as a follower; the page never shows a script error.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fallback.client import FsClient
from tests.changelog.cluster import SourceCluster
from tests.conftest import unique_name
from tests.dashboard_page import (
    Dashboard,
    browser_page,
    card,
    leader_is_not,
    mirror_figures,
    screenshot,
    state_is,
    value,
    wait_page,
    wait_round_after,
)
from tests.mirror.region import MirrorRegion
from tests.servers.postgres import PostgresServer
from tests.test_cli import mfs
from volume.config import load_config

pytestmark = pytest.mark.timeout(420)
MIRRORS = ("ap", "eu")


@pytest.fixture
async def volume(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[dict[str, Any]]:
    """Source cluster + mirrors eu and ap (each its own database), with data copied."""
    databases = [unique_name("dash", sep="_") for _ in MIRRORS]
    async with SourceCluster.running(tmp_path / "vol", nodes=3) as cluster:
        regions = {
            name: MirrorRegion(cluster, name, postgres.create_database(db))
            for name, db in zip(MIRRORS, databases, strict=True)
        }
        try:
            for r in regions.values():
                await r.create()
                r.start()
            cfg = load_config(cluster.config_path)
            async with await FsClient.for_source(cfg, uid=0, gid=0) as fs:
                await fs.mkdir("/models/dash", parents=True)
                for i in range(3):
                    data = io.BytesIO(os.urandom(3_000_000 + i))
                    await fs.put(data, f"/models/dash/shard-{i}")  # type: ignore[arg-type]
            yield {"cluster": cluster, "regions": regions}
        finally:
            for r in regions.values():
                r.kill()
            for db in databases:
                postgres.drop_database(db)


def mirror_status(config: Path, name: str) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(
        mfs("mirror", "status", name, "--json", config=config).stdout
    )
    return out


async def wait_copied(config: Path, name: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        st = await asyncio.to_thread(mirror_status, config, name)
        if st["state"] == "following" and st["blocks_pending"] == 0:
            return st
        assert time.monotonic() < deadline, st
        await asyncio.sleep(0.5)


async def test_page_shows_the_volume_and_follows_outages(
    volume: dict[str, Any], tmp_path: Path
) -> None:
    cluster: SourceCluster = volume["cluster"]
    regions: dict[str, MirrorRegion] = volume["regions"]
    config = cluster.config_path
    for name in MIRRORS:
        await wait_copied(config, name)
    dash = Dashboard(config, tmp_path / "dashboard.log")
    try:
        printed = await dash.start()
        assert printed == f"dashboard: {dash.login_url}"
        async with browser_page() as page:
            await page.goto(dash.login_url)
            assert page.url == f"{dash.base}/", "the login token must leave the address bar"
            for name in MIRRORS:
                await wait_page(page, f"{name} following", state_is(name, "following"))
            await wait_page(
                page, "the verdict is ok", "document.getElementById('verdict').dataset.level==='ok'"
            )

            # --- the numbers are the status documents' (within one refresh) ---
            for name in MIRRORS:
                before = await asyncio.to_thread(mirror_status, config, name)
                await wait_round_after(page, before["now_ms"])
                figures = await mirror_figures(
                    page,
                    name,
                    [
                        "applied_version",
                        "lag_seconds",
                        "blocks_pending",
                        "blocks_failed",
                        "cache_hits",
                    ],
                )
                shown = {f: raw for f, (raw, _) in figures.items()}
                after = await asyncio.to_thread(mirror_status, config, name)
                assert before["applied_version"] <= shown["applied_version"]
                assert shown["applied_version"] <= after["applied_version"]
                assert shown["blocks_pending"] == before["blocks_pending"] == 0
                assert shown["blocks_failed"] == before["blocks_failed"] == 0
                assert shown["cache_hits"] == before["cache_hits"]  # the mounts' local caches
                assert 0 <= shown["lag_seconds"] < before["window_s"]
                state = await page.get_attribute(card(name), "data-state")
                assert state == before["state"] == "following"
                assert figures["applied_version"][1] == f"{shown['applied_version']:,}"
                assert figures["blocks_pending"][1] == "0 blocks"
            leader = await cluster.wait_leader()
            assert await value(page, '#source [data-field="leader"]') == leader
            before_src = (await cluster.statuses([leader]))[leader]
            await wait_round_after(page, before_src["now_ms"])
            head = await value(page, '#source [data-field="head_version"]')
            term = await value(page, '#source [data-field="term"]')
            after_src = (await cluster.statuses([leader]))[leader]
            assert before_src["applied_version"] <= head <= after_src["applied_version"]
            assert term == before_src["term"] == after_src["term"]
            assert await page.locator("#source tr[data-node]").count() == 3
            await screenshot(page, tmp_path / "dashboard.png")

            # --- a paused mirror says so, with what waits, and catches up when resumed ---
            mfs("mirror", "pause", "ap", config=config)
            async with await FsClient.for_source(load_config(config), uid=0, gid=0) as fs:
                await fs.put(io.BytesIO(os.urandom(5_000_000)), "/models/dash/late")  # type: ignore[arg-type]
            await wait_page(
                page,
                "ap paused with blocks pending",
                f"document.querySelector('{card('ap')} [data-field=\"paused\"]') &&"
                f' document.querySelector(\'{card("ap")} [data-field="blocks_pending"]'
                " [data-value]').dataset.value === '2'",
                30,
            )
            st = await asyncio.to_thread(mirror_status, config, "ap")
            assert st["paused"] and st["blocks_pending"] == 2
            figures = await mirror_figures(page, "ap", ["blocks_pending", "replicator_state"])
            assert figures["blocks_pending"][1] == "2 blocks"
            assert figures["replicator_state"][1] == "paused"
            pending = f'{card("ap")} [data-field="blocks_pending"] .tile-sub'
            assert st["bytes_pending"] == 5_000_000
            assert (await page.inner_text(pending)).startswith("4.8 MiB")
            assert "ap: replication paused" in await page.inner_text("#verdict")
            assert await page.get_attribute(card("ap"), "data-level") == "warn"
            await screenshot(page, tmp_path / "dashboard-ap-paused.png")
            mfs("mirror", "resume", "ap", config=config)
            await wait_page(
                page,
                "ap caught up",
                f"!document.querySelector('{card('ap')} [data-field=\"paused\"]') &&"
                f' document.querySelector(\'{card("ap")} [data-field="blocks_pending"]'
                " [data-value]').dataset.value === '0'",
                60,
            )

            # --- a stopped region daemon is unreachable, then back ---
            regions["eu"].stop()
            await wait_page(page, "eu unreachable", state_is("eu", "unreachable"), 15)
            assert "eu unreachable" in await page.inner_text("#verdict")
            notice = await page.inner_text(f'{card("eu")} [data-field="unreachable"]')
            assert "connection refused" in notice and "at version" in notice
            assert await page.get_attribute(card("ap"), "data-state") == "following"
            await screenshot(page, tmp_path / "dashboard-eu-unreachable.png")
            regions["eu"].start()
            await wait_page(page, "eu following again", state_is("eu", "following"), 60)

            # --- a stopped source leader: unreachable, a new leader named, then back ---
            stopping = asyncio.create_task(asyncio.to_thread(cluster.stop_node, leader))
            row = f'#source tr[data-node="{leader}"]'
            await wait_page(
                page,
                f"node {leader} unreachable",
                f"document.querySelector('{row}')?.dataset.role === 'unreachable'",
                15,
            )
            await wait_page(page, "a new leader", leader_is_not(leader), 90)
            await stopping
            new_leader = await value(page, '#source [data-field="leader"]')
            assert new_leader != leader
            assert new_leader == await cluster.wait_leader(
                among=[i for i in cluster.node_ids if i != leader]
            )
            await screenshot(page, tmp_path / "dashboard-new-leader.png")
            cluster.start_node(leader)
            await wait_page(
                page,
                f"node {leader} back as a follower",
                f"document.querySelector('{row}')?.dataset.role === 'follower'",
                60,
            )
            for name in MIRRORS:
                await wait_page(page, f"{name} following", state_is(name, "following"), 60)
            await screenshot(page, tmp_path / "dashboard-recovered.png")
            assert page.errors == []
    finally:
        dash.stop()
    # The page's and the volume's tokens appear in no log line.
    log = (tmp_path / "dashboard.log").read_text()
    assert "dashboard.listening" in log
    assert dash.token not in log and load_config(config).token not in log
