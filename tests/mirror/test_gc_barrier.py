"""End to end: garbage blocks leave the source bucket only after every mirror acked + grace."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

from fallback.client import FsClient
from objstore import open_store
from objstore.keys import BLOCK_PREFIX, slice_block_keys
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from volume.config import load_config


async def block_keys(fs: FsClient) -> set[str]:
    return {m.key async for m in fs.store.list(BLOCK_PREFIX)}


async def wait_until(cond, timeout_s: float = 60, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await cond():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.2)


async def test_offline_mirror_holds_source_gc_until_it_acks_or_is_removed(
    tmp_path: Path, pg_dsn: str
) -> None:
    cluster = SourceCluster(tmp_path / "vol", nodes=1, gc_grace_s=1.0)
    cluster.start_all()
    region = MirrorRegion(cluster, "eu", pg_dsn)
    try:
        await cluster.wait_leader()
        await region.create()  # registered, but its daemon is not running: it never acks
        cfg = load_config(cluster.config_path)
        async with await FsClient.for_source(cfg, uid=0, gid=0) as fs:
            await fs.put(io.BytesIO(os.urandom(5_000_000)), "/a")  # type: ignore[arg-type]
            await fs.put(io.BytesIO(os.urandom(1_000)), "/b")  # type: ignore[arg-type]
            old = await block_keys(fs)
            assert len(old) == 3
            await fs.put(io.BytesIO(b"new"), "/a")  # type: ignore[arg-type]  # overwrite
            await fs.rm("/b")  # delete
            garbage = old - await _live_keys(fs)
            assert len(garbage) == 3

            async def held() -> bool:
                st = await fs.source.status(cluster.api(1))
                return "eu" in ((st.get("gc") or {}).get("held_by") or {})

            await wait_until(held, what="status names the mirror holding GC")
            await asyncio.sleep(3.0)  # well past the grace: still held by the silent mirror
            assert garbage <= await block_keys(fs), "deleted before the mirror acked"

            region.start()  # the daemon acks what it applied; the barrier passes

            async def gone() -> bool:
                return not (garbage & await block_keys(fs))

            await wait_until(gone, what="garbage deleted after the ack")
            assert await fs.cat("/a") == b"new"
            region.stop()

            await fs.put(io.BytesIO(os.urandom(2_000)), "/c")  # type: ignore[arg-type]
            before = await block_keys(fs)
            await fs.rm("/c")
            garbage = before - await _live_keys(fs)
            await asyncio.sleep(3.0)
            assert garbage <= await block_keys(fs), "deleted while the mirror was offline"
            await fs.source.mirror("eu", "remove")  # removing the mirror releases its hold
            await wait_until(gone, what="garbage deleted after the mirror was removed")
    finally:
        region.kill()
        cluster.kill_all()


async def _live_keys(fs: FsClient) -> set[str]:
    """Block keys of every file in the root directory (all fit in chunk 0 here)."""
    keys: set[str] = set()
    async for _, attr in fs.ls("/"):
        if attr.is_file and attr.size:
            for ref in (await fs.view.chunk(attr.ino, 0)).slices:
                keys |= set(slice_block_keys(ref.id, ref.size))
    return keys


async def test_overwritten_blocks_leave_both_buckets(tmp_path: Path, pg_dsn: str) -> None:
    async with SourceCluster.running(tmp_path / "vol", nodes=1, gc_grace_s=1.0) as cluster:
        region = MirrorRegion(cluster, "eu", pg_dsn)
        await region.create()
        region.start()
        try:
            cfg = load_config(cluster.config_path)
            mirror = await open_store(cfg.mirror("eu").bucket)
            async with await FsClient.for_source(cfg, uid=0, gid=0) as fs:
                await fs.put(io.BytesIO(os.urandom(6_000_000)), "/f")  # type: ignore[arg-type]
                old = await block_keys(fs)

                async def copied() -> bool:
                    return old <= {m.key async for m in mirror.list(BLOCK_PREFIX)}

                await wait_until(copied, what="blocks copied to the mirror")
                await fs.put(io.BytesIO(b"small"), "/f")  # type: ignore[arg-type]
                new = await _live_keys(fs)

                async def collected() -> bool:
                    in_mirror = {m.key async for m in mirror.list(BLOCK_PREFIX)}
                    return not (old & await block_keys(fs)) and not (old & in_mirror)

                await wait_until(collected, what="old blocks deleted from both buckets")
                assert new <= await block_keys(fs)
                assert await fs.cat("/f") == b"small"
            await mirror.aclose()
        finally:
            region.kill()
