"""The operator's rough edges, each as it was seen: failed status calls exit 0, a paused mirror
looks stuck, warmup reports priority changes, unknown names print tracebacks, the changelog is
all ticks, tables cut URLs at 80 columns, the demo's order changes from run to run."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cli.demo import print_tips
from cli.logs import MASK, redact
from fallback.client import FsClient
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from tests.test_cli import mfs
from tests.test_replication_cli import wait_status
from volume.config import MirrorConfig, load_config, write_config

README = Path(__file__).parents[1] / "README.md"


@pytest.fixture
async def region(tmp_path: Path, pg_dsn: str) -> AsyncIterator[MirrorRegion]:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        r = MirrorRegion(cluster, "eu", pg_dsn)
        await r.create()
        r.start()
        try:
            await wait_status(r, lambda s: s.get("state") == "following", "following")
            yield r
        finally:
            r.kill()


def no_traceback(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in err, err
    assert err.startswith("error: "), err
    return err


async def test_status_fails_loudly_and_shows_the_replicator(region: MirrorRegion) -> None:
    cfg_path = region.cluster.config_path
    cfg = load_config(cfg_path)

    # A wrong token: every field None and exit 0 before; now exit 1 with the daemon's reason.
    bad_path = cfg_path.parent / "bad-token.toml"
    write_config(cfg.model_copy(update={"token": "x" * 40}), bad_path)
    for args in (["mirror", "status", "eu"], ["mirror", "status", "eu", "--json"]):
        err = no_traceback(mfs(*args, config=bad_path, check=False))
        assert "HTTP 401" in err and "'eu'" in err, err

    # No name: every mirror of the volume, a table and a JSON list.
    table = mfs("mirror", "status", config=cfg_path).stdout.decode()
    assert "eu" in table and "following" in table and "replicator" in table
    docs = orjson.loads(mfs("mirror", "status", "--json", config=cfg_path).stdout)
    assert [d["mirror"] for d in docs] == ["eu"]

    # A paused mirror says so in the human output.
    mfs("mirror", "pause", "eu", config=cfg_path)
    await wait_status(region, lambda s: s.get("paused") is True, "paused")
    human = mfs("mirror", "status", "eu", config=cfg_path).stdout.decode()
    assert "paused: True" in human and "replicator_state:" in human, human

    # Warmup on a paused mirror: what remains, that it is paused, exit 1 (it waited forever).
    async with await FsClient.for_source(cfg, uid=0, gid=0) as fs:
        await fs.put(io.BytesIO(os.urandom(5_000_000)), "/w/a")  # type: ignore[arg-type]
    await wait_status(region, lambda s: s.get("blocks_pending") == 2, "pending while paused")
    start = time.monotonic()
    paused = mfs("mirror", "warmup", "eu", "/w", config=cfg_path, check=False)
    assert paused.returncode == 1 and time.monotonic() - start < 60
    assert b"2 block(s) under /w still to copy" in paused.stdout, paused.stdout
    assert b"is paused" in paused.stderr and b"mirror resume eu" in paused.stderr

    # Run twice after resume: the second run reports what is left (0), not a priority count.
    mfs("mirror", "resume", "eu", config=cfg_path)
    first = mfs("mirror", "warmup", "eu", "/w", config=cfg_path)
    assert b"everything under /w is copied" in first.stdout or b"0 block(s)" in first.stdout
    again = mfs("mirror", "warmup", "eu", "/w", config=cfg_path)
    assert again.stdout.startswith(b"0 block(s) under /w still to copy"), again.stdout


async def scrape(url: str) -> dict[str, list[Sample]]:
    """{family name: samples} of a /metrics URL (no token: scrapers rarely carry one)."""
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert resp.status == 200, url
        text = await resp.text()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def documented(families: dict[str, list[Sample]]) -> None:
    """Every mirrorfs family a daemon exposes is named in the README's metrics table."""
    readme = README.read_text()
    names = [n for n in families if n.startswith("mirrorfs_")]
    missing = [n for n in names if f"`{n}`" not in readme]
    assert not missing, f"README does not document {missing}"


async def test_worker_shows_what_it_copies_and_serves_metrics(region: MirrorRegion) -> None:
    cfg_path = region.cluster.config_path
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "--config", str(cfg_path), "mirror", "worker", "eu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        lines = [await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 60)]
        lines.append(await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 60))
        url = next(x for x in lines if x.startswith(b"metrics: ")).split()[1].decode()
        progress = next(x for x in lines if x.startswith(b"eu: "))
        assert b"block(s) since start" in progress, lines
        families = await scrape(url)
        sample = families["mirrorfs_worker_copy_concurrency"][0]
        assert sample.labels["mirror"] == "eu" and sample.labels["volume"] == "test"
        assert sample.value == 16
        documented(families)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0

    families = await scrape(f"{region.api}/metrics")  # the region daemon's
    lag = families["mirrorfs_region_lag_seconds"][0]
    assert lag.labels == {"volume": "test", "mirror": "eu"}
    assert "mirrorfs_objstore_requests" in families  # its buckets' requests, by outcome
    documented(families)


def test_unknown_names_are_one_line_errors(tmp_path: Path) -> None:
    mfs("init", str(tmp_path / "v"), "--nodes", "1")
    cfg = tmp_path / "v" / "mirrorfs.toml"
    verbs = [
        ["mirror", "status", "nope"],
        ["mirror", "run", "nope"],
        ["mirror", "pause", "nope"],
        ["mirror", "resume", "nope"],
        ["mirror", "retry", "nope"],
        ["mirror", "warmup", "nope", "/"],
        ["mirror", "verify", "nope"],
        ["mirror", "worker", "nope"],
    ]
    for args in verbs:
        err = no_traceback(mfs(*args, config=cfg, check=False))
        assert "no mirror named 'nope'" in err and err.count("\n") <= 3, (args, err)
    for args in (["source", "serve", "--node", "9"], ["changelog", "--node", "9"]):
        err = no_traceback(mfs(*args, config=cfg, check=False))
        assert "9" in err and err.count("\n") <= 3, (args, err)


async def test_changelog_hides_bookkeeping_and_status_keeps_urls(tmp_path: Path) -> None:
    async with SourceCluster.running(tmp_path / "vol", nodes=3) as cluster:
        cfg_path = cluster.config_path
        async with await FsClient.for_source(load_config(cfg_path), uid=0, gid=0) as fs:
            await fs.mkdir("/d")
        deadline = time.monotonic() + 30
        while True:  # ticks every 0.2 s: some have committed after the mkdir
            everything = mfs("changelog", "--all", config=cfg_path).stdout.splitlines()
            ops = [orjson.loads(line)["op"] for line in everything]
            if ops.count("tick") >= 3:
                break
            assert time.monotonic() < deadline, ops
            await asyncio.sleep(0.2)
        shown = [orjson.loads(x)["op"] for x in mfs("changelog", config=cfg_path).stdout.split()]
        assert "mkdir" in shown and "tick" not in shown and "mirror_ack" not in shown
        assert len(shown) < len(ops)

        out = mfs("source", "status", config=cfg_path).stdout.decode()
        for node in load_config(cfg_path).source.nodes:
            assert node.api in out, out  # off a terminal, never cut at 80 columns
            families = await scrape(f"{node.api}/metrics")
            applied = families["mirrorfs_source_applied_version"][0]
            assert applied.labels == {"volume": "test", "node": str(node.id)}
            documented(families)


def test_help_names_the_log_choices_and_the_demo_order_is_stable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = mfs("--help").stdout.decode()
    assert "debug|info|warning|error" in out and "json|console" in out.replace("auto|", ""), out
    mfs("init", str(tmp_path / "v"), "--nodes", "1")
    cfg = load_config(tmp_path / "v" / "mirrorfs.toml")
    mirrors = {
        name: MirrorConfig(
            bucket=f"file:///tmp/{name}", api=f"http://127.0.0.1:{port}", data_dir=name
        )
        for name, port in (("eu", 1), ("ap", 2), ("us", 3))
    }
    print_tips(cfg.model_copy(update={"mirrors": mirrors}), "http://127.0.0.1:9/")
    text = capsys.readouterr().out
    assert "mirrors ap, eu, us" in text
    assert text.index("region ap") < text.index("region eu") < text.index("region us")


def test_log_lines_never_carry_a_secret() -> None:
    token = "0123456789abcdef0123456789abcdef"
    event = {
        "event": "request failed",
        "token": token,
        "auth_header": f"Bearer {token}",
        "dsn": f"postgresql://mirror:{token}@127.0.0.1:5432/eu",
        "url": f"http://127.0.0.1:8470/?token={token}",
        "error": f"config: password = '{token}' refused",
        "version": 7,
    }
    out = redact(None, "info", dict(event))
    assert token not in repr(out), out
    assert out["token"] == MASK and out["version"] == 7
    assert out["dsn"].startswith("postgresql://mirror:") and out["dsn"].endswith(
        "@127.0.0.1:5432/eu"
    )


def test_every_argument_and_command_is_described() -> None:
    import typer

    from cli.app import app

    def walk(cmd: Any, path: str) -> list[tuple[str, Any]]:  # typer's own (vendored) click
        found = [(path, cmd)]
        for name, sub in getattr(cmd, "commands", {}).items():
            found += walk(sub, f"{path} {name}")
        return found

    undescribed = []
    for path, cmd in walk(typer.main.get_command(app), "mirrorfs"):
        if not (cmd.help or "").strip():
            undescribed.append(path)
        if "until SIGTERM" in (cmd.help or ""):
            undescribed.append(f"{path}: says 'until SIGTERM' (Ctrl-C works too)")
        for param in cmd.params:
            if param.param_type_name == "argument" and not getattr(param, "help", None):
                undescribed.append(f"{path} {param.name}")
    assert not undescribed, undescribed
    arguments = [p for _, c in walk(typer.main.get_command(app), "") for p in c.params]
    assert sum(p.param_type_name == "argument" for p in arguments) > 20
