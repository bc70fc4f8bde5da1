"""The `mirrorfs` command end to end: init, a running source, the file verbs, changelog."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from tests.changelog.cluster import SourceCluster


def mfs(
    *args: str, config: Path | None = None, check: bool = True, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "cli"]
    if config:
        cmd += ["--config", str(config)]
    proc = subprocess.run([*cmd, *args], capture_output=True, input=input, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=3) as cluster:
        yield cluster


def test_init_writes_a_config_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = mfs("init", str(tmp_path / "v"), "--nodes", "3")
    assert b"wrote" in out.stdout
    text = (tmp_path / "v" / "mirrorfs.toml").read_text()
    assert text.count("[[source.nodes]]") == 3
    again = mfs("init", str(tmp_path / "v"), check=False)
    assert again.returncode != 0
    assert b"error:" in again.stderr and b"already exists" in again.stderr
    assert (tmp_path / "v" / "mirrorfs.toml").read_text() == text
    assert b"Traceback" not in again.stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n')
    out = mfs("source", "status", config=bad, check=False)
    assert out.returncode != 0
    assert str(bad).encode() in out.stderr and b"token" in out.stderr
    assert b"Traceback" not in out.stderr
    env_out = subprocess.run(
        [sys.executable, "-m", "cli", "ls", "/"],
        capture_output=True,
        env={**os.environ, "MIRRORFS_CONFIG": str(bad)},
        timeout=60,
    )
    assert env_out.returncode != 0 and str(bad).encode() in env_out.stderr


async def test_file_verbs_against_the_source(source: SourceCluster, tmp_path: Path) -> None:
    cfg = source.config_path
    data = os.urandom(9 * 1024 * 1024 + 123)
    local = tmp_path / "in.bin"
    local.write_bytes(data)
    mfs("mkdir", "-p", "/a/b", config=cfg)
    assert b"committed at version" in mfs("put", str(local), "/a/b/f.bin", config=cfg).stdout
    assert mfs("cat", "/a/b/f.bin", config=cfg).stdout == data
    mfs("get", "/a/b/f.bin", str(tmp_path / "out.bin"), config=cfg)
    assert (tmp_path / "out.bin").read_bytes() == data
    attr = orjson.loads(mfs("stat", "--json", "/a/b/f.bin", config=cfg).stdout)
    assert attr["size"] == len(data) and attr["kind"] == "file"
    mfs("mv", "/a/b/f.bin", "/a/g.bin", config=cfg)
    assert mfs("ls", "/a", config=cfg).stdout.split() == [b"b/", b"g.bin"]
    err = mfs("rm", "-d", "/a", config=cfg, check=False)
    assert err.returncode != 0 and b"ENOTEMPTY" in err.stderr
    err = mfs("cat", "/nope", config=cfg, check=False)
    assert err.returncode != 0 and b"ENOENT" in err.stderr and b"Traceback" not in err.stderr
    mfs("rm", "/a/g.bin", config=cfg)
    mfs("rm", "-d", "/a/b", config=cfg)
    mfs("rm", "-d", "/a", config=cfg)
    assert mfs("ls", "/", config=cfg).stdout == b""
    lines = mfs("changelog", "--from", "1", "--all", config=cfg).stdout.splitlines()
    records = [orjson.loads(x) for x in lines]
    assert [r["version"] for r in records] == list(range(1, len(records) + 1))
    ops = [r["op"] for r in records if r["op"] != "tick"]
    assert ops[:2] == ["mkdir", "mkdir"] and "write" in ops and ops[-1] == "rmdir"
    shown = [orjson.loads(x)["op"] for x in mfs("changelog", config=cfg).stdout.splitlines()]
    assert shown == ops  # without --all: the same records, minus the bookkeeping
    status = orjson.loads(mfs("source", "status", "--json", config=cfg).stdout)
    assert sorted(s["role"] for s in status) == ["follower", "follower", "leader"]
    assert all(s["reachable"] for s in status)


async def test_status_reports_an_unreachable_node(source: SourceCluster) -> None:
    source.kill_node(3)
    status = orjson.loads(mfs("source", "status", "--json", config=source.config_path).stdout)
    assert [s["reachable"] for s in status] == [True, True, False]
