"""Claim: the objstore layers (retry, metrics, logging) cost < 5% of raw aiobotocore throughput.

Puts and gets 4 MiB blocks against a real SeaweedFS S3 server with 16 in flight, alternating the
layered store and plain aiobotocore calls round by round so machine noise hits both alike, and
prints MiB/s of each and their ratio.

    python -m scenarios.bench_objstore [--blocks 64] [--rounds 3] [--inflight 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from objstore import ObjectStore, open_store
from tests.servers.seaweed import SeaweedServer

MIB = 1024 * 1024


async def run_parallel(n: int, inflight: int, fn: Callable[[int], Awaitable[Any]]) -> float:
    """Seconds to run fn(0..n-1) with at most `inflight` at once."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            await fn(queue.get_nowait())

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(inflight):
            tg.create_task(worker())
    return time.perf_counter() - start


async def bench(endpoint: str, bucket: str, blocks: int, rounds: int, inflight: int) -> None:
    data = os.urandom(4 * MIB)
    total_mib = blocks * 4
    store: ObjectStore = await open_store(f"s3://{bucket}?endpoint={endpoint}", name="bench")
    session = get_session()
    config = AioConfig(retries={"total_max_attempts": 1}, max_pool_connections=64)
    results: dict[str, list[float]] = {
        k: [] for k in ("raw put", "layered put", "raw get", "layered get")
    }
    async with session.create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config
    ) as raw:

        async def raw_put(i: int) -> None:
            await raw.put_object(Bucket=bucket, Key=f"raw/{i}", Body=data)

        async def raw_get(i: int) -> None:
            resp = await raw.get_object(Bucket=bucket, Key=f"raw/{i}")
            async with resp["Body"] as body:
                await body.read()

        async def layered_put(i: int) -> None:
            await store.put(f"layered/{i}", data)

        async def layered_get(i: int) -> None:
            await store.get(f"layered/{i}")

        for _ in range(rounds):
            for name, fn in (
                ("raw put", raw_put),
                ("layered put", layered_put),
                ("raw get", raw_get),
                ("layered get", layered_get),
            ):
                secs = await run_parallel(blocks, inflight, fn)
                results[name].append(total_mib / secs)
    await store.aclose()
    print(f"4 MiB blocks x {blocks}, {inflight} in flight, {rounds} rounds (median MiB/s)")
    for verb in ("put", "get"):
        raw_mibs = statistics.median(results[f"raw {verb}"])
        lay_mibs = statistics.median(results[f"layered {verb}"])
        print(
            f"  {verb}: raw aiobotocore {raw_mibs:8.1f} MiB/s   objstore {lay_mibs:8.1f} MiB/s"
            f"   ratio {lay_mibs / raw_mibs:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "mirrorfs")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "mirrorfs-secret")
    with tempfile.TemporaryDirectory(prefix="mfs-bench-") as tmp:
        server = SeaweedServer.start(Path(tmp))
        try:
            server.create_bucket("bench")
            asyncio.run(bench(server.endpoint, "bench", args.blocks, args.rounds, args.inflight))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
