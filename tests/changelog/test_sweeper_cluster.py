"""End to end: a client killed with -9 between upload and commit leaves blocks that the source
leader's upload sweeper removes after the grace; nothing live is swept, nor the GC barrier's
garbage; the dead client's slice ids can no longer be committed; `source status --json` says
what was held and swept. Real Raft node processes, a real client process, a file:// bucket (the
sweeper's bucket paths also run on SeaweedFS in test_sweeper.py)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from fallback import FsClient
from objstore import open_store
from objstore.keys import BLOCK_PREFIX, parse_block_key
from tests.changelog.cluster import SourceCluster
from tests.test_cli import mfs
from volume.config import load_config
from volume.errors import BadRequestError

GRACE_S = 2.0


async def test_a_client_killed_between_upload_and_commit_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    async with SourceCluster.running(tmp_path / "vol", nodes=3, upload_grace_s=GRACE_S) as c:
        cfg = load_config(c.config_path)
        store = await open_store(cfg.source.bucket, name="test")
        fs = await FsClient.for_source(cfg, uid=0, gid=0)
        proc: subprocess.Popen[bytes] | None = None
        try:
            live = os.urandom(5 * 1024 * 1024)
            await fs.put(io.BytesIO(live), "/data/live.bin")  # type: ignore[arg-type]
            await fs.put(io.BytesIO(b"old" * 1000), "/data/over.bin")  # type: ignore[arg-type]
            await fs.put(io.BytesIO(b"new"), "/data/over.bin")  # type: ignore[arg-type]
            # The overwritten slice is garbage behind the GC barrier (gc_grace_s is an hour).
            before = {m.key async for m in store.list(BLOCK_PREFIX)}
            assert len(before) == 2 + 1 + 1

            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.changelog.put_and_hang", str(c.config_path),
                 "/data/victim.bin"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while len(orphans := {m.key async for m in store.list(BLOCK_PREFIX)} - before) < 2:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                assert time.monotonic() < deadline, "the client never uploaded"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            killed_at = time.time()
            dead_id = min(parse_block_key(k)[0] for k in orphans)

            held = False
            while {m.key async for m in store.list(BLOCK_PREFIX)} != before:
                statuses = await c.statuses()
                leader = [s for s in statuses.values() if s["role"] == "leader"]
                listing = leader[0]["sweeper"]["listing"] if leader else None
                held = held or bool(listing and listing["uncommitted_blocks"] == 2)
                assert time.monotonic() < deadline + 60, "the sweeper never removed them"
                await asyncio.sleep(0.1)
            assert time.time() - killed_at < 30
            assert held, "status never showed the uncommitted blocks it held"
            assert {m.key async for m in store.list(BLOCK_PREFIX)} == before, "live went too"
            assert await fs.cat("/data/live.bin") == live
            assert await fs.cat("/data/over.bin") == b"new"
            assert sorted([n async for n, _ in fs.ls("/data")]) == ["live.bin", "over.bin"]

            # The dead client's commit, arriving late, is refused: no record names its blocks.
            late = {
                "path": "/data/over.bin", "chunk_index": 0, "pos": 0, "slice_id": dead_id,
                "size": 4 * 1024 * 1024, "checksums": ["xxh3:0000000000000000"],
            }  # fmt: skip
            res = await fs.source.ops([{"op": "write", "args": late}])
            assert not res.results[0]["ok"] and res.results[0]["error"]["errno"] == 22
            with pytest.raises(BadRequestError, match="not allowed"):  # the sweeper's op only
                await fs.source.ops([{"op": "expire_slices", "args": {"before_ts": 0}}])
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            await fs.aclose()
            await store.aclose()

        status = orjson.loads(mfs("source", "status", "--json", config=c.config_path).stdout)
        sweepers = {s["role"]: s["sweeper"] for s in status}
        leader = sweepers["leader"]
        assert (leader["swept_total"], leader["swept_bytes_total"]) == (2, 8 * 1024 * 1024)
        assert leader["expired_ids_total"] >= 2 and leader["sweeping"] is True
        assert leader["pending_ids"] == 0 and leader["listing"]["live_blocks"] == 3
        assert leader["listing"]["unreferenced_blocks"] == 1  # the GC barrier's
        assert all(s["grace_s"] == GRACE_S for s in sweepers.values())
