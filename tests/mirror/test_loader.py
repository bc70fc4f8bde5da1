"""Loading a source snapshot into the replica: one transaction, then the changelog applies on
top; blocks the mirror bucket already holds are not queued again."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest

from mirror.audit import check_integrity, dump_tree
from mirror.db import Database
from mirror.errors import SnapshotError
from mirror.follow.applier import apply_records
from mirror.follow.loader import LoadStats, load_replica
from mirror.replica import Replica
from mirror.replicate import CopyQueue
from mirror.stamp import Stamp, read_stamp
from objstore.keys import block_sizes
from tests.mirror.conftest import MiB, Workload, sums
from tests.mirror.test_applier import table_state
from volume.inode import ROOT_INO
from volume.snapshot import SNAPSHOT_FORMAT


def wire_rows(w: Workload) -> list[dict[str, Any]]:
    """The source's snapshot rows as a mirror receives them (through msgpack)."""
    return [msgpack.unpackb(msgpack.packb(r), raw=False) for r in w.ns.iter_snapshot()]


async def blocks_by_state(db: Database) -> dict[str, set[tuple[int, int]]]:
    out: dict[str, set[tuple[int, int]]] = {"pending": set(), "copied": set(), "failed": set()}
    async with db.acquire() as conn:
        for r in await conn.fetch("SELECT slice_id, idx, state FROM blocks"):
            out[r["state"]].add((r["slice_id"], r["idx"]))
    return out


def live_blocks(w: Workload) -> set[tuple[int, int]]:
    return {
        (sid, i)
        for sid, info in w.ns.tables.slices.items()
        for i in range(len(block_sizes(info.size)))
    }


@pytest.mark.parametrize("seed", range(3))
async def test_snapshot_then_changelog_equals_source(
    seed: int, db: Database, replica: Replica
) -> None:
    w = Workload(seed).run(500)
    rows, version, ts = wire_rows(w), w.version, w.records[-1].ts
    w.run(1000)
    seen: list[int] = []
    stats = await load_replica(db, version, ts, rows, on_progress=lambda s: seen.append(s.inodes))
    assert (stats.inodes, stats.slices) == (rows[0]["inodes"], rows[0]["slices"])
    assert stats.blocks == stats.blocks_pending == len(live_blocks_of_rows(rows))
    assert seen and seen[-1] == stats.inodes
    assert await replica.watermark() == (version, ts)
    assert await replica.snapshot_version() == version
    # refs loaded from the snapshot order before refs appended by later writes
    await apply_records(db, w.records)  # re-delivery of everything up to `version` is skipped
    assert await dump_tree(db) == w.ns.dump_tree()
    assert await check_integrity(db) == []


def live_blocks_of_rows(rows: list[dict[str, Any]]) -> set[tuple[int, int]]:
    return {(r["id"], i) for r in rows if r["row"] == "slice" for i in range(len(r["checksums"]))}


async def test_rows_may_come_from_an_async_iterator(db: Database, replica: Replica) -> None:
    w = Workload(4).run(300)

    async def stream() -> AsyncIterator[dict[str, Any]]:
        for row in wire_rows(w):
            yield row

    await load_replica(db, w.version, 77, stream())
    assert await dump_tree(db) == w.ns.dump_tree()
    assert await replica.watermark() == (w.version, 77)


async def test_reload_replaces_everything_and_keeps_copied_blocks(
    db: Database, replica: Replica
) -> None:
    w = Workload(9).run(400)
    first = w.version
    await load_replica(db, first, 1, wire_rows(w))
    before = live_blocks(w)
    async with db.acquire() as conn:
        await conn.execute("UPDATE blocks SET state = 'copied', copied_at = now()")
        # one copied block whose recorded checksum differs from the snapshot's: copy it again
        await conn.execute(
            "UPDATE blocks SET checksum = 'xxh3:stale' WHERE (slice_id, idx) IN"
            " (SELECT slice_id, idx FROM blocks ORDER BY slice_id, idx LIMIT 1)"
        )
        stale = await conn.fetchrow(
            "SELECT slice_id, idx FROM blocks WHERE checksum = 'xxh3:stale'"
        )
        # and a failed one: a resync retries it
        await conn.execute(
            "UPDATE blocks SET state = 'failed' WHERE (slice_id, idx) IN"
            " (SELECT slice_id, idx FROM blocks ORDER BY slice_id DESC, idx LIMIT 1)"
        )
        failed = await conn.fetchrow("SELECT slice_id, idx FROM blocks WHERE state = 'failed'")
    assert stale is not None and failed is not None
    # the replica then drifts (e.g. a follower wrote garbage) and the source moves on
    w.run(500)
    async with db.acquire() as conn:
        await conn.execute("INSERT INTO inodes VALUES (424242, 'file', 0, 0, 0, 0, 0, 0, 1, NULL)")
    stats = await load_replica(db, w.version, 2, wire_rows(w))
    after = live_blocks(w)
    states = await blocks_by_state(db)
    kept = (before & after) - {tuple(stale), tuple(failed)}
    assert kept, "some blocks survive between the two snapshots"
    assert states["copied"] == kept
    assert states["pending"] == after - kept
    assert states["failed"] == set()
    assert (stats.blocks_kept_copied, stats.blocks_pending) == (len(kept), len(after - kept))
    async with db.acquire() as conn:
        gc = {
            (r["slice_id"], r["idx"]): r["freed_version"]
            for r in await conn.fetch("SELECT * FROM gc_queue")
        }
    assert set(gc) == before - after and set(gc.values()) == {w.version}
    assert stats.blocks_to_gc == len(before - after)
    assert await dump_tree(db) == w.ns.dump_tree()
    assert await check_integrity(db) == []


def _bad_streams(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    inode_at = next(i for i, r in enumerate(rows) if r["row"] == "inode")
    child = next(i for i, r in enumerate(rows) if r["row"] == "inode" and r["parent"] != 0)
    with_chunks = next(i for i, r in enumerate(rows) if r["row"] == "inode" and r["chunks"])
    no_slices = [r for r in rows if r["row"] != "slice"]
    no_slices[0] = {**no_slices[0], "slices": 0}
    return {
        "truncated": rows[:-1],
        "no header": rows[1:],
        "child before parent": [
            *rows[:inode_at],
            rows[child],
            *rows[inode_at:child],
            *rows[child + 1 :],
        ],
        "unknown format": [{**rows[0], "format": SNAPSHOT_FORMAT + 1}, *rows[1:]],
        "unknown row": [*rows, {"row": "nonsense"}],
        "refs to unlisted slices": no_slices,
        "duplicate entry": [{**rows[0], "inodes": rows[0]["inodes"] + 1}, *rows[1:], rows[child]],
        "missing field": [
            *rows[:with_chunks],
            {**rows[with_chunks], "chunks": None},
            *rows[with_chunks + 1 :],
        ],
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "no header",
        "child before parent",
        "unknown format",
        "unknown row",
        "refs to unlisted slices",
        "duplicate entry",
        "missing field",
    ],
)
async def test_bad_snapshot_changes_nothing(case: str, db: Database) -> None:
    w = Workload(2).run(300)
    await apply_records(db, w.records[:100])
    before = await table_state(db)
    with pytest.raises(SnapshotError):
        await load_replica(db, w.version, 5, _bad_streams(wire_rows(w))[case])
    assert await table_state(db) == before


def synthetic_rows(n_inodes: int, files_per_dir: int = 200) -> Iterator[dict[str, Any]]:
    """A snapshot of a flat-ish tree: root, then directories, then files of 1..3 blocks each."""
    n_dirs = max(1, n_inodes // (files_per_dir + 1))
    n_files = n_inodes - 1 - n_dirs
    yield {
        "row": "header",
        "format": SNAPSHOT_FORMAT,
        "next_ino": n_inodes + 1,
        "next_slice_id": n_files + 1,
        "pending": [],
        "inodes": n_inodes,
        "slices": n_files,
    }
    sizes = [MiB, 5 * MiB, 9 * MiB]
    for sid in range(1, n_files + 1):
        size = sizes[sid % 3]
        yield {"row": "slice", "id": sid, "size": size, "checksums": sums(sid, size)}
    attr = {"mode": 0o755, "uid": 0, "gid": 0, "mtime_ms": 1, "ctime_ms": 1, "target": None}
    yield {"row": "inode", "parent": 0, "name": "", "ino": ROOT_INO, "kind": "dir", "size": 0,
           "nlink": 2 + n_dirs, "chunks": [], **attr}  # fmt: skip
    for d in range(n_dirs):
        yield {"row": "inode", "parent": ROOT_INO, "name": f"d{d:05d}", "ino": 2 + d,
               "kind": "dir", "size": 0, "nlink": 2, "chunks": [], **attr}  # fmt: skip
    for f in range(n_files):
        sid, size = f + 1, sizes[(f + 1) % 3]
        yield {"row": "inode", "parent": 2 + f % n_dirs, "name": f"file-{f:07d}.bin",
               "ino": 2 + n_dirs + f, "kind": "file", "size": size, "nlink": 1,
               "chunks": [[0, [[sid, size, 0, size, 0]]]], **attr}  # fmt: skip


@pytest.mark.slow
async def test_load_rate(db: Database, replica: Replica) -> None:
    """Initial load of 100k inodes (printed; the budget is 1M inodes in <= 60 s)."""
    n = 100_000
    started = time.perf_counter()
    stats: LoadStats = await load_replica(db, 10, 20, synthetic_rows(n))
    elapsed = time.perf_counter() - started
    print(f"\nloaded {stats.inodes} inodes, {stats.blocks} blocks in {elapsed:.2f}s")
    assert stats.inodes == n and stats.blocks_pending == stats.blocks
    assert (await CopyQueue(db).stats()).blocks_pending == stats.blocks
    n_dirs = n // 201
    names = [name for name, _ in await replica.readdir("/d00001", limit=10_000)]
    assert names == [f"file-{f:07d}.bin" for f in range(1, n - 1 - n_dirs, n_dirs)]


async def test_a_load_for_another_bucket_keeps_no_copied_row(db: Database) -> None:
    """'copied' rows survive a load given the owner's stamp only if the database was stamped
    for the same mirror, volume and bucket; the load writes the stamp."""
    w = Workload(5).run(300)
    eu_a = Stamp("vol-1", "vol", "eu", "file:///bucket-a")
    await load_replica(db, w.version, 1, wire_rows(w), stamp=eu_a)
    async with db.acquire() as conn:
        assert await read_stamp(conn) == eu_a
        await conn.execute("UPDATE blocks SET state = 'copied', copied_at = now()")
    n = len(live_blocks(w))
    w.run(320)
    stats = await load_replica(db, w.version, 2, wire_rows(w), stamp=eu_a)  # same bucket: kept
    assert stats.blocks_kept_copied > 0
    eu_b = Stamp("vol-1", "vol", "eu", "file:///bucket-b")
    stats = await load_replica(db, w.version, 3, wire_rows(w), stamp=eu_b)
    states = await blocks_by_state(db)
    assert stats.blocks_kept_copied == 0 and states["copied"] == set()
    assert states["pending"] == live_blocks(w) and n > 0
    async with db.acquire() as conn:
        assert await read_stamp(conn) == eu_b
    await load_replica(db, w.version, 4, wire_rows(w))  # a resync: the stamp is left alone
    async with db.acquire() as conn:
        assert await read_stamp(conn) == eu_b
