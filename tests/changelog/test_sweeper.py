"""The upload sweeper: blocks uploaded under slice ids that were never committed leave the
source bucket once their reservation is older than the grace; a late commit of such an id
fails cleanly; nothing live, pending within the grace, or behind the GC barrier is touched.

In-process, without Raft: a real MetaState (ops applied directly, the sweeper's expire op too),
real buckets (a directory and SeaweedFS S3). The end-to-end test with real Raft processes and a
client killed with -9 is tests/changelog/test_sweeper_cluster.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from changelog.sweeper import UploadSweeper
from objstore.base import ObjectStore
from objstore.errors import UnavailableError
from objstore.faults import FaultLayer, FaultPlan
from objstore.keys import BLOCK_PREFIX, slice_block_keys
from objstore.local import LocalStore
from tests.changelog.test_gc import ROOT, TWO_BLOCKS, Source, now_ms, until, until_async
from volume.records import MIRROR_REGISTER

PASS_S = 0.03


class Sweeping:
    """An UploadSweeper over a Source's state, committing its ops directly, as a task."""

    def __init__(
        self,
        src: Source,
        *,
        grace_s: float,
        store: ObjectStore | None = None,
        leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.src = src
        self.submitted: list[dict[str, Any]] = []

        async def submit(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
            self.submitted.extend(ops)
            [results] = src.state.apply_requests([(None, ops)], now_ms(), _doApply=True)
            return results

        self.service = UploadSweeper(
            src.state,
            store or src.store,
            submit=submit,
            is_leader=leader,
            grace_s=grace_s,
            interval_s=PASS_S,
        )
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.service.run(self._stop))

    async def passes(self, n: int = 3) -> None:
        target = self.service.passes + n + 1
        await until(lambda: self.service.passes >= target, f"{n} sweeper passes")

    async def stop(self) -> None:
        self._stop.set()
        await self._task


async def abandon(src: Source, size: int = TWO_BLOCKS) -> tuple[int, int]:
    """A client that reserved an id and uploaded its blocks, then died: (slice id, alloc ts)."""
    record = src.op("alloc_slices", count=1)
    sid = int(record.effect["first"])
    for key in slice_block_keys(sid, size):
        await src.store.put(key, b"uncommitted")
    return sid, record.ts


def late_write(src: Source, path: str, sid: int) -> dict[str, Any]:
    """The dead client's commit, arriving late."""
    args = {
        "path": path,
        "chunk_index": 0,
        "pos": 0,
        "slice_id": sid,
        "size": TWO_BLOCKS,
        "checksums": ["x", "x"],
        **ROOT,
    }
    ops = [{"op": "write", "args": args}]
    [[result]] = src.state.apply_requests([(None, ops)], now_ms(), _doApply=True)
    return result


async def keys(store: ObjectStore) -> set[str]:
    return {m.key async for m in store.list(BLOCK_PREFIX)}


async def test_uncommitted_blocks_go_after_the_grace_and_nothing_else_does(
    tmp_path: Path, any_store: ObjectStore
) -> None:
    src = Source(tmp_path / "node", any_store)
    src.op(MIRROR_REGISTER, name="m1")  # never acks: the freed slice stays behind the barrier
    await src.write("/keep")
    freed, _ = await src.write("/gone")
    src.unlink("/gone")
    dead, reserved_ts = await abandon(src)
    await any_store.put("blocks/not-a-block-key", b"?")
    kept = await keys(any_store) - set(slice_block_keys(dead, TWO_BLOCKS))
    sweeper = Sweeping(src, grace_s=0.5)
    try:
        await until_async(
            lambda: _gone(any_store, dead), "the abandoned upload's blocks", timeout_s=30
        )
        assert now_ms() >= reserved_ts + 500, "swept inside the grace"
        assert await keys(any_store) == kept, "a block that was not uncommitted went"
        assert await src.exists(freed) == [True, True], "the GC barrier's block was swept"
        await src.assert_live_blocks_present()

        result = late_write(src, "/keep", dead)
        assert not result["ok"] and result["error"]["errno"] == 22
        assert "expired" in result["error"]["message"]

        await until(lambda: sweeper.service.status()["expired_ranges"] == 0, "the forget")
        st = sweeper.service.status()
        assert (st["swept_total"], st["swept_bytes_total"]) == (2, 2 * len(b"uncommitted"))
        assert (st["expired_ids_total"], st["pending_ids"], st["delete_errors_total"]) == (1, 0, 0)
        listing = st["listing"]
        assert (listing["live_blocks"], listing["unreferenced_blocks"]) == (2, 2)
        assert (listing["uncommitted_blocks"], listing["foreign_keys"]) == (0, 1)
        assert st["sweeping"] is True and st["last_error"] is None
    finally:
        await sweeper.stop()
    # No record names a swept block: the only expire records name the dead id.
    expires = [r for r in src.state.recent if r.op == "expire_slices"]
    assert [e for r in expires for e in r.effect["expired"]] == [[dead, dead + 1]]


async def _gone(store: ObjectStore, sid: int) -> bool:
    return not (await keys(store)) & set(slice_block_keys(sid, TWO_BLOCKS))


async def test_an_upload_in_flight_is_never_swept_within_its_grace(
    tmp_path: Path, any_store: ObjectStore
) -> None:
    src = Source(tmp_path / "node", any_store)
    sweeper = Sweeping(src, grace_s=1.5)
    try:
        sid, reserved_ts = await abandon(src)
        while now_ms() < reserved_ts + 1200:
            await sweeper.passes(1)
            assert not await _gone(any_store, sid), "swept inside the grace"
        assert sweeper.service.status()["listing"]["uncommitted_blocks"] == 2
        assert sweeper.service.status()["oldest_pending_age_s"] >= 1.2
        # The client commits in time: the slice is live and stays.
        src.op("create", path="/f", mode=0o644)
        assert late_write(src, "/f", sid)["ok"]
        await sweeper.passes(3)
        assert await src.exists(sid) == [True, True]
        assert sweeper.submitted == [], "nothing was due to expire"
    finally:
        await sweeper.stop()


async def test_only_the_leader_expires_and_deletes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bucket", fsync=False)
    src = Source(tmp_path / "node", store)
    leader = False
    sid, _ = await abandon(src)
    sweeper = Sweeping(src, grace_s=0.1, leader=lambda: leader)
    try:
        await asyncio.sleep(0.3)
        assert sweeper.service.passes == 0 and sweeper.submitted == []
        assert await src.exists(sid) == [True, True]
        st = sweeper.service.status()
        assert (st["sweeping"], st["pending_ids"], st["listing"]) == (False, 1, None)
        leader = True
        await until_async(lambda: _gone(store, sid), "the new leader's sweep")
    finally:
        await sweeper.stop()


async def test_a_failed_delete_keeps_the_id_expired_until_it_succeeds(tmp_path: Path) -> None:
    plan = FaultPlan()
    plan.fail("delete", UnavailableError("injected outage", op="delete"))
    store = LocalStore(tmp_path / "bucket", fsync=False)
    src = Source(tmp_path / "node", store)
    sid, _ = await abandon(src)
    sweeper = Sweeping(src, grace_s=0.05, store=FaultLayer(store, plan))
    try:
        await until_async(lambda: _gone(store, sid), "the retried delete")
        await until(lambda: sweeper.service.status()["expired_ranges"] == 0, "the forget")
        st = sweeper.service.status()
        assert (st["delete_errors_total"], st["swept_total"]) == (1, 2)
        assert "injected outage" in (st["last_error"] or "")
        forgets = [op["args"]["forget"] for op in sweeper.submitted if op["args"]["forget"]]
        assert forgets == [[[sid, sid + 1]]], "forgotten only once every block was gone"
    finally:
        await sweeper.stop()


async def test_expired_ids_outlive_a_crash_between_expiry_and_deletes(tmp_path: Path) -> None:
    """A leader committed the expiry and died before deleting: the next sweeper deletes."""
    store = LocalStore(tmp_path / "bucket", fsync=False)
    src = Source(tmp_path / "node", store)
    sid, reserved_ts = await abandon(src)
    src.op("expire_slices", before_ts=reserved_ts)
    assert src.state.ns.tables.pending.is_expired(sid)
    sweeper = Sweeping(src, grace_s=3600)  # nothing new is due: only the expired id goes
    try:
        await until_async(lambda: _gone(store, sid), "the next leader's deletes")
        await until(lambda: sweeper.service.status()["expired_ranges"] == 0, "the forget")
    finally:
        await sweeper.stop()
