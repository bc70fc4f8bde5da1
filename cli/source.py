"""`mirrorfs init`, `mirrorfs source serve|status`, `mirrorfs changelog`."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from changelog import serve_node
from cli.logs import bind_process
from cli.runtime import config, fail, run, run_until_signalled
from volume.client import SourceClient
from volume.config import (
    CONFIG_NAME,
    NodeConfig,
    SourceConfig,
    VolumeConfig,
    new_volume_id,
    write_config,
)
from volume.errors import ChangelogError
from volume.records import MIRROR_ACK, TICK

source_app = typer.Typer(
    help="Run and inspect the source region's metadata nodes.", rich_markup_mode="markdown"
)
STATUS_TIMEOUT_S = 3.0
BOOKKEEPING_OPS = frozenset({TICK, MIRROR_ACK})


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def new_volume(
    directory: Path, *, nodes: int, bucket: str | None, name: str | None
) -> VolumeConfig:
    directory = directory.resolve()
    ports = free_ports(2 * nodes)
    vol_name = name or re.sub(r"[^a-z0-9-]+", "-", directory.name.lower()).strip("-") or "volume"
    return VolumeConfig(
        name=vol_name[:63],
        id=new_volume_id(vol_name[:63]),
        token=secrets.token_urlsafe(24),
        secret=secrets.token_urlsafe(32),
        source=SourceConfig(
            bucket=bucket or (directory / "source-bucket").as_uri(),
            nodes=[
                NodeConfig(
                    id=i + 1,
                    raft=f"127.0.0.1:{ports[2 * i]}",
                    api=f"http://127.0.0.1:{ports[2 * i + 1]}",
                    data_dir=f"source/node{i + 1}",
                )
                for i in range(nodes)
            ],
        ),
    )


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("changelog")(changelog)
    app.add_typer(source_app, name="source")


def init(
    directory: Annotated[Path, typer.Argument(help="Directory of the new volume")],
    nodes: Annotated[int, typer.Option(min=1, max=7, help="Source Raft nodes (3 default)")] = 3,
    bucket: Annotated[
        str | None, typer.Option(help="Source bucket URL (default: DIR/source-bucket)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Volume name (default: from DIR)")] = None,
) -> None:
    """Write DIR/mirrorfs.toml for a local source region (free ports, fresh token and secret)."""
    if nodes % 2 == 0:
        typer.echo(f"warning: {nodes} nodes tolerate no more failures than {nodes - 1}", err=True)
    path = directory / CONFIG_NAME
    if path.exists():
        fail(f"{path} already exists", "refusing to overwrite a volume; pick another directory")
    directory.mkdir(parents=True, exist_ok=True)
    cfg = new_volume(directory, nodes=nodes, bucket=bucket, name=name)
    write_config(cfg, path)
    typer.echo(f"wrote {path} (volume {cfg.name!r}, {nodes} node(s); mode 0600: it holds secrets)")
    typer.echo(
        f"start each node:  mirrorfs --config {path} source serve --node N   (N = 1..{nodes})"
    )


@source_app.command("serve")
def serve(
    ctx: typer.Context,
    node: Annotated[int, typer.Option("--node", "-n", help="Node id (1..n)")],
) -> None:
    """Run one source node (Raft member + HTTP API) until Ctrl-C or SIGTERM."""
    cfg = config(ctx)
    node_api(cfg, node)  # a clear error for a bad id before anything starts
    bind_process(volume=cfg.name, node=node)
    run_until_signalled(lambda stop: serve_node(cfg, node, stop))


async def gather_status(cfg: VolumeConfig) -> list[dict[str, Any]]:
    async with SourceClient(cfg.api_urls, cfg.token, timeout_s=STATUS_TIMEOUT_S) as client:

        async def one(n: NodeConfig) -> dict[str, Any]:
            try:
                st = await client.status(n.api)
                return {"node": n.id, "api": n.api, "reachable": True, **st}
            except Exception as exc:  # noqa: BLE001 - an unreachable node is a status, not a crash
                return {"node": n.id, "api": n.api, "reachable": False, "error": str(exc)}

        return list(await asyncio.gather(*(one(n) for n in cfg.source.nodes)))


@source_app.command("status")
def status(
    ctx: typer.Context, json: Annotated[bool, typer.Option("--json", help="JSON output")] = False
) -> None:
    """Per node: reachable, role, term, applied version, head ts."""
    cfg = config(ctx)
    rows = run(gather_status(cfg))
    if json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        table = Table("node", "api", "reachable", "role", "term", "applied", "head ts (ms)")
        for r in rows:
            table.add_row(
                str(r["node"]),
                r["api"],
                "yes" if r["reachable"] else f"no ({r.get('error', '')[:40]})",
                r.get("role", "-"),
                str(r.get("term", "-")),
                str(r.get("applied_version", "-")),
                str(r.get("head_ts", "-")),
            )
        # Off a terminal rich assumes 80 columns and would cut the API URLs: never cut them.
        console = Console(width=None if sys.stdout.isatty() else 200)
        console.print(table)
        print_stale_registrations(console, rows, cfg)
    if not any(r["reachable"] for r in rows):
        raise typer.Exit(1)


def print_stale_registrations(
    console: Console, rows: list[dict[str, Any]], cfg: VolumeConfig
) -> None:
    """Mirror registrations that never acked, as the leader (else any node) lists them."""
    answered = [r for r in rows if r["reachable"] and "registrations_never_acked" in r]
    if not answered:
        return
    best = next((r for r in answered if r.get("role") == "leader"), answered[0])
    stale = best["registrations_never_acked"]
    if not stale:
        return
    console.print("registrations that never acked (each holds the source's retention and GC):")
    for reg in stale:
        age = "age unknown" if reg["age_s"] is None else f"registered {_age(reg['age_s'])} ago"
        where = "in the config" if reg["name"] in cfg.mirrors else "not in the config"
        console.print(f"  {reg['name']}: {age} at version {reg['registered']} ({where})")
    console.print(
        "  a `mirror create` that died: re-run it, or `mirrorfs mirror remove NAME`;"
        " a daemon that never ran: `mirrorfs mirror run NAME`",
        highlight=False,
    )


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def changelog(
    ctx: typer.Context,
    from_version: Annotated[int, typer.Option("--from", min=1, help="First version to print")] = 1,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming")] = False,
    node: Annotated[int | None, typer.Option(help="Read from this node only")] = None,
    all_records: Annotated[
        bool,
        typer.Option("--all", help="Also the source's bookkeeping: ticks and mirror acks"),
    ] = False,
) -> None:
    """Print changelog records as JSON lines, like `juicefs changelog`. Ticks and mirror acks
    (most records of an idle volume) are left out unless --all."""
    cfg = config(ctx)
    url = node_api(cfg, node) if node else None

    async def main() -> None:
        async with SourceClient(cfg.api_urls, cfg.token) as client:
            async for rec in client.stream(from_version, follow=follow, node=url):
                if not all_records and rec.op in BOOKKEEPING_OPS:
                    continue
                sys.stdout.buffer.write(orjson.dumps(rec.to_dict()) + b"\n")
                sys.stdout.flush()

    run(main())


def node_api(cfg: VolumeConfig, node: int) -> str:
    """The API URL of node `node`; a bad id is the config's one-line error."""
    try:
        return cfg.node(node).api
    except ChangelogError as exc:
        fail(exc.message, exc.hint)
