"""`verify` against real buckets: a missing or corrupt block in the mirror bucket is found (with
its path), repaired from the source with `repair`, and an unrepairable one goes back to the
copy queue with the reason."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator

import pytest

from mirror.db import Database
from mirror.replicate.queue import SOURCE_MISSING
from mirror.replicate.replicator import Replicator, ReplicatorConfig
from mirror.replicate.verify import CORRUPT, MISSING, verify
from objstore import ObjectStore, open_store
from tests.mirror.volume import (
    SMALL,
    Volume,
    all_copied,
    assert_mirror_holds_exactly,
    bucket_on,
    running,
    states,
    wait_until,
)
from tests.servers.seaweed import SeaweedServer
from volume.errors import FsError

KiB = 1024


@pytest.fixture
async def src(s3_url: str) -> AsyncIterator[ObjectStore]:
    store = await open_store(s3_url, name="source")
    yield store
    await store.aclose()


@pytest.fixture
async def dst(seaweed: SeaweedServer) -> AsyncIterator[ObjectStore]:
    with bucket_on(seaweed) as name:
        store = await open_store(f"s3://{name}?endpoint={seaweed.endpoint}", name="mirror")
        yield store
        await store.aclose()


async def copied_volume(db: Database, src: ObjectStore, dst: ObjectStore) -> Volume:
    """/a (6 files) and /b (4 files) written and fully copied to the mirror."""
    vol = Volume(db, src)
    await vol.files("/a", 6, SMALL)
    await vol.files("/b", 4, [70 * KiB])
    async with running(Replicator(db, src, dst, ReplicatorConfig(concurrency=4))):
        await wait_until("every block is copied", lambda: all_copied(db))
    return vol


async def test_a_complete_mirror_verifies_clean(
    db: Database, src: ObjectStore, dst: ObjectStore
) -> None:
    vol = await copied_volume(db, src, dst)
    report = await verify(db, dst, None, repair=False)
    assert report.is_ok and report.problems == []
    assert report.blocks_checked == len(vol.blocks) == 10
    assert report.bytes_checked == sum(len(b.data) for b in vol.blocks.values())


async def test_missing_and_corrupt_blocks_are_found_then_repaired(
    db: Database, src: ObjectStore, dst: ObjectStore
) -> None:
    vol = await copied_volume(db, src, dst)
    blocks = sorted(vol.blocks.values(), key=lambda b: b.slice_id)
    gone, flipped, short = blocks[0], blocks[1], blocks[7]
    await dst.delete(gone.key)
    await dst.put(flipped.key, bytes([flipped.data[0] ^ 1]) + flipped.data[1:])
    await dst.put(short.key, short.data[:-1])
    pending = await vol.files("/new", 2, [10])  # not copied yet: counted, not a problem

    report = await verify(db, dst, None, repair=False)
    assert not report.is_ok
    assert [p.key for p in report.missing] == [gone.key]
    assert sorted(p.key for p in report.corrupt) == sorted([flipped.key, short.key])
    assert report.missing[0].paths == ("/a/f0",)
    assert report.blocks_not_copied == len(pending) == 2
    assert report.blocks_checked == 10
    assert report.repaired == []
    assert [m.key async for m in dst.list(gone.key)] == [], "verify alone writes nothing"

    fixed = await verify(db, dst, None, repair=True, source_store=src)
    assert fixed.is_ok
    assert sorted(p.key for p in fixed.repaired) == sorted([gone.key, flipped.key, short.key])
    assert {p.problem for p in fixed.problems} == {MISSING, CORRUPT}
    again = await verify(db, dst, None, repair=False)
    assert again.is_ok and again.problems == []
    copied = {k: b for k, b in vol.blocks.items() if b not in pending}
    await assert_mirror_holds_exactly(dst, copied)


async def test_verify_under_a_path_checks_only_its_files(
    db: Database, src: ObjectStore, dst: ObjectStore
) -> None:
    vol = await copied_volume(db, src, dst)
    in_a = min(vol.blocks.values(), key=lambda b: b.slice_id)
    in_b = max(vol.blocks.values(), key=lambda b: b.slice_id)
    await dst.delete(in_a.key)
    await dst.delete(in_b.key)
    report = await verify(db, dst, "/b", repair=False)
    assert report.blocks_checked == 4
    assert [p.key for p in report.problems] == [in_b.key]
    assert report.problems[0].paths == ("/b/f3",)
    one = await verify(db, dst, "/b/f3", repair=False)
    assert one.blocks_checked == 1 and [p.key for p in one.problems] == [in_b.key]
    with pytest.raises(FsError) as info:
        await verify(db, dst, "/nope", repair=False)
    assert info.value.errno == errno.ENOENT


async def test_unrepairable_block_goes_back_to_the_queue_with_the_reason(
    db: Database, src: ObjectStore, dst: ObjectStore
) -> None:
    vol = await copied_volume(db, src, dst)
    lost = next(iter(vol.blocks.values()))
    await dst.delete(lost.key)
    await src.delete(lost.key)
    report = await verify(db, dst, None, repair=True, source_store=src)
    assert not report.is_ok
    (problem,) = report.unrepaired
    assert problem.key == lost.key and problem.repair_error is not None
    assert SOURCE_MISSING in problem.repair_error
    async with db.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state, last_error FROM blocks WHERE slice_id = $1 AND idx = $2",
            lost.slice_id,
            lost.idx,
        )
    assert row["state"] == "pending", "readers must fall back to the source for it"
    assert "found by verify" in row["last_error"]
    async with running(Replicator(db, src, dst, ReplicatorConfig(concurrency=2))):

        async def failed_for_good() -> bool:
            return (await states(db)).get("failed") == 1

        await wait_until("the replicator fails it with the reason", failed_for_good)


async def test_repair_needs_a_source(db: Database, dst: ObjectStore) -> None:
    with pytest.raises(ValueError, match="source"):
        await verify(db, dst, None, repair=True)
