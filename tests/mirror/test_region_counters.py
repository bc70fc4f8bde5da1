"""The region's read counters (mirror/region_counters.py): sums across processes in the region's
PostgreSQL, shown by a real daemon in its status JSON and its /metrics."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mirror.db import Database
from mirror.metrics import render_metrics
from mirror.region_counters import COUNTER_NAMES, RegionCounters
from mirror.status import STATUS_FIELDS
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from tests.mirror.waits import wait_following, wait_status


async def test_totals_start_at_zero_and_add_sums(db: Database) -> None:
    counters = RegionCounters(db)
    assert await counters.totals() == dict.fromkeys(COUNTER_NAMES, 0)
    await counters.add({"fallback_reads": 2, "fallback_bytes": 100, "mirror_hits": 0})
    await counters.add({"fallback_reads": 3, "claim_timeouts": 1})  # a name not listed: kept
    totals = await counters.totals()
    assert totals["fallback_reads"] == 5 and totals["fallback_bytes"] == 100
    assert totals["mirror_hits"] == 0 and totals["claim_timeouts"] == 1
    await counters.add({})  # nothing to add: no statement


async def test_bad_names_and_negative_counts_are_refused(db: Database) -> None:
    counters = RegionCounters(db)
    for bad in ({"Fallback": 1}, {"x-y": 1}, {"fallback_reads": -1}):
        with pytest.raises(ValueError, match="lower_snake_case"):
            await counters.add(bad)
    assert await counters.totals() == dict.fromkeys(COUNTER_NAMES, 0)


async def test_concurrent_adds_from_several_sessions_sum_exactly(db: Database, pg_dsn: str) -> None:
    """Four pools (as four processes), 40 flushes each of overlapping names in random order:
    the sums are exact and no flush deadlocks against another."""
    rng = random.Random(4)
    expected: Counter[str] = Counter()
    plans: list[list[dict[str, int]]] = []
    for _ in range(4):
        plan = []
        for _ in range(40):
            names = rng.sample(COUNTER_NAMES, rng.randint(1, len(COUNTER_NAMES)))
            flush = {n: rng.randint(0, 1 << 30) for n in names}
            expected.update(flush)
            plan.append(flush)
        plans.append(plan)

    async def process(plan: list[dict[str, int]]) -> None:
        async with await Database.connect(pg_dsn, max_size=3) as own:
            counters = RegionCounters(own)
            async with asyncio.TaskGroup() as tg:
                for flush in plan:
                    tg.create_task(counters.add(flush))

    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        for plan in plans:
            tg.create_task(process(plan))
    totals = await RegionCounters(db).totals()
    assert {n: totals[n] for n in COUNTER_NAMES} == {n: expected[n] for n in COUNTER_NAMES}


def test_status_fields_name_every_counter() -> None:
    assert set(COUNTER_NAMES) <= set(STATUS_FIELDS)
    assert len(STATUS_FIELDS) == len(set(STATUS_FIELDS))


def test_metrics_leave_out_what_a_degraded_document_does_not_know() -> None:
    doc = {"mirror": "eu", "state": "degraded", "applied_version": 7, "blocks_pending": None}
    doc |= dict.fromkeys(COUNTER_NAMES)
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(doc).decode())}
    assert families["mirrorfs_region_degraded"].samples[0].value == 1
    assert families["mirrorfs_region_applied_version"].samples[0].value == 7
    assert "mirrorfs_region_blocks_pending" not in families
    assert not any(n.startswith("mirrorfs_region_fallback") for n in families)


@pytest.fixture
async def region(tmp_path: Path, pg_dsn: str) -> AsyncIterator[MirrorRegion]:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        r = MirrorRegion(cluster, "eu", pg_dsn)
        try:
            yield r
        finally:
            r.stop()


async def test_a_daemon_shows_the_region_sums_in_status_and_metrics(
    region: MirrorRegion, pg_dsn: str
) -> None:
    await region.create()
    region.start()
    await wait_following(region)
    st = await region.status()
    assert all(st[n] == 0 for n in COUNTER_NAMES), st
    # Two client processes of the region flush their counts.
    for counts in ({"fallback_reads": 3, "fallback_bytes": 12_000_000}, {"fallback_reads": 1}):
        async with await Database.connect(pg_dsn, max_size=1) as db:
            await RegionCounters(db).add({**counts, "source_gets_saved": 2})
    st = await wait_status(region, lambda d: d["fallback_reads"] == 4, "the sums are shown")
    assert st["fallback_bytes"] == 12_000_000 and st["source_gets_saved"] == 4
    async with aiohttp.ClientSession() as s, s.get(f"{region.api}/metrics") as resp:
        assert resp.status == 200  # no token: scrapers rarely carry one
        text = await resp.text()
    samples = {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("mirror") == "eu"
    }
    assert samples["mirrorfs_region_fallback_reads_total"] == 4
    assert samples["mirrorfs_region_fallback_bytes_total"] == 12_000_000
    assert samples["mirrorfs_region_source_gets_saved_total"] == 4
    assert samples["mirrorfs_region_mirror_hits_total"] == 0
    assert samples["mirrorfs_region_degraded"] == 0
