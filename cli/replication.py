"""`mirrorfs mirror pause|resume|retry|warmup|verify|worker NAME`: operating the replicator.

Each verb talks to the mirror's PostgreSQL (the block table is the copy queue), so it works
while the region daemon runs, from any machine that reaches the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import orjson
import typer
from rich.progress import BarColumn, Progress, TextColumn

from cli.runtime import config, run, run_until_signalled
from mirror import (
    CopyQueue,
    Database,
    ReplicatorConfig,
    open_database,
    pending_under,
    run_workers,
    verify,
)
from objstore import open_store
from volume.config import MirrorRegion

T = TypeVar("T")
WARMUP_POLL_S = 0.5


def with_db(region: MirrorRegion, fn: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        async with open_database(region) as db:
            return await fn(db)

    return run(main())


def register(mirror_app: typer.Typer) -> None:
    for fn in (pause, resume, retry, warmup, verify_cmd, worker):
        name = "verify" if fn is verify_cmd else fn.__name__
        mirror_app.command(name)(fn)


def pause(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Pause block replication (the follower keeps applying metadata)."""
    region = config(ctx).mirror_region(name)
    with_db(region, lambda db: CopyQueue(db).set_paused(True))
    typer.echo(f"replication of {name!r} paused")


def resume(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Resume block replication."""
    region = config(ctx).mirror_region(name)
    with_db(region, lambda db: CopyQueue(db).set_paused(False))
    typer.echo(f"replication of {name!r} resumed")


def retry(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Re-queue every block that failed (attempts reset)."""
    region = config(ctx).mirror_region(name)
    n = with_db(region, lambda db: CopyQueue(db).retry_failed())
    typer.echo(f"{n} failed block(s) re-queued")


def warmup(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    path: Annotated[str, typer.Argument(help="Everything under this path goes first")],
    wait: Annotated[bool, typer.Option(help="Show progress until copied")] = True,
) -> None:
    """Copy the blocks under PATH before anything else, and show progress until they are in."""
    region = config(ctx).mirror_region(name)

    async def go(db: Database) -> None:
        queue = CopyQueue(db)
        raised = await queue.prioritise_path(path)
        typer.echo(f"{raised} pending block(s) under {path} moved to the front of the queue")
        if not wait or not raised:
            return
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
        ) as bar:
            task = bar.add_task(f"warming up {path}", total=raised)
            while True:
                left = await pending_under(db, path)
                bar.update(task, completed=max(0, raised - left))
                if left == 0:
                    return
                await asyncio.sleep(WARMUP_POLL_S)

    with_db(region, go)


def verify_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    path: Annotated[str | None, typer.Argument(help="Only under this path")] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Re-copy what is missing or corrupt")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="JSON report")] = False,
) -> None:
    """Check that every copied block is in the mirror bucket with the right checksum."""
    region = config(ctx).mirror_region(name)

    async def go(db: Database) -> bool:
        mirror_store = await open_store(region.bucket, name="mirror")
        source_store = await open_store(region.source_bucket, name="source") if repair else None
        try:
            start = time.perf_counter()
            report = await verify(db, mirror_store, path, repair=repair, source_store=source_store)
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


def worker(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    concurrency: Annotated[int, typer.Option(min=1, max=1024)] = 16,
    bandwidth: Annotated[float | None, typer.Option(help="Cap in bytes/s for this worker")] = None,
) -> None:
    """Run extra copy workers for NAME (on this or another machine, same PostgreSQL)."""
    region = config(ctx).mirror_region(name)
    options = ReplicatorConfig(concurrency=concurrency, bandwidth_bytes_per_s=bandwidth)
    run_until_signalled(lambda stop: run_workers(region, stop, options))
