"""The region daemon copies blocks; the operator verbs act on it while it runs."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fallback.client import FsClient
from objstore import open_store
from objstore.keys import BLOCK_PREFIX
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from tests.test_cli import mfs
from volume.config import load_config


@pytest.fixture
async def region(tmp_path: Path, pg_dsn: str) -> AsyncIterator[MirrorRegion]:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        r = MirrorRegion(cluster, "eu", pg_dsn)
        await r.create()
        r.start()
        try:
            yield r
        finally:
            r.kill()


async def wait_status(
    r: MirrorRegion, pred: Any, what: str, timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            st = await r.status()
            if pred(st):
                return st
        except Exception:
            st = {}
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {st}"
        await asyncio.sleep(0.2)


async def test_blocks_copied_verified_and_repaired(region: MirrorRegion) -> None:
    cfg_path = region.cluster.config_path
    cfg = load_config(cfg_path)
    async with await FsClient.for_source(cfg, uid=0, gid=0) as fs:
        await fs.mkdir("/m")
        for i in range(3):
            await fs.put(io.BytesIO(os.urandom(5_000_000 + i)), f"/m/f{i}")  # type: ignore[arg-type]
    st = await wait_status(
        region, lambda s: s.get("blocks_pending") == 0 and s.get("applied_version", 0) > 5, "copies"
    )
    assert st["blocks_failed"] == 0 and "copy_blocks_per_s" in st and st["paused"] is False
    ok = mfs("mirror", "verify", "eu", "--json", config=cfg_path)
    report = orjson.loads(ok.stdout)
    assert report["ok"] and report["blocks_checked"] == 6

    mirror = await open_store(cfg.mirror("eu").bucket)
    keys = sorted([m.key async for m in mirror.list(BLOCK_PREFIX)])
    assert len(keys) == 6
    bad = bytearray(await mirror.get(keys[0]))
    bad[10] ^= 0xFF
    await mirror.put(keys[0], bytes(bad))
    await mirror.delete(keys[1])
    found = mfs("mirror", "verify", "eu", config=cfg_path, check=False)
    assert found.returncode == 1
    assert keys[0].encode() in found.stdout and keys[1].encode() in found.stdout
    fixed = mfs("mirror", "verify", "eu", "--repair", config=cfg_path, check=False)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert mfs("mirror", "verify", "eu", config=cfg_path, check=False).returncode == 0
    await mirror.aclose()


async def test_pause_resume_and_warmup(region: MirrorRegion) -> None:
    cfg_path = region.cluster.config_path
    cfg = load_config(cfg_path)
    mfs("mirror", "pause", "eu", config=cfg_path)
    await wait_status(region, lambda s: s.get("paused") is True, "paused")
    async with await FsClient.for_source(cfg, uid=0, gid=0) as fs:
        await fs.mkdir("/w")
        await fs.put(io.BytesIO(os.urandom(3_000_000)), "/w/a")  # type: ignore[arg-type]
    st = await wait_status(region, lambda s: s.get("blocks_pending") == 1, "pending while paused")
    await asyncio.sleep(2.0)
    assert (await region.status())["blocks_pending"] == 1, "copied while paused"
    mfs("mirror", "resume", "eu", config=cfg_path)
    out = mfs("mirror", "warmup", "eu", "/w", config=cfg_path)
    assert b"/w" in out.stdout
    st = await wait_status(region, lambda s: s.get("blocks_pending") == 0, "copied after resume")
    assert st["paused"] is False
    assert b"re-queued" in mfs("mirror", "retry", "eu", config=cfg_path).stdout
