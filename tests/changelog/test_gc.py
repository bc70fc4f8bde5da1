"""The source bucket's GC barrier: a freed slice's blocks leave the bucket only once every
registered mirror has acked the freeing record and the grace period has passed, never before;
a live slice's blocks never; the cursor survives a restart with no garbage lost.

In-process, without Raft: a real MetaState (ops applied directly), its records appended to real
segment files, a real bucket (a directory; the main barrier test also on SeaweedFS S3).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from changelog.gc import CURSOR_FILE, SourceGc, read_cursor, write_cursor
from changelog.log.segments import SegmentLog
from changelog.raft.state import MetaState
from objstore.base import ObjectStore
from objstore.errors import NotFoundError, UnavailableError
from objstore.faults import FaultLayer, FaultPlan
from objstore.keys import BLOCK_SIZE, slice_block_keys
from objstore.local import LocalStore
from volume.inode import block_count
from volume.records import MIRROR_ACK, MIRROR_REGISTER, MIRROR_REMOVE, TICK, Record

ROOT = {"uid": 0, "gid": 0}
TWO_BLOCKS = BLOCK_SIZE + 100  # a slice of two blocks (4 MiB + 100 B)
PASS_S = 0.03


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Source:
    """A source node's state and changelog segments, driven directly. `tamper` may rewrite a
    record on its way to the segments (to inject a bad record the state never made)."""

    def __init__(self, directory: Path, store: ObjectStore, *, segment_bytes: int = 1 << 20):
        self.directory = directory
        self.store = store
        self.segments = SegmentLog.open(
            directory / "changelog", segment_bytes=segment_bytes, fsync=False
        )
        self.state = MetaState(on_records=self._append)
        self.tamper: Callable[[Record], Record] | None = None
        self.live: dict[str, int] = {}  # path -> slice id

    def _append(self, records: list[Record]) -> None:
        if self.tamper is not None:
            records = [self.tamper(r) for r in records]
        self.segments.append(records)
        self.segments.flush()

    def op(self, op_name: str, /, **args: Any) -> Record:
        ((result,),) = self.state.apply_requests(
            [(None, [{"op": op_name, "args": {**args, **ROOT}}])], now_ms(), _doApply=True
        )
        assert result["ok"], result
        record: Record = self.state.recent[-1]
        return record

    async def write(self, path: str, size: int = TWO_BLOCKS) -> tuple[int, Record]:
        """Upload a slice's blocks, then commit it over the whole of `path` (created if needed);
        returns (slice id, record)."""
        if path not in self.live:
            self.op("create", path=path, mode=0o644)
        sid = int(self.op("alloc_slices", count=1).effect["first"])
        for key in slice_block_keys(sid, size):
            await self.store.put(key, b"block")
        sums = [f"xxh3:{sid:016x}"] * block_count(size)
        record = self.op(
            "write", path=path, chunk_index=0, pos=0, slice_id=sid, size=size, checksums=sums
        )
        self.live[path] = sid
        return sid, record

    def unlink(self, path: str) -> Record:
        del self.live[path]
        return self.op("unlink", path=path)

    def gc(self, *, grace_s: float, leader: Callable[[], bool] = lambda: True, **kw: Any) -> Gc:
        service = SourceGc(
            self.state,
            self.segments,
            self.directory,
            self.store,
            is_leader=leader,
            grace_s=grace_s,
            interval_s=PASS_S,
            **kw,
        )
        return Gc(service)

    async def exists(self, sid: int, size: int = TWO_BLOCKS) -> list[bool]:
        out = []
        for key in slice_block_keys(sid, size):
            try:
                await self.store.head(key)
                out.append(True)
            except NotFoundError:
                out.append(False)
        return out

    async def assert_live_blocks_present(self) -> None:
        for path, sid in self.live.items():
            assert await self.exists(sid) == [True, True], f"live {path} lost a block"


class Gc:
    """A SourceGc running as a task until `stop()`."""

    def __init__(self, service: SourceGc) -> None:
        self.service = service
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Gc:
        self._task = asyncio.create_task(self.service.run(self._stop))
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def passes(self, n: int = 3) -> None:
        """Wait for `n` more whole passes."""
        target = self.service.passes + n + 1
        await until(lambda: self.service.passes >= target, f"{n} GC passes")


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s}s for {what}")
        await asyncio.sleep(0.01)


async def until_async(
    cond: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s}s for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "bucket", fsync=False)


async def test_freed_blocks_wait_for_every_ack_and_then_go(
    tmp_path: Path, any_store: ObjectStore
) -> None:
    src = Source(tmp_path / "node", any_store)
    src.op(MIRROR_REGISTER, name="m1")
    s1, _ = await src.write("/a")
    _, overwrite = await src.write("/a")  # covers s1 whole: s1 is freed
    s3, _ = await src.write("/b")
    unlink = src.unlink("/b")
    assert [g["id"] for g in overwrite.effect["freed"]] == [s1]
    assert [g["id"] for g in unlink.effect["freed"]] == [s3]
    gc = src.gc(grace_s=0.2).start()
    try:
        await until(lambda: now_ms() > unlink.ts + 200, "the grace")
        await gc.passes()
        assert await src.exists(s1) == [True, True], "deleted before the mirror acked"
        assert await src.exists(s3) == [True, True]
        st = gc.service.status()
        assert (st["garbage_records"], st["garbage_blocks"]) == (2, 4)
        assert st["garbage_bytes"] == 2 * TWO_BLOCKS
        assert st["oldest_garbage_version"] == overwrite.version
        assert st["held_by"]["m1"]["version"] == overwrite.version
        assert st["held_by"]["m1"]["since_ms"] == overwrite.ts
        assert st["deleted_total"] == 0

        src.op(MIRROR_ACK, name="m1", version=overwrite.version)
        await until_async(lambda: _none(src.exists(s1)), "s1's blocks to go after the ack")
        await gc.passes()
        assert await src.exists(s3) == [True, True], "s3 went before its freeing was acked"
        assert gc.service.status()["held_by"]["m1"]["version"] == unlink.version

        src.op(MIRROR_ACK, name="m1", version=unlink.version)
        await until_async(lambda: _none(src.exists(s3)), "s3's blocks to go")
        st = gc.service.status()
        assert (st["garbage_blocks"], st["held_by"], st["deleted_total"]) == (0, {}, 4)
        assert st["deleted_bytes_total"] == 2 * TWO_BLOCKS
        await src.assert_live_blocks_present()
    finally:
        await gc.stop()


async def _none(exists: Awaitable[list[bool]]) -> bool:
    return not any(await exists)


async def test_grace_period_alone_without_mirrors(tmp_path: Path, store: LocalStore) -> None:
    src = Source(tmp_path / "node", store)
    s1, _ = await src.write("/a")
    _, freeing = await src.write("/a")
    due_ms = freeing.ts + 1500
    gc = src.gc(grace_s=1.5).start()
    try:
        seen_before_due = 0
        deadline = time.monotonic() + 20
        while any(await src.exists(s1)):
            if now_ms() < due_ms:
                seen_before_due += 1
            assert time.monotonic() < deadline, "never deleted"
            await asyncio.sleep(0.01)
        assert now_ms() >= due_ms, "deleted inside the grace period"
        assert seen_before_due > 0
        await src.assert_live_blocks_present()
    finally:
        await gc.stop()


async def test_offline_mirror_holds_gc_until_removed(tmp_path: Path, store: LocalStore) -> None:
    src = Source(tmp_path / "node", store)
    src.op(MIRROR_REGISTER, name="m1")
    src.op(MIRROR_REGISTER, name="m2")  # never acks: offline
    s1, _ = await src.write("/a")
    freeing = src.unlink("/a")
    src.op(MIRROR_ACK, name="m1", version=freeing.version)
    gc = src.gc(grace_s=0.1).start()
    try:
        await until(lambda: now_ms() > freeing.ts + 100, "the grace")
        await gc.passes(5)
        assert await src.exists(s1) == [True, True]
        held = gc.service.status()["held_by"]
        assert list(held) == ["m2"], "only the mirror that did not ack holds"
        assert held["m2"]["acked"] < freeing.version
        assert (held["m2"]["version"], held["m2"]["since_ms"]) == (freeing.version, freeing.ts)
        assert held["m2"]["age_s"] >= 0.1

        src.op(MIRROR_REMOVE, name="m2")
        await until_async(lambda: _none(src.exists(s1)), "deletion once m2 is removed")
        assert gc.service.status()["held_by"] == {}
    finally:
        await gc.stop()


async def test_a_slice_still_live_is_never_deleted(tmp_path: Path, store: LocalStore) -> None:
    """Fault injected: a record in the changelog names a live slice in `freed`."""
    src = Source(tmp_path / "node", store)
    live, _ = await src.write("/keep")
    gone, _ = await src.write("/b")

    def forge(record: Record) -> Record:
        if record.op != "unlink":
            return record
        bogus = {"id": live, "size": TWO_BLOCKS, "checksums": ["x", "x"]}
        effect = {**record.effect, "freed": [*record.effect["freed"], bogus]}
        return Record(record.version, record.ts, record.op, effect)

    src.tamper = forge
    src.unlink("/b")
    src.tamper = None
    gc = src.gc(grace_s=0).start()
    try:
        await until_async(lambda: _none(src.exists(gone)), "the freed slice to go")
        await gc.passes()
        assert await src.exists(live) == [True, True]
        st = gc.service.status()
        assert (st["skipped_live_total"], st["deleted_total"], st["garbage_records"]) == (1, 2, 0)
    finally:
        await gc.stop()


async def test_cursor_survives_restart_without_losing_or_misdeleting(
    tmp_path: Path, store: LocalStore
) -> None:
    src = Source(tmp_path / "node", store)
    src.op(MIRROR_REGISTER, name="m1")
    s1, _ = await src.write("/a")
    first = src.unlink("/a")
    s2, _ = await src.write("/b")
    second = src.unlink("/b")
    await src.write("/c")
    src.op(MIRROR_ACK, name="m1", version=first.version)

    gc1 = src.gc(grace_s=0).start()
    await until_async(lambda: _none(src.exists(s1)), "the acked garbage to go")
    await gc1.passes()
    await gc1.stop()
    assert read_cursor(tmp_path / "node" / CURSOR_FILE) == second.version
    assert gc1.service.retention_hold() == second.version
    # Retention honouring the hold keeps the record the cursor points at.
    src.segments.truncate_before(gc1.service.retention_hold() or 0)
    assert src.segments.first_version <= second.version

    gc2 = src.gc(grace_s=0)
    assert gc2.service.cursor == second.version
    gc2.start()
    try:
        await gc2.passes()
        st = gc2.service.status()
        assert (st["garbage_records"], st["oldest_garbage_version"]) == (1, second.version)
        assert await src.exists(s2) == [True, True]
        src.op(MIRROR_ACK, name="m1", version=second.version)
        await until_async(lambda: _none(src.exists(s2)), "the rest after the restart")
        await src.assert_live_blocks_present()
    finally:
        await gc2.stop()

    # A cursor persisted late (a crash before the periodic write) only repeats deletes.
    write_cursor(tmp_path / "node" / CURSOR_FILE, 1)
    gc3 = src.gc(grace_s=0).start()
    try:
        await until(lambda: gc3.service.cursor > second.version, "the replay")
        st = gc3.service.status()
        assert (st["deleted_total"], st["delete_errors_total"]) == (4, 0)
        await src.assert_live_blocks_present()
    finally:
        await gc3.stop()


async def test_records_lost_below_the_cursor_leak_and_never_misdelete(
    tmp_path: Path, store: LocalStore
) -> None:
    src = Source(tmp_path / "node", store, segment_bytes=4096)
    src.op(MIRROR_REGISTER, name="m1")
    s1, _ = await src.write("/a")
    src.unlink("/a")
    gc1 = src.gc(grace_s=0).start()
    await gc1.passes()
    await gc1.stop()
    held_at = gc1.service.retention_hold()
    for _ in range(200):
        src.op(TICK)
    s2, _ = await src.write("/b")
    later = src.unlink("/b")
    # A retention cap wins over the hold: the records from the cursor on are dropped.
    assert src.segments.truncate_before(later.version - 5) > 0
    assert held_at is not None and src.segments.first_version > held_at
    src.op(MIRROR_ACK, name="m1", version=later.version)

    gc2 = src.gc(grace_s=0).start()
    try:
        await until_async(lambda: _none(src.exists(s2)), "garbage after the gap to go")
        st = gc2.service.status()
        assert st["leaked_records"] == src.segments.first_version - held_at
        assert await src.exists(s1) == [True, True], "leaked, not deleted blind"
        assert gc2.service.cursor > later.version
    finally:
        await gc2.stop()


async def test_only_the_leader_deletes(tmp_path: Path, store: LocalStore) -> None:
    src = Source(tmp_path / "node", store)
    leader = False
    s1, _ = await src.write("/a")
    first = src.unlink("/a")
    gc = src.gc(grace_s=0.1, leader=lambda: leader, follower_lag_s=0.6).start()
    try:
        await until(lambda: now_ms() > first.ts + 100, "the grace")
        await gc.passes()
        if now_ms() < first.ts + 700:
            assert gc.service.cursor == first.version, "follower passed garbage inside its lag"
        await until(lambda: gc.service.cursor > first.version, "the follower to move on")
        assert now_ms() >= first.ts + 700
        assert await src.exists(s1) == [True, True], "a follower deleted"
        assert gc.service.status()["deleting"] is False

        s2, _ = await src.write("/b")
        src.unlink("/b")
        leader = True
        await until_async(lambda: _none(src.exists(s2)), "the new leader to delete")
        assert gc.service.status()["deleted_total"] == 2
    finally:
        await gc.stop()


async def test_failed_delete_keeps_the_garbage_and_retries(
    tmp_path: Path, store: LocalStore
) -> None:
    plan = FaultPlan()
    plan.fail("delete", UnavailableError("injected outage", op="delete"))
    src = Source(tmp_path / "node", FaultLayer(store, plan))
    s1, _ = await src.write("/a")
    freeing = src.unlink("/a")
    s2, _ = await src.write("/b")
    src.unlink("/b")
    gc = src.gc(grace_s=0, delete_concurrency=1).start()
    try:
        await until_async(lambda: _none_all(src.exists(s1), src.exists(s2)), "both after the retry")
        st = gc.service.status()
        assert (st["delete_errors_total"], st["deleted_total"]) == (1, 4)
        assert "injected outage" in (st["last_error"] or "")
    finally:
        await gc.stop()
    assert gc.service.cursor > freeing.version


async def _none_all(*exists: Awaitable[list[bool]]) -> bool:
    return all([not any(await e) for e in exists])


async def test_a_failed_delete_never_moves_the_cursor_past_it(
    tmp_path: Path, store: LocalStore
) -> None:
    plan = FaultPlan()
    plan.fail("delete", *[UnavailableError("down", op="delete") for _ in range(1000)])
    src = Source(tmp_path / "node", FaultLayer(store, plan))
    s1, _ = await src.write("/a")
    freeing = src.unlink("/a")
    gc = src.gc(grace_s=0).start()
    try:
        await gc.passes(3)
        assert gc.service.cursor == freeing.version
        assert gc.service.status()["garbage_blocks"] == 2
        assert await src.exists(s1) == [True, True]
    finally:
        await gc.stop()
    assert read_cursor(tmp_path / "node" / CURSOR_FILE) == freeing.version


async def test_pending_list_is_bounded_and_the_scan_resumes(
    tmp_path: Path, store: LocalStore
) -> None:
    src = Source(tmp_path / "node", store)
    src.op(MIRROR_REGISTER, name="m1")
    freed = []
    for name in ("/a", "/b", "/c"):
        sid, _ = await src.write(name)
        freed.append(sid)
        last = src.unlink(name)
    gc = src.gc(grace_s=0, max_pending_blocks=2).start()
    try:
        await gc.passes()
        st = gc.service.status()
        assert (st["garbage_records"], st["garbage_blocks"]) == (1, 2)
        assert st["scanned_version"] < last.version
        src.op(MIRROR_ACK, name="m1", version=last.version)
        await until_async(lambda: _none_all(*(src.exists(sid) for sid in freed)), "all three to go")
        await until(lambda: gc.service.cursor > last.version, "the cursor past the last")
    finally:
        await gc.stop()


async def test_the_grace_runs_from_the_last_ack_on_this_nodes_clock(
    tmp_path: Path, store: LocalStore
) -> None:
    """A mirror that lagged past the grace: its readers keep the blocks for a whole grace after
    it acks, measured on this node's clock from the ack, not from the record's ts."""
    src = Source(tmp_path / "node", store)
    src.op(MIRROR_REGISTER, name="m1")
    s1, _ = await src.write("/a")
    freeing = src.unlink("/a")
    gc = src.gc(grace_s=1.0).start()
    try:
        await until(lambda: now_ms() > freeing.ts + 1500, "the grace to pass behind the mirror")
        await gc.passes()
        assert await src.exists(s1) == [True, True], "deleted before the mirror acked"
        assert gc.service.status()["held_by"]["m1"]["version"] == freeing.version
        src.op(MIRROR_ACK, name="m1", version=freeing.version)
        acked_at = now_ms()
        seen_after_ack = 0
        deadline = time.monotonic() + 20
        while any(await src.exists(s1)):
            if now_ms() < acked_at + 1000:
                seen_after_ack += 1
            assert time.monotonic() < deadline, "never deleted"
            await asyncio.sleep(0.01)
        assert now_ms() >= acked_at + 1000, "deleted inside the grace after the ack"
        assert seen_after_ack > 0
        assert gc.service.status()["held_by"] == {}
    finally:
        await gc.stop()


async def test_a_record_stamped_by_a_slow_clock_still_gets_the_whole_grace(
    tmp_path: Path, store: LocalStore
) -> None:
    """Fault injected: the freeing record's ts comes from a node whose clock is an hour behind.
    The grace is this node's: it starts when this node saw the barrier pass, not at that ts."""
    src = Source(tmp_path / "node", store)
    s1, _ = await src.write("/a")

    def slow_clock(record: Record) -> Record:
        return Record(record.version, record.ts - 3_600_000, record.op, record.effect)

    src.tamper = slow_clock
    src.unlink("/a")
    src.tamper = None
    started = now_ms()
    gc = src.gc(grace_s=1.0).start()
    try:
        await gc.passes()
        assert await src.exists(s1) == [True, True], "deleted at once: grace taken from the ts"
        await until_async(lambda: _none(src.exists(s1)), "deletion after the grace")
        assert now_ms() >= started + 1000
    finally:
        await gc.stop()
