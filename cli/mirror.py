"""`mirrorfs mirror create|run|remove|status`."""

from __future__ import annotations

from typing import Annotated, Any

import aiohttp
import orjson
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn

from cli import replication
from cli.runtime import config, fail, run, run_until_signalled
from cli.source import free_ports
from mirror import STATUS_FIELDS, LoadStats, create_mirror, run_region
from volume.client import SourceClient
from volume.config import MirrorConfig, write_config
from volume.errors import MirrorRemovedError

mirror_app = typer.Typer(help="Create, run and inspect mirror regions.")


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
def run_daemon(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Run the region daemon (changelog follower and status API) until SIGTERM."""
    region = config(ctx).mirror_region(name)
    run_until_signalled(lambda stop: run_region(region, stop))


@mirror_app.command("remove")
def remove(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
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


async def fetch_status(api: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(headers=headers, timeout=timeout) as s,
        s.get(f"{api.rstrip('/')}/v1/status") as resp,
    ):
        data: dict[str, Any] = await resp.json()
        return data


@mirror_app.command("status")
def status(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """State, applied version, lag and backlog of a running region daemon."""
    cfg = config(ctx)
    mcfg = cfg.mirror(name)

    async def go() -> dict[str, Any]:
        try:
            return await fetch_status(mcfg.api, cfg.token)
        except (aiohttp.ClientError, TimeoutError) as exc:
            fail(
                f"mirror {name!r} daemon does not answer at {mcfg.api}: {exc}",
                f"start it: mirrorfs --config {cfg.path} mirror run {name}",
            )

    st = run(go())
    if json:
        typer.echo(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
        return
    console = Console()
    for key in STATUS_FIELDS:
        console.print(f"{key:>16}: {st.get(key)}")
