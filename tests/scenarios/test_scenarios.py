"""Scenarios end to end and the checker against deliberately broken components.

A short version of the standard partition scenario runs for real (a source node, a region
daemon behind a link that is cut for longer than the readers' window, readers with `serve` and
`error`) and passes its checks; the same run with readers that ignore their bound (a real broken
component against real servers) fails with "stale read". The other broken builds are fed to the
checker as the histories and end states they would produce: a follower that skips a record, a
reader that mixes two versions' bytes, a GC that deletes a block before a mirror acknowledged.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenarios.__main__ import run_scenario
from scenarios.checker import (
    SOURCE,
    Ack,
    Deletion,
    History,
    Read,
    Write,
    check,
    check_gc,
    check_metadata,
    check_visible,
)
from scenarios.links import LinkSet, LinkShape
from scenarios.model import ScenarioError, load, resolve, standard

SCALE = 0.6  # the partition scenario's 16 s workload in ~10 s


def kinds(violations: list[str]) -> set[str]:
    return {v.split(":")[0] for v in violations}


async def test_the_partition_scenario_passes_and_writes_its_report(tmp_path: Path) -> None:
    scenario = load(resolve("partition")).scaled(SCALE)
    result = await run_scenario(scenario, tmp_path)
    assert result.violations == [], "\n".join(result.violations[:20])
    served = [r for r in result.history.reads if r.version is not None]
    assert any(r.stale for r in served), "the partition made no read stale"
    assert any(r.error for r in result.history.reads), "no `error` reader was refused"
    assert max(s.lag_s or 0 for s in result.samples) > 1.0  # the window, exceeded
    report = (tmp_path / "report.md").read_text()
    assert "PASSED" in report and "partitioned eu" in report
    for png in ("lag.png", "pending.png", "read_latency.png", "source_egress.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_readers_that_ignore_their_bound_fail_the_checker(tmp_path: Path) -> None:
    # As `mirrorfs scenario run` runs it (a child process), so the exit code is checked too.
    args = ["partition", "--scale", str(SCALE), "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "scenarios", "run", *args, "--mutation", "ignore_bound"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "FAILED" in proc.stdout and "  stale read: " in proc.stdout, proc.stdout
    assert "FAILED" in (tmp_path / "report.md").read_text()


# -- broken builds as the observations they would produce -----------------------------------


def w(version: int, data: bytes, path: str = "/f", returned: float = 10.0) -> Write:
    return Write("writer", SOURCE, path, version, data, returned - 0.1, returned)


def test_a_follower_that_skips_a_record_fails_the_checker() -> None:
    history = History()
    history.wrote(w(5, b"five", "/a"))
    history.wrote(w(6, b"six", "/b"))  # the record the follower skipped
    history.wrote(w(7, b"seven", "/a"))
    source = {"/": {"kind": "dir"}, "/a": {"kind": "file", "size": 5}, "/b": {"kind": "file"}}
    mirror = {"/": {"kind": "dir"}, "/a": {"kind": "file", "size": 5}}
    assert check_metadata(source, {"eu": source}) == []
    assert check_metadata(source, {"eu": mirror}) == ["metadata differs: mirror eu lacks /b"]
    found = check_visible(history, {"eu": {"/a": b"seven", "/b": None}})
    assert kinds(found) == {"write not visible"} and "never reached mirror eu" in found[0]
    assert check_visible(history, {"eu": {"/a": b"seven", "/b": b"six"}}) == []


def test_a_reader_that_mixes_versions_fails_the_checker() -> None:
    v1, v2 = bytes(range(200)) * 50, bytes(reversed(range(200))) * 50
    history = History()
    history.wrote(w(5, v1))
    history.wrote(w(8, v2, returned=11.0))
    good = Read("r", "eu", "/f", 1.0, "source", 11.5, 11.6, version=8, data=v2)
    mixed = Read("r", "eu", "/f", 1.0, "source", 11.7, 11.8, version=8, data=v1[:4096] + v2[4096:])
    history.read(good)
    assert check(history) == []
    history.read(mixed)
    (found,) = check(history)
    assert found.startswith("mixed versions:") and "0..4096 are version 5's" in found


def test_a_gc_that_ignores_a_mirrors_ack_fails_the_checker() -> None:
    acks = [Ack("eu", 10, 1.0), Ack("us", 10, 1.0), Ack("eu", 20, 2.0), Ack("us", 20, 5.0)]
    in_time = [Deletion("blocks/aa/1_0", garbage_version=15, at=6.0)]
    assert check_gc(in_time, acks) == []
    early = [Deletion("blocks/aa/1_0", garbage_version=15, at=3.0)]  # us acked only 10 by then
    (found,) = check_gc(early, acks)
    assert found.startswith("block deleted before a mirror's ack:") and "mirror us" in found


# -- the parts ---------------------------------------------------------------------------


def test_every_standard_scenario_parses_and_bad_files_name_file_and_key(tmp_path: Path) -> None:
    assert {"same-city", "cross-city", "cross-continent", "mirror-offline", "leader-failover",
            "partition", "model-load-storm"} <= set(standard())  # fmt: skip
    for path in standard().values():
        load(path)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "x"\nduration_s = 5\ntime_limit_s = 10\n[topology]\nmirrors = ["eu"]\n'
        '[links.eu]\nlatency_ms = -1\n[[faults]]\nat_s = 1\nkind = "partition"\ntarget = "us"\n'
    )
    with pytest.raises(ScenarioError) as exc:
        load(bad)
    assert f"{bad}: links.eu.latency_ms" in str(exc.value)
    bad.write_text(bad.read_text().replace("-1", "1"))
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.target 'us'"):
        load(bad)
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "scenario", "run", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "faults[0].target" in proc.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "cli", "scenario", "list"], capture_output=True, text=True
    )
    assert listed.returncode == 0 and "model-load-storm" in listed.stdout


async def _echo(r: asyncio.StreamReader, wr: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            wr.write(data)
            await wr.drain()
    except (OSError, asyncio.CancelledError):
        pass  # the test ends
    finally:
        wr.close()


async def test_a_link_delays_each_way_caps_bandwidth_and_partitions() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with LinkSet() as links:
            link = links.add("eu", LinkShape(latency_s=0.05, bandwidth_bps=2_000_000))
            url = links.proxy("eu", "127.0.0.1", port)
            r, wr = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
            start = time.monotonic()
            wr.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            assert 0.1 <= time.monotonic() - start < 0.5  # one way 50 ms, twice
            start = time.monotonic()
            wr.write(b"x" * 500_000)  # 0.25 s on a 2 MB/s wire, each way
            await r.readexactly(500_000)
            # 0.25 s on the wire, pipelined both ways, plus the round trip's 0.1 s
            assert time.monotonic() - start >= 0.33
            await asyncio.to_thread(links.partition, "eu", True)
            wr.write(b"lost?")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r.readexactly(5), 0.4)
            await asyncio.to_thread(links.partition, "eu", False)
            assert await asyncio.wait_for(r.readexactly(5), 2) == b"lost?"  # held, not lost
            assert link.bytes > 1_000_000
            wr.close()
    finally:
        server.close()
        await server.wait_closed()
