"""Claims: (a) a new 4 MiB block is readable in the mirror bucket within 2x the time of one
direct GET+PUT of it, measured from the commit of its pending row; (b) bulk copy throughput of
the replicator is >= 80% of the best plain parallel copy between the same buckets.

Starts two SeaweedFS servers (source region, mirror region) and one PostgreSQL, then prints:
- (a) p50/p90 of commit -> copied (so readable) in the mirror, with an idle replicator,
  beside p50/p90 of one direct aiobotocore GET+PUT of a same-size block, alternating rounds;
- (b) MiB/s copying --blocks x 4 MiB source -> mirror: the replicator (with and without the
  "already in the mirror?" check), plain aiobotocore GET+PUT with the same concurrency (the
  baseline: on the wire as S3Store talks; and with botocore's default signing and checksums),
  s5cmd (download to a tmpfs dir, then upload: s5cmd cannot copy between two endpoints);
  plus, with both buckets on one server, the replicator by GET+PUT and with copy_mode server
  (CopyObject, then a read-back to check xxh3), and s5cmd's server-side `cp 's3://a/*' s3://b/`.
Rounds rotate the contenders so machine noise hits all alike; medians are printed, and each
contender's median ratio to the aiobotocore run of the same round.

    python -m scenarios.bench_replication [--blocks 128] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from mirror import Database
from mirror.replicate import Replicator, ReplicatorConfig
from objstore import open_store
from objstore.checksum import checksum
from objstore.keys import block_key
from objstore.s3 import crc32
from tests.servers.postgres import PostgresServer, short_data_dir
from tests.servers.seaweed import SeaweedServer

MIB = 1024 * 1024
BLOCK = 4 * MIB
SETTLE_S = 2.0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


class Bench:
    def __init__(self, src: SeaweedServer, dst: SeaweedServer, db: Database, concurrency: int):
        self.src, self.dst, self.db, self.concurrency = src, dst, db, concurrency
        self.data = [os.urandom(BLOCK) for _ in range(4)]

    def url(self, server: SeaweedServer, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={server.endpoint}"

    async def fill_source(self, bucket: str, blocks: int, first_slice: int) -> list[str]:
        """`blocks` distinct 4 MiB objects under block keys; returns their keys."""
        store = await open_store(self.url(self.src, bucket), name="bench-src")
        keys = [block_key(first_slice + i, 0, BLOCK) for i in range(blocks)]
        sem = asyncio.Semaphore(16)

        async def put(i: int) -> None:
            async with sem:
                await store.put(keys[i], self._block(i))

        await asyncio.gather(*(put(i) for i in range(blocks)))
        await store.aclose()
        return keys

    def _block(self, i: int) -> bytes:
        # distinct bytes per block without generating GBs of randomness
        return i.to_bytes(8, "little") + self.data[i % len(self.data)][8:]

    async def enqueue(self, first_slice: int, blocks: int, data_from: int = 0) -> None:
        """Pending rows for blocks whose bytes are `_block(data_from + i)`."""
        rows = [
            (first_slice + i, 0, BLOCK, checksum(self._block(data_from + i)), "pending")
            for i in range(blocks)
        ]
        async with self.db.acquire() as conn:
            await conn.copy_records_to_table(
                "blocks", records=rows, columns=("slice_id", "idx", "size", "checksum", "state")
            )

    async def wait_copied(self) -> None:
        while True:
            async with self.db.acquire() as conn:
                left = await conn.fetchval("SELECT count(*) FROM blocks WHERE state <> 'copied'")
            if left == 0:
                return
            await asyncio.sleep(0.02)

    async def poll_copied(self, slice_id: int, timeout_s: float = 60.0) -> None:
        """Until the row says copied. Polling the replica (a cheap query on one connection)
        rather than HEADing the mirror: a tight HEAD loop through aiobotocore costs enough CPU
        on this event loop to slow down the very copy it is timing."""
        deadline = time.monotonic() + timeout_s
        async with self.db.acquire() as conn:
            while time.monotonic() < deadline:
                state = await conn.fetchval(
                    "SELECT state FROM blocks WHERE slice_id = $1 AND idx = 0", slice_id
                )
                if state == "copied":
                    return
                await asyncio.sleep(0.002)
        raise TimeoutError(f"block of slice {slice_id} not copied within {timeout_s} s")

    # -- (b) bulk ---------------------------------------------------------------------------

    async def replicator_bulk(
        self,
        src_bucket: str,
        first: int,
        n: int,
        check: bool,
        *,
        one_server: bool = False,
        server_side: bool = False,
    ) -> float:
        dst_bucket = self.new_bucket(self.dst)
        src_server = self.dst if one_server else self.src
        source = await open_store(self.url(src_server, src_bucket), name="source")
        mirror = await open_store(self.url(self.dst, dst_bucket), name="mirror")
        async with self.db.acquire() as conn:
            await conn.execute("TRUNCATE blocks")
        rep = Replicator(
            self.db,
            source,
            mirror,
            ReplicatorConfig(
                concurrency=self.concurrency, check_existing=check, server_side=server_side
            ),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(rep.run(stop))
        await asyncio.sleep(0.3)  # idle and listening
        start = time.perf_counter()
        await self.enqueue(first, n)
        await self.wait_copied()
        secs = time.perf_counter() - start
        stop.set()
        await task
        await source.aclose()
        await mirror.aclose()
        self.dst.delete_bucket(dst_bucket)
        return n * 4 / secs

    async def plain_bulk(self, src_bucket: str, keys: list[str], *, tuned: bool = True) -> float:
        """GET+PUT with plain aiobotocore: `tuned`, as S3Store talks (no payload SHA-256, no
        flexible checksums, a CRC32 header on each PUT), else botocore's defaults."""
        dst_bucket = self.new_bucket(self.dst)
        session = get_session()
        wire: dict[str, Any] = {
            "s3": {"payload_signing_enabled": False},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        config = AioConfig(
            retries={"total_max_attempts": 1}, max_pool_connections=64, **(wire if tuned else {})
        )
        extra: dict[str, Any] = {}
        async with (
            session.create_client(
                "s3", endpoint_url=self.src.endpoint, region_name="us-east-1", config=config
            ) as s,
            session.create_client(
                "s3", endpoint_url=self.dst.endpoint, region_name="us-east-1", config=config
            ) as d,
        ):

            async def copy(key: str) -> None:
                resp = await s.get_object(Bucket=src_bucket, Key=key)
                async with resp["Body"] as body:
                    data = await body.read()
                if tuned:
                    extra["ChecksumCRC32"] = crc32(data)
                await d.put_object(Bucket=dst_bucket, Key=key, Body=data, **extra)

            secs = await run_parallel(keys, self.concurrency, copy)
        self.dst.delete_bucket(dst_bucket)
        return len(keys) * 4 / secs

    def s5cmd_via_dir(self, src_bucket: str, n: int) -> float:
        dst_bucket = self.new_bucket(self.dst)
        tmp = Path(tempfile.mkdtemp(prefix="mfs-s5-", dir="/dev/shm"))
        try:
            start = time.perf_counter()
            s5cmd(self.src.endpoint, self.concurrency, "cp", f"s3://{src_bucket}/*", f"{tmp}/")
            s5cmd(self.dst.endpoint, self.concurrency, "cp", f"{tmp}/*", f"s3://{dst_bucket}/")
            secs = time.perf_counter() - start
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self.dst.delete_bucket(dst_bucket)
        return n * 4 / secs

    def s5cmd_same_server(self, src_bucket: str, n: int) -> float:
        dst_bucket = self.new_bucket(self.dst)
        start = time.perf_counter()
        s5cmd(
            self.dst.endpoint, self.concurrency, "cp", f"s3://{src_bucket}/*", f"s3://{dst_bucket}/"
        )
        secs = time.perf_counter() - start
        self.dst.delete_bucket(dst_bucket)
        return n * 4 / secs

    def new_bucket(self, server: SeaweedServer) -> str:
        name = f"b-{uuid.uuid4().hex[:10]}"
        server.create_bucket(name)
        return name

    # -- (a) latency ------------------------------------------------------------------------

    async def latency(self, src_bucket: str, rounds: int, first: int) -> None:
        dst_bucket = self.new_bucket(self.dst)
        # Its own bucket for the direct copies: SeaweedFS (64 MiB volumes here) stalls the
        # PUT that fills a bucket's volume; sharing one bucket, every 8th round's first PUT
        # (always the replicator's) would pay for both.
        direct_bucket = self.new_bucket(self.dst)
        source = await open_store(self.url(self.src, src_bucket), name="source")
        mirror = await open_store(self.url(self.dst, dst_bucket), name="mirror")
        async with self.db.acquire() as conn:
            await conn.execute("TRUNCATE blocks")
        rep = Replicator(self.db, source, mirror, ReplicatorConfig(concurrency=self.concurrency))
        stop = asyncio.Event()
        task = asyncio.create_task(rep.run(stop))
        session = get_session()
        config = AioConfig(retries={"total_max_attempts": 1}, max_pool_connections=64)
        repl: list[float] = []
        direct: list[float] = []
        async with (
            session.create_client(
                "s3", endpoint_url=self.src.endpoint, region_name="us-east-1", config=config
            ) as s,
            session.create_client(
                "s3", endpoint_url=self.dst.endpoint, region_name="us-east-1", config=config
            ) as d,
        ):
            await asyncio.sleep(0.5)
            for i in range(rounds):
                key = block_key(first + i, 0, BLOCK)
                await source.put(key, self._block(i))
                start = time.perf_counter()
                await self.enqueue(first + i, 1, data_from=i)  # autocommit: the commit applied
                await self.poll_copied(first + i)
                repl.append((time.perf_counter() - start) * 1000)
                await mirror.head(key)  # copied means readable (marked only after the PUT)
                other = block_key(first + 100_000 + i, 0, BLOCK)
                await source.put(other, self._block(i))
                start = time.perf_counter()
                resp = await s.get_object(Bucket=src_bucket, Key=other)
                async with resp["Body"] as body:
                    data = await body.read()
                await d.put_object(Bucket=direct_bucket, Key=other, Body=data)
                direct.append((time.perf_counter() - start) * 1000)
                await asyncio.sleep(0.2)  # idle between rounds
        stop.set()
        await task
        await source.aclose()
        await mirror.aclose()
        self.dst.delete_bucket(dst_bucket)
        self.dst.delete_bucket(direct_bucket)
        print(f"(a) commit -> copied (readable) in mirror, 4 MiB block, idle, {rounds} rounds")
        print(f"    replicator: p50 {pct(repl, 50):7.1f} ms   p90 {pct(repl, 90):7.1f} ms")
        print(f"    direct GET+PUT: p50 {pct(direct, 50):7.1f} ms   p90 {pct(direct, 90):7.1f} ms")
        paired = statistics.median(r / d for r, d in zip(repl, direct, strict=True))
        print(f"    replicator / direct, median of per-round ratios: {paired:.2f} (target <= 2)")


async def run_parallel(keys: list[str], n: int, fn: Callable[[str], Awaitable[Any]]) -> float:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for k in keys:
        queue.put_nowait(k)

    async def worker() -> None:
        while not queue.empty():
            await fn(queue.get_nowait())

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(worker())
    return time.perf_counter() - start


def s5cmd(endpoint: str, workers: int, *args: str) -> None:
    exe = Path(sys.executable).parent / "s5cmd"
    cmd = [str(exe), "--endpoint-url", endpoint, "--numworkers", str(workers), *args]
    subprocess.run(cmd, check=True, capture_output=True)


async def bench(
    src: SeaweedServer,
    dst: SeaweedServer,
    dsn: str,
    blocks: int,
    rounds: int,
    concurrency: int,
    latency_rounds: int = 20,
) -> None:
    async with await Database.connect(dsn) as db:
        await db.migrate()
        b = Bench(src, dst, db, concurrency)
        src_bucket = b.new_bucket(src)
        await b.latency(src_bucket, latency_rounds, first=1_000_000)
        keys = await b.fill_source(src_bucket, blocks, first_slice=1)
        same_bucket = b.new_bucket(dst)  # for s5cmd's server-side copy on one server
        same = await open_store(b.url(dst, same_bucket), name="same")
        for i, key in enumerate(keys):
            await same.put(key, b._block(i))
        await same.aclose()
        results: dict[str, list[float]] = {}
        for r in range(rounds):
            runs: dict[str, Callable[[], Awaitable[float]]] = {
                "replicator": lambda: b.replicator_bulk(src_bucket, 1, blocks, True),
                "replicator, no presence check": lambda: b.replicator_bulk(
                    src_bucket, 1, blocks, False
                ),
                "aiobotocore GET+PUT": lambda: b.plain_bulk(src_bucket, keys),
                "aiobotocore GET+PUT, botocore defaults": lambda: b.plain_bulk(
                    src_bucket, keys, tuned=False
                ),
                "s5cmd via tmpfs": lambda: asyncio.to_thread(b.s5cmd_via_dir, src_bucket, blocks),
                "replicator, one server": lambda: b.replicator_bulk(
                    same_bucket, 1, blocks, True, one_server=True
                ),
                "replicator, one server, copy_mode server": lambda: b.replicator_bulk(
                    same_bucket, 1, blocks, True, one_server=True, server_side=True
                ),
                "s5cmd cp, one server (server-side)": lambda: asyncio.to_thread(
                    b.s5cmd_same_server, same_bucket, blocks
                ),
            }
            # Rotate the order each round: whoever runs right after a big bucket delete meets
            # the server's background clean-up.
            order = list(runs)
            for name in order[r % len(order) :] + order[: r % len(order)]:
                results.setdefault(name, []).append(await runs[name]())
                await asyncio.sleep(SETTLE_S)
        print(f"(b) bulk copy, {blocks} x 4 MiB, concurrency {concurrency}, median of {rounds}")
        plain = results["aiobotocore GET+PUT"]
        for name, values in results.items():
            # Paired with the aiobotocore run of the same round: noise on a shared machine
            # moves both, so the median of per-round ratios is steadier than a ratio of medians.
            paired = statistics.median(v / p for v, p in zip(values, plain, strict=True))
            print(
                f"    {name:36s} {statistics.median(values):8.1f} MiB/s"
                f"   {paired:5.2f} x aiobotocore (paired by round)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "mirrorfs")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "mirrorfs-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    pg_dir = short_data_dir()
    with tempfile.TemporaryDirectory(prefix="mfs-bench-") as tmp:
        src = SeaweedServer.start(Path(tmp) / "source")
        dst = SeaweedServer.start(Path(tmp) / "mirror")
        pg = PostgresServer.start(pg_dir)
        try:
            pg.create_database("bench")
            asyncio.run(
                bench(src, dst, pg.dsn_for("bench"), args.blocks, args.rounds, args.concurrency)
            )
        finally:
            pg.stop()
            src.stop()
            dst.stop()
            shutil.rmtree(pg_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
