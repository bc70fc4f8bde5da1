"""Writes from a mirror region with `copy_writes`: a real one-node source, a real region daemon
(copying paused, so only the writer can make a block 'copied'), clients from cli/connect.py.

Claims checked: a put from the region leaves every block in the region's bucket, marked copied
once the replica shows the commit, so a reader there gets them from the mirror bucket without
any fallback; a mirror PUT that fails costs nothing but that block's copy (the put succeeds,
the block stays pending for the replicator, and reads are byte-identical through fallback);
with the follower stopped, the put waits for the replica once, then returns, its blocks left
pending; without `copy_writes` the client copies nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cli.connect import open_client
from fallback import ConsistencyGate, FallbackBlocks, FsClient, MirrorCopy
from mirror import CopyQueue
from objstore import open_store
from objstore.errors import UnavailableError
from objstore.faults import FaultLayer, FaultPlan
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from tests.mirror.waits import wait_following
from volume.config import load_config, write_config
from volume.inode import BLOCK_SIZE


async def block_states(region: MirrorRegion) -> dict[tuple[int, int], str]:
    async with region.database() as db, db.acquire() as conn:
        rows = await conn.fetch("SELECT slice_id, idx, state FROM blocks")
    return {(r["slice_id"], r["idx"]): r["state"] for r in rows}


def read_counters(fs: FsClient) -> tuple[int, int]:
    """(mirror hits, fallback reads) of a client's block reads."""
    assert isinstance(fs.blocks, FallbackBlocks)
    return fs.blocks.counters.mirror_hits, fs.blocks.counters.fallback_reads


async def test_copy_writes_leave_the_blocks_in_the_region_marked_copied(
    tmp_path: Path, pg_dsn: str
) -> None:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        region = MirrorRegion(cluster, "eu", pg_dsn)
        await region.create()
        plain = load_config(cluster.config_path)
        async with await open_client(plain, "eu", uid=0, gid=0) as fs:
            assert fs.mirror_copy is None  # off by default
        mirrors = {"eu": plain.mirror("eu").model_copy(update={"copy_writes": True})}
        write_config(plain.model_copy(update={"mirrors": mirrors}), cluster.config_path)
        cfg = load_config(cluster.config_path)
        async with region.database() as db:
            await CopyQueue(db).set_paused(True)
        region.start()
        try:
            await wait_following(region)
            data = os.urandom(2 * BLOCK_SIZE + 5)
            async with await open_client(cfg, "eu", uid=0, gid=0) as fs:
                assert fs.mirror_copy is not None
                await fs.write_file("/cw/a.bin", data)
                states = await block_states(region)
                # Marked as the put returned: the replicator is paused and never ran.
                assert sorted(states.values()) == ["copied"] * 3, states

                # A mirror PUT that fails: the put still succeeds; that block stays pending.
                plan = FaultPlan()
                plan.fail("put", UnavailableError("injected", op="put", key="?"))
                copy = fs.mirror_copy
                fs.mirror_copy = MirrorCopy(FaultLayer(copy.store, plan), copy.region, copy.settle)
                data2 = os.urandom(BLOCK_SIZE + 1)
                await fs.write_file("/cw/b.bin", data2)
            states = await block_states(region)
            assert sorted(states.values()) == ["copied"] * 4 + ["pending"], states

            mirror_bucket = await open_store(cfg.mirror("eu").bucket, name="test")
            try:
                keys = [m.key async for m in mirror_bucket.list("blocks/")]
            finally:
                await mirror_bucket.aclose()
            assert len(keys) == 4  # the three of a.bin and the one of b.bin that landed

            async with await open_client(cfg, "eu", uid=0, gid=0) as reader:
                assert await reader.read_file("/cw/a.bin") == data
                assert read_counters(reader) == (3, 0)  # all from the mirror bucket
                assert await reader.read_file("/cw/b.bin") == data2
                assert read_counters(reader) == (4, 1)  # the block whose copy failed: fallback

            # The follower stopped: the put waits for the replica once (not once for its
            # marks and again for its return), warns, and returns; its blocks stay the
            # replicator's (the marks found no rows), and nothing is lost.
            region.stop()
            async with await open_client(cfg, "eu", uid=0, gid=0) as fs:
                assert isinstance(fs.gate, ConsistencyGate)
                fs.gate.settle_timeout_s, fs.gate.wait_s = 1.5, 1.0
                data3 = os.urandom(BLOCK_SIZE)
                started = time.monotonic()
                await fs.write_file("/cw/c.bin", data3)
                assert 1.4 < time.monotonic() - started < 2.3
            region.start()
            await wait_following(region)
            states = await block_states(region)
            # b.bin's failed copy was written back by the read above (fallback/fetch.py).
            assert sorted(states.values()) == ["copied"] * 5 + ["pending"], states
            async with await open_client(cfg, "eu", uid=0, gid=0) as reader:
                assert await reader.read_file("/cw/c.bin") == data3
                # Pending, but its copy is in the mirror bucket: found there, no source GET.
                assert read_counters(reader) == (1, 0)
        finally:
            region.stop()
