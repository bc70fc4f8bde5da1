"""Who starts and who stops a region's embedded PostgreSQL: the daemon owns it while it runs,
no command stops it under the daemon, the last clean user stops it, whoever started it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from mirror.daemon import run_region
from mirror.db import Database, open_database
from mirror.embedded import ServerState, attach_embedded, live_users, postmaster_pid, server_state
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, make_files
from tests.mirror.waits import (
    embedded_pg_dir,
    postmaster,
    source_head,
    start_mirrorfs,
    wait_following,
    wait_gone,
)
from volume.config import load_config, write_config


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        yield cluster


async def test_a_command_never_stops_the_server_under_a_daemon(source: SourceCluster) -> None:
    """Regression: a verb (here: any user of open_database, as `mirror pause` or `verify`)
    that started the server before the daemon came stopped it when it finished, under the
    daemon, which never recovered (status 500, nothing applied)."""
    region = MirrorRegion(source, "eu", "")
    pg_dir = embedded_pg_dir(source, "eu")
    await make_files(source, "a", 20)
    await region.create()
    assert postmaster(pg_dir) is None, "create left its server running"
    try:
        async with open_database(load_config(source.config_path).mirror_region("eu")):
            started = postmaster(pg_dir)
            assert started is not None  # this "verb" started it: no one ran it
            region.start()
            await wait_following(region, await source_head(source))
        # The verb is done; the daemon still runs on the server, and keeps following.
        assert postmaster(pg_dir) == started
        version = await make_files(source, "b", 20)
        await wait_following(region, version)
        await region.assert_equal_to_source()
    finally:
        region.stop()
    assert region.proc is not None and region.proc.returncode == 0
    assert postmaster(pg_dir) is None, "the daemon, the last user, left the server running"


async def test_last_clean_user_stops_the_server_whoever_started_it(source: SourceCluster) -> None:
    """Regression: after a daemon was killed with -9 and a new one ran and stopped cleanly, the
    PostgreSQL stayed running (the new daemon had attached, not started it)."""
    region = MirrorRegion(source, "eu", "")
    pg_dir = embedded_pg_dir(source, "eu")
    await region.create()
    region.start()
    try:
        await wait_following(region, await source_head(source))
        pid = postmaster(pg_dir)
        assert pid is not None
        region.kill()  # -9: it cannot stop anything; its server keeps running
        assert postmaster(pg_dir) == pid
        region.start()  # attaches to the running server
        await wait_following(region, await source_head(source))
        assert postmaster(pg_dir) == pid
    finally:
        region.stop()
    assert region.proc is not None and region.proc.returncode == 0
    assert wait_gone(pid), "the last clean user did not stop the server"


@pytest.mark.timeout(900)
async def test_create_then_run_at_once_follows_every_time(source: SourceCluster) -> None:
    """`mirror create` then `mirror run` at once, 20 times. The daemon (in this process, so it
    starts within milliseconds) runs the moment the config names the mirror, while `create`
    (a process) is still attached to the server it started and is about to leave it: the
    daemon follows every time, and the server stops with the last user."""
    pg_dir = embedded_pg_dir(source, "eu")
    region = MirrorRegion(source, "eu", "")
    log = source.directory / "create.log"
    await make_files(source, "x", 30)
    overlapped = 0
    for round_ in range(20):
        create = start_mirrorfs(source.config_path, "mirror", "create", "eu", log=log)
        deadline = time.monotonic() + 120
        while "eu" not in (cfg := load_config(source.config_path)).mirrors:
            assert create.poll() is None, f"round {round_}: create failed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"round {round_}: create took too long"
            await asyncio.sleep(0.002)
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_region(cfg.mirror_region("eu"), stop))
        try:
            assert await asyncio.to_thread(create.wait, 60) == 0, log.read_text()[-2000:]
            version = await make_files(source, f"r{round_}", 3)
            await wait_following(region, version)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 60)
        assert postmaster(pg_dir) is None, f"round {round_}: the server outlived its users"
        async with source.client() as c:
            await c.mirror("eu", "remove")
        write_config(cfg.model_copy(update={"mirrors": {}}), source.config_path)
        # create left the server to the daemon: it saw another live user when it detached
        overlapped = log.read_text().count('"stopped": false')
    assert overlapped >= 5, f"the daemon started after create had left in all but {overlapped}"


async def test_the_daemon_starts_its_server_again_when_it_goes_away(
    source: SourceCluster,
) -> None:
    """The server stopped under the daemon (an operator's fast shutdown): the daemon starts
    it again and carries on from its watermark."""
    region = MirrorRegion(source, "eu", "")
    pg_dir = embedded_pg_dir(source, "eu")
    await region.create()
    region.start()
    try:
        await wait_following(region, await source_head(source))
        pid = postmaster(pg_dir)
        assert pid is not None
        os.kill(pid, signal.SIGINT)  # what `pg_ctl stop -m fast` sends
        assert wait_gone(pid)
        version = await make_files(source, "after", 50)
        deadline = time.monotonic() + 60
        while postmaster(pg_dir) in (None, pid):
            assert time.monotonic() < deadline, "the daemon did not start its server again"
            await asyncio.sleep(0.05)
        await wait_following(region, version)
        await region.assert_equal_to_source()
        st = await region.status()
        assert st["resyncs"] == 0  # carried on from the watermark, no snapshot reload
    finally:
        region.stop()
    assert postmaster(pg_dir) is None


# -- the attach/detach protocol itself ----------------------------------------------------


async def test_attachments_share_one_server_and_the_last_stops_it(tmp_path: Path) -> None:
    pg_dir = tmp_path / "m" / "pg"
    a = await attach_embedded(pg_dir, who="a")
    b = await attach_embedded(pg_dir, who="b")
    pid = postmaster_pid(pg_dir)
    assert a.dsn == b.dsn and pid is not None
    assert sorted(u.who for u in live_users(pg_dir)) == ["a", "b"]
    assert not await a.detach()
    assert postmaster_pid(pg_dir) == pid
    assert await b.detach()
    assert postmaster_pid(pg_dir) is None and live_users(pg_dir) == []


async def test_a_user_killed_with_minus_9_is_not_counted(tmp_path: Path) -> None:
    pg_dir = tmp_path / "m" / "pg"
    code = (
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from mirror.embedded import attach_embedded\n"
        f"asyncio.run(attach_embedded(Path({str(pg_dir)!r}), who='doomed'))\n"
        "print('attached', flush=True)\n"
        "time.sleep(300)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        lines: list[bytes] = []
        while not lines or lines[-1].strip() != b"attached":  # structlog prints to stdout too
            line = await asyncio.to_thread(child.stdout.readline)
            assert line, f"the child died: {b''.join(lines)!r}"
            lines.append(line)
        assert [u.who for u in live_users(pg_dir)] == ["doomed"]
    finally:
        child.kill()
        child.wait(10)
    assert live_users(pg_dir) == []  # its entry is still in the file, but it is dead
    pid = postmaster_pid(pg_dir)
    assert pid is not None  # nobody could stop it
    me = await attach_embedded(pg_dir, who="me")
    assert postmaster_pid(pg_dir) == pid
    assert await me.detach(), "the last live user did not stop the server"
    assert postmaster_pid(pg_dir) is None


async def test_attach_waits_out_a_server_shutting_down_and_starts_it_again(
    tmp_path: Path,
) -> None:
    """Regression of the create/run race: an attach that meets a server on its way down
    waits for it to finish and starts it again, instead of handing out a dying server."""
    pg_dir = tmp_path / "m" / "pg"
    first = await attach_embedded(pg_dir, who="first")
    pid = postmaster_pid(pg_dir)
    assert pid is not None
    conn = await asyncpg.connect(first.dsn)
    os.kill(pid, signal.SIGTERM)  # smart shutdown: "stopping" until the last client leaves
    deadline = time.monotonic() + 10
    while server_state(pg_dir) is not ServerState.STOPPING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    second = asyncio.create_task(attach_embedded(pg_dir, who="second"))
    await asyncio.sleep(1.0)
    assert not second.done(), "attached to a server that is shutting down"
    await conn.close()  # the shutdown completes; the attach then starts a new server
    attached = await asyncio.wait_for(second, 60)
    assert postmaster_pid(pg_dir) not in (None, pid)
    async with await Database.connect(attached.dsn) as db, db.acquire() as c:
        assert await c.fetchval("SELECT 1") == 1
    await first.detach()
    assert await attached.detach()
    assert postmaster_pid(pg_dir) is None
