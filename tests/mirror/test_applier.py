"""Applying changelog records to the PostgreSQL replica: same state as the source, exactly once,
in order, all or nothing per batch."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from typing import Any

import pytest

from mirror.audit import check_integrity, dump_tree
from mirror.db import Database
from mirror.errors import (
    ApplyGapError,
    MalformedRecordError,
    PartialRequestError,
    ReplicaDivergedError,
)
from mirror.follow.applier import apply_records
from mirror.replica import Replica
from tests.mirror.conftest import Workload, batches
from volume.records import Record


async def table_state(db: Database) -> dict[str, Any]:
    """Every row of every replica table (queue timestamps excluded), for before/after checks."""
    out: dict[str, Any] = {}
    async with db.acquire() as conn:
        for table, cols in {
            "watermark": "applied_version, applied_ts, snapshot_version",
            "inodes": "*",
            "dentries": "*",
            "slices": "*",
            "chunk_refs": "*",
            "blocks": "slice_id, idx, size, checksum, state",
            "gc_queue": "slice_id, idx, size, freed_version",
        }.items():
            rows = await conn.fetch(f"SELECT {cols} FROM {table}")
            out[table] = sorted(tuple(r) for r in rows)
    return out


@pytest.mark.parametrize("seed", range(5))
async def test_replica_equals_source_after_random_batches(
    seed: int, db: Database, replica: Replica
) -> None:
    w = Workload(seed).run(700)
    ops = Counter(r.op for r in w.records)
    assert {"mkdir", "create", "write", "truncate", "rename", "unlink", "rmdir"} <= set(ops)
    assert any(r.effect["dropped"] for r in w.records if r.op == "write"), "writes covered others"
    rng = random.Random(seed)
    for batch in batches(w.records, rng, 120):
        assert await apply_records(db, batch) == (batch[-1].version, batch[-1].ts)
    assert await dump_tree(db) == w.ns.dump_tree()
    assert await replica.watermark() == (w.version, w.records[-1].ts)
    assert await check_integrity(db) == []


async def test_every_kind_of_replacement_is_covered() -> None:
    """The random workload (over the seeds above) exercises rename over a file and over a
    directory, and create of an existing file; otherwise the equality test proves less."""
    kinds: Counter[str] = Counter()
    for seed in range(5):
        for r in Workload(seed).run(700).records:
            if r.op == "rename" and not r.effect["noop"] and r.effect["replaced"]:
                kinds[f"rename-over-{r.effect['replaced']['kind']}"] += 1
            if r.op == "create" and r.effect["existed"]:
                kinds["create-existing"] += 1
            if r.op in ("truncate", "setattr") and r.effect["clipped"]:
                kinds["clipped"] += 1
            if r.op == "unlink" and r.effect["freed"]:
                kinds["unlink-freed"] += 1
    assert set(kinds) >= {
        "rename-over-file",
        "rename-over-dir",
        "create-existing",
        "clipped",
        "unlink-freed",
    }, kinds


async def test_one_record_at_a_time_and_one_big_batch_agree(db: Database, replica: Replica) -> None:
    w = Workload(11).run(300)
    for record in w.records[:150]:
        await apply_records(db, [record])
    await apply_records(db, w.records[150:])
    assert await dump_tree(db) == w.ns.dump_tree()


async def test_redelivery_is_skipped(db: Database, replica: Replica) -> None:
    w = Workload(3).run(400)
    await apply_records(db, w.records[:250])
    before = await table_state(db)
    assert await apply_records(db, w.records[100:250]) == (250, w.records[249].ts)
    assert await apply_records(db, []) == (250, w.records[249].ts)
    assert await table_state(db) == before
    # an overlapping batch applies only its new tail
    await apply_records(db, w.records[200:])
    assert await dump_tree(db) == w.ns.dump_tree()


async def test_gap_applies_nothing(db: Database) -> None:
    w = Workload(4).run(200)
    await apply_records(db, w.records[:100])
    before = await table_state(db)
    with pytest.raises(ApplyGapError) as info:
        await apply_records(db, w.records[101:150])
    assert (info.value.expected, info.value.got) == (101, 102)
    inner_gap = w.records[100:120] + w.records[121:130]
    with pytest.raises(ApplyGapError) as info:
        await apply_records(db, inner_gap)
    assert (info.value.expected, info.value.got) == (121, 122)
    assert await table_state(db) == before


def _bogus(record: Record, effect: dict[str, Any], op: str | None = None) -> Record:
    return Record(record.version, record.ts, op or record.op, effect)


@pytest.mark.parametrize("fault", ["malformed", "unknown-op", "entry-exists", "slice-exists"])
async def test_failing_batch_changes_nothing(fault: str, db: Database, replica: Replica) -> None:
    w = Workload(5).run(400)
    await apply_records(db, w.records[:200])
    before = await table_state(db)
    batch = list(w.records[200:300])
    mid = 250 - 200
    if fault == "malformed":
        batch[mid] = _bogus(batch[mid], {"ino": "not a number"}, "mkdir")
        expected: type[Exception] = MalformedRecordError
    elif fault == "unknown-op":
        batch[mid] = _bogus(batch[mid], {}, "format_disk")
        expected = MalformedRecordError
    else:
        # Well-formed records that do not fit the replica: found by SQL after earlier
        # statements of the batch have already run, so only the rollback saves the state.
        live = {(r[0], r[1]) for r in before["dentries"]}
        slices = {r[0] for r in before["slices"]}
        mkdir = next(
            r
            for r in w.records[:200]
            if r.op == "mkdir" and (r.effect["parent"], r.effect["name"]) in live
        )
        write = next(
            r for r in w.records[:200] if r.op == "write" and r.effect["slice"]["id"] in slices
        )
        source = mkdir if fault == "entry-exists" else write
        batch[mid] = _bogus(batch[mid], source.effect, source.op)
        expected = ReplicaDivergedError
    with pytest.raises(expected):
        await apply_records(db, batch)
    assert await table_state(db) == before
    # the genuine records still apply afterwards
    await apply_records(db, w.records[200:])
    assert await dump_tree(db) == w.ns.dump_tree()


async def test_missing_row_is_divergence(db: Database) -> None:
    w = Workload(6).run(100)
    await apply_records(db, w.records)
    before = await table_state(db)
    rmdir = Record(w.version + 1, w.ts, "rmdir", {
        "ino": 999_999, "parent": 1, "name": "never-there",
        "parent_attr": w.ns.getattr(1).to_dict(),
    })  # fmt: skip
    with pytest.raises(ReplicaDivergedError):
        await apply_records(db, [rmdir])
    assert await table_state(db) == before


async def test_freed_slices_move_to_gc_queue(db: Database) -> None:
    w = Workload(8).run(500)
    await apply_records(db, w.records)
    freed = {
        (item["id"], version)
        for version, r in enumerate(w.records, start=1)
        for item in r.effect.get("freed", [])
    }
    assert freed, "the workload freed slices"
    async with db.acquire() as conn:
        gc = {
            (r["slice_id"], r["freed_version"]) for r in await conn.fetch("SELECT * FROM gc_queue")
        }
        live = {r["id"] for r in await conn.fetch("SELECT id FROM slices")}
        pending = await conn.fetchval("SELECT count(*) FROM blocks WHERE state <> 'pending'")
    assert gc == freed
    assert live == set(w.ns.tables.slices) and not live & {sid for sid, _ in freed}
    assert pending == 0


async def test_concurrent_appliers_apply_each_record_once(db: Database, replica: Replica) -> None:
    """Two followers racing with the same batches: the watermark lock serialises them, the
    loser of each race skips what the winner applied."""
    w = Workload(9).run(600)
    chunks = [w.records[i : i + 50] for i in range(0, 600, 50)]

    async def follower() -> None:
        for chunk in chunks:
            await apply_records(db, chunk)

    await asyncio.gather(follower(), follower())
    assert await dump_tree(db) == w.ns.dump_tree()


@pytest.mark.slow
async def test_apply_rate(db: Database, replica: Replica) -> None:
    """Catch-up rate in batches of 1,000 (printed; the budget is >= 10,000 records/s)."""
    w = Workload(42, wire=False).run(30_000)
    started = time.perf_counter()
    for i in range(0, len(w.records), 1000):
        await apply_records(db, w.records[i : i + 1000])
    elapsed = time.perf_counter() - started
    print(
        f"\napplied {len(w.records)} records in {elapsed:.2f}s: {len(w.records) / elapsed:,.0f}/s"
    )
    print(dict(Counter(r.op for r in w.records)))
    assert await dump_tree(db) == w.ns.dump_tree()


async def test_applying_on_a_callers_connection_commits_with_the_caller(
    db: Database, replica: Replica
) -> None:
    w = Workload(12).run(100)

    class AbortError(Exception):
        pass

    async with db.acquire() as conn:
        with pytest.raises(AbortError):
            async with conn.transaction():
                assert await apply_records(conn, w.records) == (w.version, w.records[-1].ts)
                raise AbortError
        assert await replica.watermark() == (0, 0)
        async with conn.transaction():
            await apply_records(conn, w.records)
    assert await dump_tree(db) == w.ns.dump_tree()


async def test_a_batch_ending_inside_a_request_is_refused(db: Database) -> None:
    """A batch must be whole requests: one that stops inside a request applies nothing."""
    w = Workload(3).run(60)
    # Make records 11..20 one request: only record 20 ends it.
    records = [
        dataclasses.replace(r, ends_request=not 10 <= i < 19) for i, r in enumerate(w.records)
    ]
    await apply_records(db, records[:10])
    before = await table_state(db)
    for cut in (11, 15, 19):
        with pytest.raises(PartialRequestError) as info:
            await apply_records(db, records[10:cut])
        assert info.value.version == cut
        assert await table_state(db) == before
    assert await apply_records(db, records[10:20]) == (20, records[19].ts)
    await apply_records(db, records[20:])
    assert await dump_tree(db) == w.ns.dump_tree()
