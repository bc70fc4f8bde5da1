"""`mirrorfs mirror create|run|remove|status`."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any

import aiohttp
import orjson
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from cli import replication
from cli.logs import bind_process
from cli.runtime import config, fail, mirror_region, run, run_until_signalled
from cli.source import free_ports
from mirror import STATUS_FIELDS, LoadStats, create_mirror, run_region
from volume.client import SourceClient
from volume.config import MirrorConfig, VolumeConfig, write_config
from volume.errors import MirrorRemovedError

mirror_app = typer.Typer(
    help="Create, run and inspect mirror regions.", rich_markup_mode="markdown"
)


def register(app: typer.Typer) -> None:
    replication.register(mirror_app)
    app.add_typer(mirror_app, name="mirror")


@mirror_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the new mirror region")],
    bucket: Annotated[
        str | None, typer.Option(help="Mirror bucket URL (default: a local directory)")
    ] = None,
    dsn: Annotated[
        str | None, typer.Option(help="PostgreSQL DSN (default: an embedded server)")
    ] = None,
    window: Annotated[float, typer.Option(help="Default consistency window, seconds")] = 5.0,
    api: Annotated[str | None, typer.Option(help="Status API URL of the region daemon")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Wipe the database if it holds another mirror (its replica is lost)"
        ),
    ] = False,
) -> None:
    """Register a mirror with the source, load a snapshot into its PostgreSQL, record it.

    Refuses a database that holds another mirror or volume (unless --force). Re-running it
    after a `create` that died takes over the registration that create left."""
    cfg = config(ctx)
    data_dir = f"mirrors/{name}"
    base = cfg.resolve(data_dir)
    mcfg = MirrorConfig(
        bucket=bucket or (base / "bucket").as_uri(),
        api=api or f"http://127.0.0.1:{free_ports(1)[0]}",
        data_dir=data_dir,
        dsn=dsn or "",
        window_s=window,
    )

    async def go() -> None:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), transient=True
        ) as progress:
            task = progress.add_task("starting", total=None)

            def step(text: str) -> None:
                progress.update(task, description=text)

            def rows(stats: LoadStats) -> None:
                done, total = stats.inodes, stats.inodes_total
                progress.update(
                    task, description=f"loading a snapshot: {done:,} of {total:,} inodes"
                )

            def warn(text: str) -> None:
                progress.console.print(
                    f"warning: {text}", style="yellow", highlight=False, soft_wrap=True
                )

            created = await create_mirror(
                cfg, mcfg, name, force=force, on_step=step, on_rows=rows, on_warning=warn
            )
        typer.echo(f"mirror {name!r} created at version {created.version}; recorded in {cfg.path}")
        typer.echo(f"run it: mirrorfs --config {cfg.path} mirror run {name}")

    run(go())


@mirror_app.command("run")
def run_daemon(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Mirror region to run")]
) -> None:
    """Run the region daemon (follower, replicator, GC, status API) until Ctrl-C or SIGTERM."""
    _, region = mirror_region(ctx, name)
    bind_process(volume=region.volume, region=name)
    run_until_signalled(lambda stop: run_region(region, stop))


@mirror_app.command("remove")
def remove(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Mirror region to remove")]
) -> None:
    """Unregister the mirror from the source (releasing its hold on retention and GC) and drop
    it from the config. Also removes a registration a `create` that died left behind. Its
    running daemon, if any, stops by itself within seconds."""
    cfg = config(ctx)
    in_config = name in cfg.mirrors

    async def go() -> None:
        async with SourceClient(cfg.api_urls, cfg.token) as source:
            try:
                await source.mirror(name, "remove")
                at_source = True
            except MirrorRemovedError:
                at_source = False
        if not in_config and not at_source:
            known = ", ".join(sorted(cfg.mirrors)) or "none"
            fail(
                f"no mirror named {name!r}: not in {cfg.path} (known: {known}) and not"
                " registered with the source"
            )
        if in_config:
            mirrors = {k: v for k, v in cfg.mirrors.items() if k != name}
            assert cfg.path is not None
            write_config(cfg.model_copy(update={"mirrors": mirrors}), cfg.path)
        if not at_source:
            typer.echo(f"mirror {name!r} was not registered with the source any more")
        elif not in_config:
            typer.echo(f"registration {name!r} removed from the source (it was not in {cfg.path})")
        typer.echo(f"mirror {name!r} removed (its bucket and database were left in place)")

    run(go())


class StatusCallError(Exception):
    """A status call that got no status document: refused (401/403), or not our API."""


async def fetch_status(api: str, token: str) -> dict[str, Any]:
    """The region daemon's status document. A degraded region answers 503 with the document
    (state `degraded`, and why): that is a status, returned. Anything else that is not a
    2xx JSON document raises StatusCallError with the code and the reason the daemon gave."""
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(headers=headers, timeout=timeout) as s,
        s.get(f"{api.rstrip('/')}/v1/status") as resp,
    ):
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = None
        if resp.status < 300 or (resp.status == 503 and isinstance(data, dict) and "state" in data):
            if not isinstance(data, dict):
                raise StatusCallError(f"HTTP {resp.status} without a JSON status document")
            return data
        reason = data.get("message") if isinstance(data, dict) else None
        raise StatusCallError(f"HTTP {resp.status}: {reason or resp.reason}")


# The human-readable status: the documented fields, and what tells a paused or held
# replicator from a stuck one.
SHOWN_FIELDS = (
    *STATUS_FIELDS[: STATUS_FIELDS.index("blocks_failed") + 1],
    "blocks_in_flight",
    "blocks_retrying",
    "paused",
    "replicator_state",
    "replicator_hold_reason",
    "copy_bytes_per_s",
    *STATUS_FIELDS[STATUS_FIELDS.index("blocks_failed") + 1 :],
)
TABLE_COLUMNS = {
    "mirror": "mirror",
    "state": "state",
    "applied_version": "applied",
    "lag_seconds": "lag s",
    "window_s": "window s",
    "blocks_pending": "pending",
    "bytes_pending": "bytes pending",
    "blocks_failed": "failed",
    "paused": "paused",
    "replicator_state": "replicator",
}


async def region_status(cfg: VolumeConfig, name: str) -> dict[str, Any]:
    """One region's status document, or {"mirror", "state": "unreachable", "error"}."""
    api = cfg.mirror(name).api
    try:
        return await fetch_status(api, cfg.token)
    except (aiohttp.ClientError, TimeoutError, StatusCallError) as exc:
        return {"mirror": name, "state": "unreachable", "api": api, "error": str(exc) or repr(exc)}


@mirror_app.command("status")
def status(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Mirror region (default: every mirror of the volume)")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """State, applied version, lag and backlog of region daemons. Exits 1 if a daemon does not
    answer or refuses the call (each such region says why)."""
    cfg = config(ctx)
    names = sorted(cfg.mirrors) if name is None else [name]
    if name is not None:
        mirror_region(ctx, name)  # an unknown name: the config's error, naming the known ones
    if not names:
        fail(f"{cfg.path} has no mirrors", hint="create one: mirrorfs mirror create NAME")

    async def go() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(region_status(cfg, n) for n in names)))

    docs = run(go())
    failed = [d for d in docs if d.get("state") == "unreachable"]
    if json:
        out: Any = docs if name is None else docs[0]
        typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    elif name is None:
        table = Table(*TABLE_COLUMNS.values())
        for d in docs:
            table.add_row(*(_cell(d.get(k)) for k in TABLE_COLUMNS))
        Console(width=200 if not sys.stdout.isatty() else None).print(table)
    elif not failed:
        console = Console()
        for key in SHOWN_FIELDS:
            console.print(f"{key:>22}: {docs[0].get(key)}", highlight=False)
    for d in failed:
        typer.echo(f"error: mirror {d['mirror']!r} status at {d['api']}: {d['error']}", err=True)
    if failed:
        if any("HTTP 40" in d["error"] for d in failed):
            typer.echo("hint: check the token in the config (token create --scope admin)", err=True)
        else:
            typer.echo(f"hint: start it: mirrorfs --config {cfg.path} mirror run NAME", err=True)
        raise typer.Exit(1)


def _cell(value: object) -> str:
    return "-" if value is None else str(value)
