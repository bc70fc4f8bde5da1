"""`mirrorfs mirror pause|resume|retry|warmup|verify|worker NAME`: operating the replicator.

Each verb talks to the mirror's PostgreSQL (the block table is the copy queue), so it works
while the region daemon runs, from any machine that reaches the database.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cli.logs import bind_process
from cli.runtime import fail, mirror_region, run, run_until_signalled
from mirror import (
    CopyQueue,
    Database,
    ReplicatorConfig,
    VerifyReport,
    open_database,
    pending_under,
    run_workers,
    verify,
)
from objstore import open_store
from volume.config import MirrorRegion

T = TypeVar("T")
WARMUP_POLL_S = 0.5
WORKER_LINE_EVERY_S = 10.0
MirrorName = Annotated[str, typer.Argument(help="Mirror region (a name in the config)")]


def with_db(region: MirrorRegion, fn: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        async with open_database(region) as db:
            return await fn(db)

    return run(main())


def register(mirror_app: typer.Typer) -> None:
    for fn in (pause, resume, retry, warmup, verify_cmd, worker):
        name = "verify" if fn is verify_cmd else fn.__name__
        mirror_app.command(name)(fn)


def pause(ctx: typer.Context, name: MirrorName) -> None:
    """Pause block replication (the follower keeps applying metadata)."""
    _, region = mirror_region(ctx, name)
    with_db(region, lambda db: CopyQueue(db).set_paused(True))
    typer.echo(f"replication of {name!r} paused")


def resume(ctx: typer.Context, name: MirrorName) -> None:
    """Resume block replication."""
    _, region = mirror_region(ctx, name)
    with_db(region, lambda db: CopyQueue(db).set_paused(False))
    typer.echo(f"replication of {name!r} resumed")


def retry(ctx: typer.Context, name: MirrorName) -> None:
    """Re-queue every block that failed (attempts reset)."""
    _, region = mirror_region(ctx, name)
    n = with_db(region, lambda db: CopyQueue(db).retry_failed())
    typer.echo(f"{n} failed block(s) re-queued")


def warmup(
    ctx: typer.Context,
    name: MirrorName,
    path: Annotated[str, typer.Argument(help="Everything under this path goes first")],
    wait: Annotated[bool, typer.Option(help="Show progress until copied")] = True,
) -> None:
    """Copy the blocks under PATH before anything else, and show progress until they are in.

    Reports what remains to copy under PATH (however often it is run); on a paused mirror it
    says so and exits 1 instead of waiting for copies that will not happen."""
    _, region = mirror_region(ctx, name)

    async def go(db: Database) -> int:
        queue = CopyQueue(db)
        raised = await queue.prioritise_path(path)
        left = await pending_under(db, path)
        typer.echo(f"{left} block(s) under {path} still to copy ({raised} moved to the front)")
        if left and await queue.is_paused():
            typer.echo(
                f"error: replication of {name!r} is paused: nothing will copy until"
                f" `mirrorfs mirror resume {name}`",
                err=True,
            )
            return 1
        if not wait or not left:
            return 0
        total = left
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} blocks"),
            TimeElapsedColumn(),
        ) as bar:
            task = bar.add_task(f"warming up {path}", total=total)
            while left:
                await asyncio.sleep(WARMUP_POLL_S)
                left = await pending_under(db, path)
                bar.update(task, completed=max(0, total - left))
                if left and await queue.is_paused():
                    bar.console.print(f"replication of {name!r} was paused: {left} block(s) left")
                    return 1
        typer.echo(f"everything under {path} is copied")
        return 0

    code = with_db(region, go)
    if code:
        raise typer.Exit(code)


def verify_cmd(
    ctx: typer.Context,
    name: MirrorName,
    path: Annotated[str | None, typer.Argument(help="Only under this path")] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Re-copy what is missing or corrupt")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="JSON report")] = False,
) -> None:
    """Check that every copied block is in the mirror bucket with the right checksum."""
    _, region = mirror_region(ctx, name)

    async def go(db: Database) -> bool:
        mirror_store = await open_store(region.bucket, name="mirror")
        source_store = await open_store(region.source_bucket, name="source") if repair else None
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not sys.stderr.isatty(),
        )
        task = progress.add_task("verifying", total=None)

        def show(r: VerifyReport) -> None:
            progress.update(
                task,
                description=f"checked {r.blocks_checked:,} block(s), {r.bytes_checked:,} bytes;"
                f" {r.blocks_not_copied:,} not copied yet",
            )

        try:
            start = time.perf_counter()
            with progress:
                report = await verify(
                    db,
                    mirror_store,
                    path,
                    repair=repair,
                    source_store=source_store,
                    on_progress=show,
                )
        finally:
            await mirror_store.aclose()
            if source_store is not None:
                await source_store.aclose()
        if json:
            typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            typer.echo(
                f"checked {report.blocks_checked} block(s) ({report.bytes_checked:,} bytes) in "
                f"{time.perf_counter() - start:.1f}s; {report.blocks_not_copied} not copied yet"
            )
            for p in report.problems:
                fixed = " (repaired)" if p.repaired else ""
                where = f" {', '.join(p.paths)}" if p.paths else ""
                typer.echo(f"  {p.problem}: {p.key}{where}: {p.detail}{fixed}")
        return report.is_ok

    if not with_db(region, go):
        raise typer.Exit(1)


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT as given to a --metrics/--listen option; a clear error otherwise."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        fail(f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9478")
    return host, int(port)


def worker(
    ctx: typer.Context,
    name: MirrorName,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=1024, help="Copies in flight (default: copy_concurrency)"),
    ] = None,
    bandwidth: Annotated[
        float | None,
        typer.Option(min=1, help="Cap in bytes/s (default: copy_bandwidth_bytes_per_s)"),
    ] = None,
    metrics: Annotated[
        str,
        typer.Option(help="Serve GET /metrics at HOST:PORT (port 0: any free port; '': off)"),
    ] = "127.0.0.1:0",
) -> None:
    """Run extra copy workers for NAME (on this or another machine, same PostgreSQL) until
    Ctrl-C or SIGTERM, showing what they copy: a live line on a terminal, a line every
    10 s otherwise."""
    _, region = mirror_region(ctx, name)
    bind_process(volume=region.volume, region=name)
    options = ReplicatorConfig.of(region, concurrency=concurrency, bandwidth_bytes_per_s=bandwidth)
    console = Console(stderr=True)
    with (
        console.status("starting", spinner="dots") if console.is_terminal else nullcontext() as live
    ):
        last = [0.0]

        def show(st: dict[str, Any]) -> None:
            line = (
                f"{name}: {st['replicator_state']}, copied {st['blocks_copied_since_start']:,}"
                f" block(s) since start, {st['copy_bytes_per_s'] / 1e6:.1f} MB/s"
                + (
                    f", held: {st['replicator_hold_reason']}"
                    if st["replicator_hold_reason"]
                    else ""
                )
            )
            if live is not None:
                live.update(line)
            elif time.monotonic() - last[0] >= WORKER_LINE_EVERY_S:
                last[0] = time.monotonic()
                typer.echo(line, err=True)

        def metrics_url(url: str) -> None:
            typer.echo(f"metrics: {url}", err=True)

        run_until_signalled(
            lambda stop: run_workers(
                region,
                stop,
                options,
                on_progress=show,
                metrics_at=listen_address(metrics) if metrics else None,
                on_metrics_url=metrics_url,
            )
        )
