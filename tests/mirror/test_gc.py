"""The mirror bucket's GC: this region's copy of a freed block goes only after the replica has
applied the freeing record and the grace period has passed; a live block never; a failed delete
stays queued. Real PostgreSQL replica, real bucket (a directory; the main test also on S3)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from changelog.namespace import Namespace
from mirror.db import Database
from mirror.follow.applier import apply_records
from mirror.gc import MirrorGc
from objstore.base import ObjectStore
from objstore.errors import NotFoundError, UnavailableError
from objstore.faults import FaultLayer, FaultPlan
from objstore.keys import BLOCK_SIZE, slice_block_keys
from objstore.local import LocalStore
from volume.inode import block_count
from volume.records import Record

ROOT = {"uid": 0, "gid": 0}
TWO_BLOCKS = BLOCK_SIZE + 100
PASS_S = 0.03


class Source:
    """A source namespace producing records, and the mirror bucket holding copied blocks."""

    def __init__(self, store: ObjectStore) -> None:
        self.ns = Namespace()
        self.records: list[Record] = []
        self.store = store
        self.applied = 0
        self.files: set[str] = set()

    def op(self, op_name: str, /, **args: Any) -> Record:
        ts = time.time_ns() // 1_000_000
        effect = self.ns.apply(op_name, {**args, **ROOT}, ts)
        record = Record(len(self.records) + 1, ts, op_name, effect)
        self.records.append(record)
        return record

    async def write(self, path: str, size: int = TWO_BLOCKS) -> tuple[int, Record]:
        if path not in self.files:
            self.op("create", path=path, mode=0o644)
            self.files.add(path)
        sid = int(self.op("alloc_slices", count=1).effect["first"])
        for key in slice_block_keys(sid, size):
            await self.store.put(key, b"copy")
        sums = [f"xxh3:{sid:016x}"] * block_count(size)
        record = self.op(
            "write", path=path, chunk_index=0, pos=0, slice_id=sid, size=size, checksums=sums
        )
        return sid, record

    async def apply(self, db: Database) -> None:
        """Apply every record made so far to the replica."""
        await apply_records(db, self.records[self.applied :])
        self.applied = len(self.records)

    async def exists(self, sid: int, size: int = TWO_BLOCKS) -> list[bool]:
        out = []
        for key in slice_block_keys(sid, size):
            try:
                await self.store.head(key)
                out.append(True)
            except NotFoundError:
                out.append(False)
        return out


async def gone(exists: Awaitable[list[bool]]) -> bool:
    return not any(await exists)


async def until(cond: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s}s for {what}")
        await asyncio.sleep(0.01)


class Running:
    def __init__(self, gc: MirrorGc) -> None:
        self.gc = gc
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(gc.run(self._stop))

    async def passes(self, n: int = 3) -> None:
        target = self.gc.passes + n + 1
        deadline = time.monotonic() + 20
        while self.gc.passes < target:
            assert time.monotonic() < deadline, "GC passes stalled"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        await self._task


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "mirror-bucket", fsync=False)


async def freed_at_s(db: Database, slice_id: int) -> float:
    async with db.acquire() as conn:
        value = await conn.fetchval(
            "SELECT extract(epoch FROM min(freed_at))::float8 FROM gc_queue WHERE slice_id = $1",
            slice_id,
        )
    assert value is not None
    return float(value)


async def test_copies_go_after_the_freeing_record_is_applied_and_the_grace(
    db: Database, any_store: ObjectStore
) -> None:
    src = Source(any_store)
    s1, _ = await src.write("/a")
    await src.apply(db)
    gc = Running(MirrorGc(db, any_store, grace_s=1.0, interval_s=PASS_S))
    try:
        _, overwrite = await src.write("/a")
        assert [f["id"] for f in overwrite.effect["freed"]] == [s1]
        await gc.passes()
        assert await src.exists(s1) == [True, True], "deleted before the replica applied"

        await src.apply(db)
        due_s = await freed_at_s(db, s1) + 1.0
        st = await gc.gc.status()
        assert (st["garbage_blocks"], st["garbage_bytes"]) == (2, TWO_BLOCKS)
        assert st["oldest_garbage_version"] == overwrite.version
        seen_before_due = 0
        deadline = time.monotonic() + 20
        while any(await src.exists(s1)):
            if time.time() < due_s:
                seen_before_due += 1
            assert time.monotonic() < deadline, "never deleted"
            await asyncio.sleep(0.01)
        assert time.time() >= due_s, "deleted inside the grace period"
        assert seen_before_due > 0

        async def queue_empty() -> bool:
            return bool((await gc.gc.status())["garbage_blocks"] == 0)

        await until(queue_empty, "the queue rows to go")
        st = await gc.gc.status()
        assert (st["deleted_total"], st["deleted_bytes_total"]) == (2, TWO_BLOCKS)
        s2 = src.ns.chunk_slices(src.ns.resolve("/a").ino, 0)[0].id
        assert await src.exists(s2) == [True, True], "the live slice lost a block"
    finally:
        await gc.stop()


async def test_unlink_and_truncate_free_blocks_too(db: Database, store: LocalStore) -> None:
    src = Source(store)
    s1, _ = await src.write("/a")
    s2, _ = await src.write("/b")
    src.op("unlink", path="/a")
    src.op("truncate", path="/b", size=0)
    await src.apply(db)
    gc = Running(MirrorGc(db, store, grace_s=0, interval_s=PASS_S))
    try:
        await until(lambda: gone(src.exists(s1)), "the unlinked file's blocks")
        await until(lambda: gone(src.exists(s2)), "the truncated file's blocks")
    finally:
        await gc.stop()


async def test_a_row_ahead_of_the_watermark_waits(db: Database, store: LocalStore) -> None:
    """Fault injected: a gc_queue row whose freeing version the replica has not applied."""
    src = Source(store)
    await src.write("/a")
    await src.apply(db)
    stray = 10_000
    keys = slice_block_keys(stray, TWO_BLOCKS)
    for key in keys:
        await store.put(key, b"copy")
    async with db.acquire() as conn:
        await conn.execute(
            "INSERT INTO gc_queue (slice_id, idx, size, freed_version, freed_at)"
            " VALUES ($1, 0, $2, $4, now() - interval '1 hour'),"
            " ($1, 1, $3, $4, now() - interval '1 hour')",
            stray,
            BLOCK_SIZE,
            100,
            src.applied + 1,
        )
    gc = Running(MirrorGc(db, store, grace_s=0, interval_s=PASS_S))
    try:
        await gc.passes()
        assert await src.exists(stray) == [True, True]
        st = await gc.gc.status()
        assert (st["garbage_blocks"], st["garbage_due_blocks"]) == (2, 0)
        async with db.acquire() as conn:
            await conn.execute("UPDATE watermark SET applied_version = applied_version + 1")
        await until(lambda: gone(src.exists(stray)), "deletion once applied")
    finally:
        await gc.stop()


async def test_a_block_still_live_is_never_deleted(db: Database, store: LocalStore) -> None:
    """Fault injected: a gc_queue row for a block the replica still has in `blocks`."""
    src = Source(store)
    live, _ = await src.write("/a")
    await src.apply(db)
    async with db.acquire() as conn:
        await conn.execute(
            "INSERT INTO gc_queue (slice_id, idx, size, freed_version, freed_at)"
            " VALUES ($1, 0, $2, 1, now() - interval '1 hour')",
            live,
            BLOCK_SIZE,
        )
    gc = MirrorGc(db, store, grace_s=0)
    assert await gc.run_pass() == 0
    assert await src.exists(live) == [True, True]
    st = await gc.status()
    assert (st["skipped_live_total"], st["garbage_blocks"], st["deleted_total"]) == (1, 0, 0)


async def test_a_failed_delete_stays_queued_and_is_retried(db: Database, store: LocalStore) -> None:
    plan = FaultPlan()
    plan.fail("delete", UnavailableError("injected outage", op="delete"))
    faulty = FaultLayer(store, plan)
    src = Source(store)
    s1, _ = await src.write("/a")
    src.op("unlink", path="/a")
    await src.apply(db)
    gc = MirrorGc(db, faulty, grace_s=0, delete_concurrency=1)
    assert await gc.run_pass() == 1
    st = await gc.status()
    assert (st["garbage_blocks"], st["delete_errors_total"]) == (1, 1)
    assert "injected outage" in (st["last_error"] or "")
    assert sum(await src.exists(s1)) == 1
    assert await gc.run_pass() == 1
    assert await src.exists(s1) == [False, False]
    assert (await gc.status())["garbage_blocks"] == 0


async def test_batches_drain_the_whole_queue(db: Database, store: LocalStore) -> None:
    src = Source(store)
    freed = []
    for i in range(7):
        sid, _ = await src.write(f"/f{i}")
        freed.append(sid)
        src.op("unlink", path=f"/f{i}")
    await src.apply(db)
    gc = MirrorGc(db, store, grace_s=0, batch_blocks=3, delete_concurrency=2)
    assert await gc.run_pass() == 14
    for sid in freed:
        assert await src.exists(sid) == [False, False]
    assert (await gc.status())["garbage_blocks"] == 0


async def test_orphan_copies_go_after_the_grace_and_nothing_needed_does(
    db: Database, any_store: ObjectStore
) -> None:
    """Fault injected: copies in the mirror bucket that no row of the replica names (a copy that
    landed after its slice was freed and its GC row was done; one of a slice not applied yet).
    An orphan goes once older than the grace; a young one stays; live blocks and blocks the
    GC queue still holds are never touched by the sweep."""
    src = Source(any_store)
    live, _ = await src.write("/live")
    queued, _ = await src.write("/queued")
    unlink = src.op("unlink", path="/queued")
    await src.apply(db)
    async with db.acquire() as conn:  # the queue row is not due yet: the replica is behind it
        await conn.execute("UPDATE gc_queue SET freed_version = $1", unlink.version + 100)
    await any_store.put("blocks/not-a-block-key", b"?")
    grace_s = 3.0
    slack_s = 1.0  # S3's LastModified has a resolution of one second
    orphan, young = 10_000, 20_000
    orphan_at = time.time()
    for key in slice_block_keys(orphan, TWO_BLOCKS):
        await any_store.put(key, b"late copy")
    gc = Running(
        MirrorGc(db, any_store, grace_s=grace_s, interval_s=PASS_S, orphan_interval_s=PASS_S)
    )
    try:
        await asyncio.sleep(slack_s)  # so the two orphans' ages differ by more than the slack
        young_at = time.time()
        for key in slice_block_keys(young, TWO_BLOCKS):
            await any_store.put(key, b"just copied")
        await gc.passes()
        seen_before_due = 0
        deadline = time.monotonic() + 30
        while any(await src.exists(orphan)):
            if time.time() < orphan_at + grace_s - slack_s:
                seen_before_due += 1
            assert time.monotonic() < deadline, "the orphan never went"
            await asyncio.sleep(0.02)
        assert time.time() >= orphan_at + grace_s - slack_s, "deleted inside the grace"
        assert seen_before_due > 0 or time.time() > orphan_at + grace_s + 5, "never seen early"
        if time.time() < young_at + grace_s - slack_s:
            assert await src.exists(young) == [True, True], "a copy younger than the grace went"
        assert await src.exists(live) == [True, True], "a live block went"
        assert await src.exists(queued) == [True, True], "the GC queue's block went early"
        assert "blocks/not-a-block-key" in {m.key async for m in any_store.list("blocks/")}
        await until(lambda: gone(src.exists(young)), "the young orphan, once old enough")
        await gc.passes()
        st = (await gc.gc.status())["orphans"]
        assert (st["swept_total"], st["swept_bytes_total"]) == (4, 2 * 9 + 2 * 11)
        assert st["delete_errors_total"] == 0 and st["last_error"] is None
        listing = st["listing"]
        assert (listing["live_blocks"], listing["queued_blocks"]) == (2, 2)
        assert (listing["orphan_blocks"], listing["foreign_keys"]) == (0, 1)
        assert await src.exists(live) == [True, True] and await src.exists(queued) == [True, True]
    finally:
        await gc.stop()
