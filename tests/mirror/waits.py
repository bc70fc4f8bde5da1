"""Helpers for tests that drive mirror regions as a user would: the `mirrorfs` command as a
process, a region daemon's status over HTTP (with its status code), waits with deadlines, and a
look at an embedded PostgreSQL's postmaster.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion


def mirrorfs(
    config: Path, *args: str, check: bool = True, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `mirrorfs --config CONFIG ARGS...` to the end; `check`: it must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "MIRRORFS_LOG": "warning"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mirrorfs {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def start_mirrorfs(config: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """`mirrorfs --config CONFIG ARGS...` as a running process, its output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "--config", str(config), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MIRRORFS_LOG": "info"},
        )


async def http_status(api: str, token: str) -> tuple[int, dict[str, Any] | bytes]:
    """(HTTP status, JSON document or the raw body if it is not JSON) of GET /v1/status."""
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers, timeout=timeout) as s,
        s.get(f"{api.rstrip('/')}/v1/status") as resp,
    ):
        body = await resp.read()
        try:
            return resp.status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return resp.status, body


async def wait_status(
    region: MirrorRegion,
    ok: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """The daemon's status document once `ok(document)`; fails with the last answer and the
    daemon's log at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    token = region.cluster.cfg.token
    while True:
        try:
            code, doc = await http_status(region.api, token)
            last = (code, doc)
            if code == 200 and isinstance(doc, dict) and ok(doc):
                return doc
        except (aiohttp.ClientError, TimeoutError) as exc:  # not listening (yet)
            last = exc
        if time.monotonic() > deadline:
            tail = region.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"timed out waiting until {what}; last: {last}\n{tail}")
        await asyncio.sleep(0.1)


async def wait_following(region: MirrorRegion, version: int = 0, timeout_s: float = 60.0) -> None:
    """Until the daemon says `following` and has applied at least `version`."""
    await wait_status(
        region,
        lambda st: st["state"] == "following" and st["applied_version"] >= version,
        f"{region.name} follows at version >= {version}",
        timeout_s,
    )


async def source_head(cluster: SourceCluster) -> int:
    async with cluster.client() as c:
        return int((await c.status(cluster.api(1)))["applied_version"])


def embedded_pg_dir(cluster: SourceCluster, name: str) -> Path:
    return cluster.config_path.parent / "mirrors" / name / "pg"


def postmaster(data_dir: Path) -> int | None:
    """The pid of a live (not zombie) postmaster of `data_dir`, or None."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return pid
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
        pass
    return None


def wait_gone(pid: int, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
