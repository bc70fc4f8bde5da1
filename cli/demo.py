"""`mirrorfs demo`: a source region and mirror regions on this machine, on embedded defaults.

Everything runs as child processes of this command (3 source nodes, one daemon per mirror, each
mirror with its own local bucket and embedded PostgreSQL). The topology is written to
DIR/mirrorfs.toml, so every other command works against the demo with `--config`. Ctrl-C or
SIGTERM stops every child within seconds; running the demo again on the same DIR resumes with
the data kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import aiohttp
import typer

from cli.dashboard import TOKEN_ENV
from cli.mirror import fetch_status
from cli.runtime import run_until_signalled
from cli.source import free_ports, new_volume
from fallback import FsClient
from mirror import create_mirror
from volume.client import SourceClient
from volume.config import CONFIG_NAME, MirrorConfig, VolumeConfig, load_config, write_config
from volume.errors import FsError

MIRROR_NAMES = ("eu", "ap", "us", "sa", "af", "me", "oc", "ca")
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1
SAMPLE_DIR = "/models/demo-llm"
DASHBOARD = "dashboard"


class Children:
    """Child processes, stopped together (SIGTERM, then SIGKILL after a deadline)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={
                    **os.environ,
                    "MIRRORFS_LOG": os.environ.get("MIRRORFS_LOG", "info"),
                    **(env or {}),
                },
                start_new_session=True,  # a Ctrl-C reaches us; we stop the children in order
                preexec_fn=_die_with_parent,
            )

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self) -> None:
        """The dashboard, then the mirrors (their last ack needs the source), then the source
        nodes."""
        dashboard = [p for n, p in self.procs.items() if n == DASHBOARD]
        mirrors = [p for n, p in self.procs.items() if n.startswith("mirror-")]
        others = [
            p for n, p in self.procs.items() if n != DASHBOARD and not n.startswith("mirror-")
        ]
        for group in (dashboard, mirrors, others):
            for p in group:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for p in group:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the demo dies without stopping us (kill -9, a crash), so
    no region is left running unattended. Linux only; elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def ensure_config(directory: Path, nodes: int, mirrors: int) -> VolumeConfig:
    path = directory / CONFIG_NAME
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        write_config(new_volume(directory, nodes=nodes, bucket=None, name="demo"), path)
    return load_config(path)


async def wait_for_leader(cfg: VolumeConfig, children: Children, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with SourceClient(cfg.api_urls, cfg.token, timeout_s=2) as client:
        while time.monotonic() < deadline:
            for url in cfg.api_urls:
                try:
                    if (await client.status(url))["role"] == "leader":
                        return
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            if children.dead():
                raise typer.Exit(_died(children))
            await asyncio.sleep(0.2)
    raise typer.Exit(_died(children, "no source leader within 60 s"))


async def wait_for_regions(cfg: VolumeConfig, children: Children, timeout_s: float = 90) -> None:
    """Say "running" only once every region daemon answers its status API."""
    deadline = time.monotonic() + timeout_s
    waiting = set(cfg.mirrors)
    while waiting:
        for name in sorted(waiting):
            with contextlib.suppress(Exception):  # not listening yet
                await fetch_status(cfg.mirrors[name].api, cfg.token)
                waiting.discard(name)
        if children.dead():
            raise typer.Exit(_died(children))
        if time.monotonic() > deadline:
            raise typer.Exit(_died(children, f"regions {sorted(waiting)} did not come up"))
        if waiting:
            await asyncio.sleep(0.2)


async def start_dashboard(cfg: VolumeConfig, children: Children, timeout_s: float = 30) -> str:
    """The dashboard as one more child, on a free port with a login token minted here (so
    the token is on the terminal only, never in the child's log); its URL once it answers."""
    port = free_ports(1)[0]
    token = secrets.token_urlsafe(24)
    children.start(
        DASHBOARD,
        [
            "--config",
            str(cfg.path),
            "dashboard",
            "--listen",
            f"127.0.0.1:{port}",
            "--no-print-url",
        ],
        env={TOKEN_ENV: token},
    )
    deadline = time.monotonic() + timeout_s
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return f"http://127.0.0.1:{port}/?token={token}"
            if children.dead():
                raise typer.Exit(_died(children))
            if time.monotonic() > deadline:
                raise typer.Exit(_died(children, "the dashboard did not come up"))
            await asyncio.sleep(0.2)


def _died(children: Children, why: str = "") -> int:
    names = ", ".join(children.dead()) or why
    typer.echo(f"error: {names} stopped; see the logs in {children.log_dir}", err=True)
    children.stop()
    return 1


async def ensure_mirrors(cfg: VolumeConfig, count: int) -> VolumeConfig:
    for name in MIRROR_NAMES[:count]:
        if name in cfg.mirrors:
            continue
        typer.echo(f"creating mirror region {name!r} (embedded PostgreSQL, local bucket) ...")
        mcfg = MirrorConfig(
            bucket=cfg.resolve(f"mirrors/{name}/bucket").as_uri(),
            api=f"http://127.0.0.1:{free_ports(1)[0]}",
            data_dir=f"mirrors/{name}",
        )
        cfg = (await create_mirror(cfg, mcfg, name)).config
    return cfg


async def ensure_sample_data(cfg: VolumeConfig) -> None:
    async with await FsClient.for_source(cfg, uid=0, gid=0) as fs:
        try:
            await fs.stat(SAMPLE_DIR)
            return
        except FsError:
            pass
        typer.echo(f"writing sample data under {SAMPLE_DIR} ...")
        await fs.mkdir(SAMPLE_DIR, parents=True)
        config = {"model_type": "demo", "hidden_size": 512, "num_layers": 4}
        await fs.put(io.BytesIO(json.dumps(config).encode()), f"{SAMPLE_DIR}/config.json")
        for i in range(3):
            shard = os.urandom(6 * 1024 * 1024)
            await fs.put(io.BytesIO(shard), f"{SAMPLE_DIR}/model-{i:05d}.safetensors")


def print_tips(cfg: VolumeConfig, dashboard_url: str) -> None:
    c = f"mirrorfs --config {cfg.path}"
    names = sorted(cfg.mirrors)  # the same order on every run, whichever create finished first
    first = names[0] if names else "eu"
    typer.echo("")
    typer.echo(
        f"mirrorfs demo is running: {len(cfg.source.nodes)} source nodes, "
        f"mirrors {', '.join(names) or 'none'}"
    )
    typer.echo(f"  dashboard: {dashboard_url}   (open it in a browser)")
    for name in names:
        m = cfg.mirrors[name]
        typer.echo(f"  region {name}: status {m.api}/v1/status (bearer token in {cfg.path})")
    typer.echo("")
    typer.echo("try, in another terminal:")
    typer.echo(f"  {c} source status")
    typer.echo(f"  {c} ls -l {SAMPLE_DIR}")
    typer.echo(f"  {c} cat --region {first} {SAMPLE_DIR}/config.json   # read through a mirror")
    typer.echo(f"  {c} put ./some-file /models/some-file")
    typer.echo(f"  {c} mirror status                # every mirror")
    typer.echo(f"  {c} mirror status {first} --json")
    typer.echo(f"  {c} changelog --from 1 --follow")
    typer.echo("")
    typer.echo("Ctrl-C stops everything; run the same command again to resume.")


async def run_demo(directory: Path, nodes: int, mirrors: int, stop: asyncio.Event) -> None:
    cfg = ensure_config(directory, nodes, mirrors)
    assert cfg.path is not None
    children = Children(directory / "logs")
    try:
        for n in cfg.source.nodes:
            children.start(
                f"node{n.id}", ["--config", str(cfg.path), "source", "serve", "--node", str(n.id)]
            )
        # The dashboard first: it shows the regions coming up (it reads the config again as
        # mirrors are added) and its URL is the first thing printed.
        dashboard_url = await start_dashboard(cfg, children)
        typer.echo(f"dashboard: {dashboard_url}   (regions appear as they come up)")
        await wait_for_leader(cfg, children)
        cfg = await ensure_mirrors(cfg, mirrors)
        for name in cfg.mirrors:
            children.start(f"mirror-{name}", ["--config", str(cfg.path), "mirror", "run", name])
        await ensure_sample_data(cfg)
        await wait_for_regions(cfg, children)
        print_tips(cfg, dashboard_url)
        while not stop.is_set():
            dead = children.dead()
            if dead:
                typer.echo(f"warning: {', '.join(dead)} stopped; see {children.log_dir}", err=True)
                for name in dead:
                    children.procs.pop(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        typer.echo("stopping ...")
        await asyncio.to_thread(children.stop)
        typer.echo("stopped; data kept in " + str(directory))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo keeps everything")
    ] = Path("mirrorfs-demo"),
    mirrors: Annotated[int, typer.Option(min=0, max=len(MIRROR_NAMES), help="Mirror regions")] = 2,
    nodes: Annotated[int, typer.Option(min=1, max=7, help="Source Raft nodes")] = 3,
) -> None:
    """Run a source region and N mirror regions on this machine (embedded defaults)."""
    directory = directory.resolve()
    run_until_signalled(lambda stop: run_demo(directory, nodes, mirrors, stop))
