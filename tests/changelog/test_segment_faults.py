"""A full disk under a node's changelog stops that node loudly; no mirror spins on it.

Each node's changelog directory is its own small tmpfs, so ENOSPC is real: the leader's is
filled with ballast while a mirror streams from it and writes go on. The node must exit
(EX_IOERR, with the reason in its log) rather than go on committing with a changelog that no
longer grows; the other two keep the quorum, and the mirror switches node and ends equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from changelog.api import build_app
from changelog.node import EXIT_IO_FATAL, SourceNode
from changelog.raft.state import RECENT_RECORDS
from cli.source import free_ports, new_volume
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, make_files
from volume.config import load_config, write_config

TMPFS_BYTES = 4 * 1024 * 1024


@contextlib.contextmanager
def tmpfs(directory: Path, size_bytes: int) -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> None:
    """Write ballast until the filesystem is full."""
    with open(directory / "ballast", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


async def test_enospc_on_the_leaders_changelog_stops_it_and_the_mirror_ends_equal(
    tmp_path: Path, pg_dsn: str
) -> None:
    cluster = SourceCluster(tmp_path / "vol", segment_bytes=256 * 1024)
    with contextlib.ExitStack() as mounts:
        for i in cluster.node_ids:
            mounts.enter_context(
                tmpfs(cluster.directory / cluster.cfg.node(i).data_dir / "changelog", TMPFS_BYTES)
            )
        cluster.start_all()
        region = MirrorRegion(cluster, "eu", pg_dsn)
        try:
            leader = await cluster.wait_leader()
            await region.create()
            region.start()
            await make_files(cluster, "before", 200)
            await region.assert_equal_to_source()

            fill(cluster.directory / cluster.cfg.node(leader).data_dir / "changelog")
            deadline = time.monotonic() + 60
            batch = 0
            while cluster.procs[leader].poll() is None:
                assert time.monotonic() < deadline, "the node went on with a full changelog disk"
                await make_files(cluster, f"during{batch}", 50)
                batch += 1
            assert cluster.procs[leader].returncode == EXIT_IO_FATAL
            log = cluster.log_tail(leader, 40)
            assert "changelog.segment_write_failed" in log and "ENOSPC" in log, log

            await make_files(cluster, "after", 100)  # the other two carry on
            await region.assert_equal_to_source()
            assert region.proc is not None and region.proc.poll() is None
        finally:
            region.stop()
            cluster.kill_all()


async def test_a_record_applied_but_not_servable_is_503_never_a_spin(tmp_path: Path) -> None:
    """In-process node whose segment writer failed (the exit replaced by a flag, as the
    journal tests replace theirs): the stream answers 503 for a record beyond its in-memory
    tail instead of waiting forever for segments that will never hold it."""
    (tmp_path / "vol").mkdir()
    cfg = new_volume(tmp_path / "vol", nodes=1, bucket=None, name="solo")
    write_config(cfg, tmp_path / "vol" / "mirrorfs.toml")
    cfg = load_config(tmp_path / "vol" / "mirrorfs.toml")
    changelog_dir = cfg.resolve(cfg.node(1).data_dir) / "changelog"
    with tmpfs(changelog_dir, 1024 * 1024):
        node = await asyncio.to_thread(SourceNode, cfg, 1)
        failed: list[Exception] = []
        node._on_fatal = failed.append
        node.bind_loop(asyncio.get_running_loop())
        runner = web.AppRunner(build_app(node))
        await runner.setup()
        port = free_ports(1)[0]
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            deadline = time.monotonic() + 30
            while not node.raft.is_leader:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            fill(changelog_dir)
            for start in range(0, RECENT_RECORDS + 2_000, 2_000):
                ops = [
                    {"op": "mkdir", "args": {"path": f"/d{i}", "mode": 0o755, "uid": 0, "gid": 0}}
                    for i in range(start, start + 2_000)
                ]
                await node.raft.submit(None, ops)
            assert failed and node.segment_error, "the segment writer did not hit ENOSPC"
            headers = {"Authorization": f"Bearer {cfg.token}"}
            async with (
                aiohttp.ClientSession(headers=headers) as http,
                http.get(
                    f"http://127.0.0.1:{port}/v1/changelog",
                    params={"from": "1"},
                    timeout=aiohttp.ClientTimeout(total=20),  # a spin would time out here
                ) as resp,
            ):
                body = await resp.json()
            assert resp.status == 503, body
            assert body["error"] == "ChangelogUnavailableError" and "ENOSPC" in body["message"]
        finally:
            await runner.cleanup()
            await asyncio.to_thread(node.close)
