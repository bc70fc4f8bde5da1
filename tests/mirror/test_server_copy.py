"""The replicator with `copy_mode = "server"`, against real SeaweedFS buckets: the mirror's
endpoint copies each block itself and the bytes never pass through the copier, yet a block is
marked copied only once its copy matches the recorded xxh3; a corrupt or vanished source block
fails with its reason as in a client copy; an endpoint that cannot do it falls back to GET+PUT."""

from __future__ import annotations

from collections.abc import Callable

from mirror.db import Database
from mirror.replicate.queue import SOURCE_CORRUPT, SOURCE_MISSING
from mirror.replicate.replicator import Replicator, ReplicatorConfig
from objstore import ObjectStore, open_store
from objstore.keys import BLOCK_PREFIX
from tests.mirror.volume import (
    SMALL,
    CountingLayer,
    KiB,
    MiB,
    Volume,
    all_copied,
    assert_mirror_holds_exactly,
    bucket_on,
    running,
    states,
    wait_until,
)
from tests.servers.seaweed import SeaweedServer

SERVER = ReplicatorConfig(concurrency=4, server_side=True)


async def test_blocks_are_copied_by_the_server_and_verified(
    db: Database, source: ObjectStore, mirror: ObjectStore
) -> None:
    vol = Volume(db, source)
    await vol.files("/a", 24, [*SMALL, 4 * MiB])
    counted = CountingLayer(source)
    rep = Replicator(db, counted, mirror, SERVER)
    async with running(rep):
        await wait_until("every block is copied", lambda: all_copied(db))
        status = rep.process_status()
    assert counted.gets == {}, "no block's bytes came through the copier from the source"
    assert status["copy_server_side"] is True
    assert status["blocks_server_copied_since_start"] == len(vol.blocks)
    await assert_mirror_holds_exactly(mirror, vol.blocks)


async def test_a_corrupt_source_block_is_failed_and_not_left_in_the_mirror(
    db: Database, source: ObjectStore, mirror: ObjectStore
) -> None:
    """The etag of the copy matches the source object's, but the source object is not the
    block the changelog recorded: the read-back check catches it, as a client copy would."""
    vol = Volume(db, source)
    bad, *_ = await vol.files("/a", 4, [50 * KiB])
    await source.put(bad.key, bytes(len(bad.data)))
    counted = CountingLayer(source)
    rep = Replicator(db, counted, mirror, SERVER)
    async with running(rep):

        async def settled() -> bool:
            return await states(db) == {"copied": 3, "failed": 1}

        await wait_until("the corrupt block is failed", settled)
    async with db.acquire() as conn:
        error = await conn.fetchval("SELECT last_error FROM blocks WHERE state = 'failed'")
    assert error.startswith(f"{SOURCE_CORRUPT}: ") and "does not match" in error
    assert counted.gets[bad.key] == 3, "then read through the copier, as in a client copy"
    assert bad.key not in [m.key async for m in mirror.list(BLOCK_PREFIX)], "bad bytes kept"
    assert rep.copier.server_copies == 3


async def test_a_vanished_source_block_fails_with_the_reason(
    db: Database, source: ObjectStore, mirror: ObjectStore
) -> None:
    vol = Volume(db, source)
    gone, *_ = await vol.files("/a", 6, [50 * KiB])
    await source.delete(gone.key)
    rep = Replicator(db, source, mirror, SERVER)
    async with running(rep):

        async def settled() -> bool:
            return await states(db) == {"copied": 5, "failed": 1}

        await wait_until("all but the missing block are copied", settled)
    async with db.acquire() as conn:
        error = await conn.fetchval("SELECT last_error FROM blocks WHERE state = 'failed'")
    assert error.startswith(f"{SOURCE_MISSING}: ") and gone.key in error


async def test_an_endpoint_that_cannot_copy_falls_back_to_get_and_put(
    db: Database, source: ObjectStore, seaweed_factory: Callable[[], SeaweedServer]
) -> None:
    server = seaweed_factory()  # another cluster: it does not see the source bucket
    with bucket_on(server) as name:
        mirror = await open_store(f"s3://{name}?endpoint={server.endpoint}", name="mirror")
        try:
            vol = Volume(db, source)
            await vol.files("/a", 12, SMALL)
            counted = CountingLayer(source)
            rep = Replicator(db, counted, mirror, SERVER)
            async with running(rep):
                await wait_until("every block is copied", lambda: all_copied(db))
            assert rep.process_status()["copy_server_side"] is False, "asked, refused, stopped"
            assert rep.copier.server_copies == 0
            assert sum(counted.gets.values()) == len(vol.blocks)
            await assert_mirror_holds_exactly(mirror, vol.blocks)
        finally:
            await mirror.aclose()
