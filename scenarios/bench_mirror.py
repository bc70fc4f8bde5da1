"""Claims: a mirror replica shows a source commit within 10 ms (p50) / 50 ms (p99) at 1,000
metadata ops/s on loopback (p99 <= 10 ms at 50 ops/s), catches up a 100,000-record backlog at
>= 10,000 records/s, and `mirror create` of a 1M-inode source takes <= 60 s.

A real 3-node source (journal on), a real PostgreSQL, the region daemon as its own process.
Lag is measured from the writer's commit acknowledgement to the replica's watermark covering
that version (a poller reads the watermark every millisecond).

    python -m scenarios.bench_mirror [--backlog 100000] [--inodes 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg

from mirror import CopyQueue, Database
from scenarios.bench_source import pct
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, make_files
from tests.servers.postgres import PostgresServer, short_data_dir


async def lag_at(
    cluster: SourceCluster, dsn: str, rate: float, seconds: float, *, report: bool = True
) -> None:
    conn = await asyncpg.connect(dsn)
    seen: dict[int, float] = {}
    acked: dict[int, float] = {}
    done = asyncio.Event()

    async def poll() -> None:
        last = 0
        while not done.is_set() or any(v > last for v in acked):
            v = await conn.fetchval("SELECT applied_version FROM watermark")
            if v > last:
                now = time.perf_counter()
                for w in range(last + 1, v + 1):
                    seen[w] = now
                last = v
            await asyncio.sleep(0.001)

    poller = asyncio.create_task(poll())
    per_request = max(1, int(rate // 100))  # 1,000 ops/s: 10 ops per request, 100 requests/s
    interval = per_request / rate
    async with cluster.client() as c:
        start = time.perf_counter()
        i = 0
        inflight: set[asyncio.Task[None]] = set()

        async def one(j: int) -> None:
            res = await c.ops(
                [
                    {
                        "op": "mkdir",
                        "args": {"path": f"/lag{rate:.0f}_{seconds:.0f}_{j}_{k}", "mode": 0o755},
                    }
                    for k in range(per_request)
                ]
            )
            t = time.perf_counter()
            for r in res.results:
                acked[r["version"]] = t

        while time.perf_counter() - start < seconds:
            task = asyncio.create_task(one(i))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            i += 1
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
        await asyncio.gather(*inflight)
        achieved = len(acked) / (time.perf_counter() - start)
    done.set()
    await asyncio.wait_for(poller, 60)
    await conn.close()
    lags = [max(0.0, (seen[v] - t) * 1000) for v, t in acked.items()]
    if not report:
        return
    print(
        f"lag at {achieved:6.0f} ops/s: p50 {pct(lags, 50):6.2f} ms  p99 {pct(lags, 99):6.2f} ms"
        f"  max {max(lags):6.1f} ms  ({len(lags)} ops)"
    )


async def catch_up(cluster: SourceCluster, region: MirrorRegion, records: int) -> None:
    """The follower's apply rate. Block copying is paused: these files' blocks exist only as
    metadata, and the replicator failing 50k copies would compete for the same two cores."""
    async with await Database.connect(region.dsn) as db:
        await CopyQueue(db).set_paused(True)
    region.stop()
    head = await make_files(cluster, "backlog", records // 2, batch=500)
    start_version = (await region.watermark())[0]
    region.start()
    while (await region.watermark())[0] == start_version:
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    v0 = (await region.watermark())[0]
    await region.wait_applied(head, timeout_s=600)
    secs = time.perf_counter() - t0
    print(
        f"catch-up:   {(head - v0) / secs:8.0f} records/s ({head - start_version} records behind)"
    )


async def create_big(tmp: Path, pg: PostgresServer, inodes: int) -> None:
    cluster = SourceCluster(tmp / "big", nodes=3)
    cluster.start_all()
    try:
        await cluster.wait_leader()
        t = time.perf_counter()
        await make_files(cluster, "many", inodes, batch=1000)
        print(f"populate:   {inodes} files with a slice each in {time.perf_counter() - t:.1f}s")
        region = MirrorRegion(cluster, "big", pg.create_database("big"))
        t = time.perf_counter()
        await region.create()
        print(f"create:     mirror create of {inodes} inodes in {time.perf_counter() - t:.1f}s")
    finally:
        cluster.stop_all()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="mfs-bench-") as tmp:
        pg = PostgresServer.start(short_data_dir())
        cluster = SourceCluster(Path(tmp) / "vol", nodes=3)
        cluster.start_all()
        region = MirrorRegion(cluster, "eu", pg.create_database("eu"))
        try:
            await cluster.wait_leader()
            await region.create()
            region.start()
            await region.wait_applied(1)
            await lag_at(cluster, region.dsn, 50, 3, report=False)  # warm-up: connections, caches
            await lag_at(cluster, region.dsn, 50, 10)
            await lag_at(cluster, region.dsn, 1000, 10)
            if args.backlog:
                await catch_up(cluster, region, args.backlog)
        finally:
            region.stop()
            cluster.stop_all()
        if args.inodes:
            await create_big(Path(tmp), pg, args.inodes)
        pg.stop()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--inodes", type=int, default=100_000)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
