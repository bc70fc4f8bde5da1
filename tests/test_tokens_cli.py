"""`mirrorfs token create`, the config file's mode and its warning, through the real CLI."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.changelog.cluster import SourceCluster
from tests.test_cli import mfs
from volume.client import SourceClient
from volume.config import load_config
from volume.errors import ForbiddenError


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        yield cluster


def minted(config: Path, scope: str) -> str:
    out = mfs("token", "create", "--scope", scope, config=config)
    [line] = out.stdout.decode().splitlines()
    assert scope in line
    return line.split()[-1]  # the token is the last word of its line


def test_init_writes_0600_and_a_readable_file_warns(tmp_path: Path) -> None:
    path = tmp_path / "v" / "mirrorfs.toml"
    mfs("init", str(tmp_path / "v"), "--nodes", "1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    quiet = mfs("token", "create", "--scope", "admin", config=path)
    assert b"warning" not in quiet.stderr

    path.chmod(0o644)
    out = mfs("token", "create", "--scope", "client:ro", config=path)
    warnings = [ln for ln in out.stderr.decode().splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, out.stderr
    assert str(path) in warnings[0] and f"chmod 600 {path}" in warnings[0]
    assert b"config.readable_by_others" in out.stderr  # the structlog event as well
    token = out.stdout.decode().split()[-1]
    assert load_config(path).token_verifier().scope_of(token) == "client:ro"
    assert b"Traceback" not in out.stderr


def test_token_create_refuses_unknown_scopes_and_mirrors(tmp_path: Path) -> None:
    path = tmp_path / "v" / "mirrorfs.toml"
    mfs("init", str(tmp_path / "v"), "--nodes", "1")
    for scope, says in [
        ("root", b"unknown token scope 'root'"),
        ("client", b"unknown token scope"),
        ("mirror:Bad_Name", b"unknown token scope"),
        ("mirror:eu", b"no mirror named 'eu'"),
    ]:
        out = mfs("token", "create", "--scope", scope, config=path, check=False)
        assert out.returncode != 0, scope
        assert b"error: " in out.stderr and says in out.stderr, out.stderr
        assert b"hint: " in out.stderr and b"Traceback" not in out.stderr
        assert out.stdout == b""


async def test_minted_client_tokens_work_against_the_source(source: SourceCluster) -> None:
    cfg = source.config_path
    rw, ro = minted(cfg, "client:rw"), minted(cfg, "client:ro")
    urls = source.cfg.api_urls
    async with SourceClient(urls, rw) as c:
        await c.op("mkdir", path="/by-rw", mode=0o755)
    async with SourceClient(urls, ro, retry_s=2) as c:
        _, entries = await c.meta("readdir", path="/")
        assert [e["name"] for e in entries] == ["by-rw"]
        with pytest.raises(ForbiddenError):
            await c.op("mkdir", path="/by-ro", mode=0o755)
