"""Claims (issue 10): (a) a sequential read of a file through a mirror region's client runs at
>= 80% of raw parallel GETs of the same blocks from the same bucket, both when the file is
copied (mirror bucket) and when it is not yet (fallback to the source bucket, written back into
the mirror bucket); (b) time to first byte, copied vs fallback; (c) the model-load storm: N
processes of the region reading one file not yet copied cost the source bucket about one copy
(source bytes served / file size), at what aggregate throughput.

Starts two SeaweedFS servers (source region, mirror region), one PostgreSQL, a one-node source
and the region daemon (replicator paused: only readers copy), then per round writes a fresh
file of --size at the source and measures, in this order: raw GETs of its blocks from the
source bucket, the client's fallback read, raw GETs from the mirror bucket (the blocks are
there now), the client's copied read. Raw GETs are aiobotocore `get_object` with the client's
readahead in flight (DEFAULT_READAHEAD); the client verifies every block's checksum, raw does
not. Ratios are paired by round (the median of per-round ratios). The storm's egress is metered
by tests/servers/faultproxy.py in front of the source bucket, outside the code measured: the
storm readers use a copy of the config whose source bucket URL goes through the proxy.

    python -m scenarios.bench_client [--size-mib 1024] [--rounds 3] [--ttfb-samples 10]
        [--storm-readers 8] [--storm-size-mib 256]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from cli.connect import open_client
from cli.source import free_ports
from fallback import FsClient
from fallback.reader import DEFAULT_READAHEAD
from mirror import CopyQueue, Database
from mirror.create import create_mirror
from objstore.keys import BLOCK_PREFIX, block_key
from scenarios import storm_reader
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from tests.servers.faultproxy import FaultProxy
from tests.servers.postgres import PostgresServer, short_data_dir
from tests.servers.seaweed import SeaweedServer
from volume.config import MirrorConfig, load_config, write_config

MIB = 1024 * 1024
REGION = "eu"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


class Bench:
    def __init__(
        self,
        cluster: SourceCluster,
        region: MirrorRegion,
        db: Database,
        src: SeaweedServer,
        dst: SeaweedServer,
        src_bucket: str,
        dst_bucket: str,
    ) -> None:
        self.cluster, self.region, self.db = cluster, region, db
        self.src, self.dst = src, dst
        self.src_bucket, self.dst_bucket = src_bucket, dst_bucket
        self.seed = os.urandom(4 * MIB)
        self.files = 0
        self.raw_clients: dict[str, Any] = {}

    def data(self, size: int) -> bytes:
        """`size` bytes no other file of the run has (distinct per 4 MiB, cheap to make)."""
        self.files += 1
        out = bytearray()
        n = 0
        while len(out) < size:
            out += hashlib.sha256(f"{self.files}:{n}".encode()).digest() + self.seed[32:]
            n += 1
        return bytes(out[:size])

    async def write(self, source: FsClient, path: str, size: int) -> list[tuple[str, int]]:
        """Put a fresh file at the source, wait until the replica shows it; its block keys and
        sizes, in file order."""
        async with self.db.acquire() as conn:
            before = int(await conn.fetchval("SELECT coalesce(max(slice_id), 0) FROM blocks"))
        res = await source.put(io.BytesIO(self.data(size)), path)  # type: ignore[arg-type]
        await self.region.wait_applied(res.version)
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT slice_id, idx, size FROM blocks WHERE slice_id > $1 ORDER BY slice_id, idx",
                before,
            )
        return [(block_key(r["slice_id"], r["idx"], r["size"]), int(r["size"])) for r in rows]

    async def wait_copied(self, keys: list[tuple[str, int]], timeout_s: float = 120.0) -> None:
        """Until the replica marks every block of the file copied (the readers' write-backs)."""
        deadline = time.monotonic() + timeout_s
        while True:
            async with self.db.acquire() as conn:
                left = await conn.fetchval(
                    "SELECT count(*) FROM blocks WHERE state <> 'copied'"
                    " AND slice_id = ANY($1::bigint[])",
                    list({int(k.rsplit("/", 1)[1].split("_")[0]) for k, _ in keys}),
                )
            if left == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} blocks still not copied after {timeout_s} s")
            await asyncio.sleep(0.05)

    async def raw_get(
        self, server: SeaweedServer, bucket: str, keys: list[tuple[str, int]]
    ) -> float:
        """Seconds to GET every block with DEFAULT_READAHEAD in flight (bytes dropped), on a
        warm client (as the mirror client is: made once, outside the timing)."""
        s = self.raw_clients[server.endpoint]
        queue: asyncio.Queue[str] = asyncio.Queue()
        for key, _ in keys:
            queue.put_nowait(key)

        async def worker() -> None:
            while not queue.empty():
                resp = await s.get_object(Bucket=bucket, Key=queue.get_nowait())
                async with resp["Body"] as body:
                    await body.read()

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(DEFAULT_READAHEAD):
                tg.create_task(worker())
        return time.perf_counter() - start

    async def open_raw_clients(self, stack: contextlib.AsyncExitStack) -> None:
        session = get_session()
        config = AioConfig(retries={"total_max_attempts": 1}, max_pool_connections=64)
        for server in (self.src, self.dst):
            self.raw_clients[server.endpoint] = await stack.enter_async_context(
                session.create_client(
                    "s3", endpoint_url=server.endpoint, region_name="us-east-1", config=config
                )
            )

    @staticmethod
    async def client_read(client: FsClient, path: str) -> tuple[float, float, int]:
        """(seconds to read the whole file, time to first byte, bytes) through `client`."""
        start = time.perf_counter()
        first = None
        n = 0
        async for chunk in client.read(path):
            if first is None:
                first = time.perf_counter() - start
            n += len(chunk)
        return time.perf_counter() - start, first or 0.0, n

    # -- (a) sequential reads ------------------------------------------------------------------

    async def sequential(self, source: FsClient, mirror: FsClient, size: int, rounds: int) -> None:
        rows: dict[str, list[float]] = {}
        for r in range(rounds):
            path = f"/seq-{r}.bin"
            keys = await self.write(source, path, size)
            raw_src = await self.raw_get(self.src, self.src_bucket, keys)
            fallback, _, n = await self.client_read(mirror, path)
            assert n == size, f"fallback read {n} bytes of {size}"
            await self.wait_copied(keys)
            raw_dst = await self.raw_get(self.dst, self.dst_bucket, keys)
            copied, _, n = await self.client_read(mirror, path)
            assert n == size, f"copied read {n} bytes of {size}"
            for name, secs in (
                ("raw GET, source bucket", raw_src),
                ("client, not copied (fallback)", fallback),
                ("raw GET, mirror bucket", raw_dst),
                ("client, copied", copied),
            ):
                rows.setdefault(name, []).append(size / MIB / secs)
        print(
            f"(a) sequential read, {size // MIB} MiB, readahead {DEFAULT_READAHEAD},"
            f" median of {rounds} round(s)"
        )
        for name, values in rows.items():
            print(f"    {name:32s} {statistics.median(values):8.1f} MiB/s")
        for client_row, raw_row in (
            ("client, not copied (fallback)", "raw GET, source bucket"),
            ("client, copied", "raw GET, mirror bucket"),
        ):
            paired = statistics.median(
                c / b for c, b in zip(rows[client_row], rows[raw_row], strict=True)
            )
            print(f"    {client_row} / {raw_row}: {paired:.2f} (target >= 0.80)")

    # -- (b) time to first byte ---------------------------------------------------------------

    async def ttfb(self, source: FsClient, mirror: FsClient, samples: int) -> None:
        fallback: list[float] = []
        copied: list[float] = []
        raw: list[float] = []
        for i in range(samples):
            path = f"/ttfb-{i}.bin"
            keys = await self.write(source, path, 4 * MIB)
            raw.append(await self.raw_get(self.src, self.src_bucket, keys))
            fallback.append((await self.client_read(mirror, path))[1])
            await self.wait_copied(keys)
            copied.append((await self.client_read(mirror, path))[1])
        ms = [(n, [v * 1000 for v in vs]) for n, vs in (("fallback", fallback), ("copied", copied))]
        raw_ms = [v * 1000 for v in raw]
        print(f"(b) time to first byte, 4 MiB file, {samples} samples (client warm)")
        for name, values in [*ms, ("raw GET of the block, source", raw_ms)]:
            print(f"    {name:30s} p50 {pct(values, 50):7.1f} ms   p90 {pct(values, 90):7.1f} ms")
        ratio = statistics.median(f / c for f, c in zip(fallback, copied, strict=True))
        print(f"    fallback / copied, median of per-sample ratios: {ratio:.2f}")

    # -- (c) the storm ------------------------------------------------------------------------

    async def storm(self, source: FsClient, readers: int, size: int) -> None:
        path = "/storm.bin"
        keys = await self.write(source, path, size)
        raw = await self.raw_get(self.src, self.src_bucket, keys)
        with FaultProxy(self.src.endpoint) as proxy:
            cfg = load_config(self.cluster.config_path)
            proxied = f"s3://{self.src_bucket}?endpoint={proxy.url}"
            storm_cfg = cfg.model_copy(
                update={"source": cfg.source.model_copy(update={"bucket": proxied})}
            )
            config = self.cluster.config_path.with_name("storm.toml")
            write_config(storm_cfg, config)
            results, wall = await storm_processes(config, path, readers)
            served = sum(
                n
                for (method, p), n in proxy.body_bytes().items()
                if method == "GET" and f"/{BLOCK_PREFIX}" in p
            )
        sums = {r["sha256"] for r in results}
        assert len(sums) == 1 and all(r["size"] == size for r in results), "storm: wrong bytes"
        aggregate = readers * size / MIB / wall
        print(f"(c) storm: {readers} processes read one {size // MIB} MiB file, not copied")
        print(f"    source bytes served / file size: {served / size:.3f} (target <= 1.25)")
        print(
            f"    aggregate {aggregate:.1f} MiB/s over {wall:.1f} s;"
            f" per reader p50 {pct([r['seconds'] for r in results], 50):.1f} s,"
            f" ttfb p50 {pct([r['ttfb_s'] * 1000 for r in results], 50):.0f} ms"
        )
        print(
            f"    aggregate / one raw GET stream of the source ({size / MIB / raw:.0f} MiB/s):"
            f" {aggregate / (size / MIB / raw):.2f}"
        )


async def storm_processes(config: Path, path: str, n: int) -> tuple[list[dict[str, Any]], float]:
    """N scenarios.storm_reader processes, started together once all are ready; (results,
    seconds from go to the last result)."""
    async with storm_reader.readers(config, REGION, path, n, start_timeout_s=120) as procs:
        start = time.perf_counter()
        await storm_reader.go(procs)
        results = await storm_reader.results_of(procs, timeout_s=3600)
        return results, time.perf_counter() - start


@contextlib.asynccontextmanager
async def region_up(
    tmp: Path, src: SeaweedServer, dst: SeaweedServer, dsn: str
) -> AsyncIterator[Bench]:
    src_bucket, dst_bucket = "bench-source", "bench-mirror"
    src.create_bucket(src_bucket)
    dst.create_bucket(dst_bucket)
    async with SourceCluster.running(
        tmp / "vol", nodes=1, bucket=f"s3://{src_bucket}?endpoint={src.endpoint}"
    ) as cluster:
        mcfg = MirrorConfig(
            bucket=f"s3://{dst_bucket}?endpoint={dst.endpoint}",
            api=f"http://127.0.0.1:{free_ports(1)[0]}",
            data_dir=f"mirrors/{REGION}",
            dsn=dsn,
        )
        await create_mirror(load_config(cluster.config_path), mcfg, REGION)
        region = MirrorRegion(cluster, REGION, dsn)
        async with await Database.connect(dsn) as db:
            await CopyQueue(db).set_paused(True)  # only the readers copy
            region.start()
            try:
                yield Bench(cluster, region, db, src, dst, src_bucket, dst_bucket)
            finally:
                region.stop()


async def bench(tmp: Path, src: SeaweedServer, dst: SeaweedServer, dsn: str, args: Any) -> None:
    async with region_up(tmp, src, dst, dsn) as b:
        cfg = load_config(b.cluster.config_path)
        source = await FsClient.for_source(cfg, uid=0, gid=0)
        mirror = await open_client(cfg, REGION, uid=0, gid=0)
        async with source, mirror, contextlib.AsyncExitStack() as stack:
            await b.open_raw_clients(stack)
            await b.sequential(source, mirror, args.size_mib * MIB, args.rounds)
            await b.ttfb(source, mirror, args.ttfb_samples)
            await b.storm(source, args.storm_readers, args.storm_size_mib * MIB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttfb-samples", type=int, default=10)
    parser.add_argument("--storm-readers", type=int, default=8)
    parser.add_argument("--storm-size-mib", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "mirrorfs")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "mirrorfs-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    pg_dir = short_data_dir()
    with tempfile.TemporaryDirectory(prefix="mfs-bench-") as tmp:
        src = SeaweedServer.start(Path(tmp) / "source")
        dst = SeaweedServer.start(Path(tmp) / "mirror")
        pg = PostgresServer.start(pg_dir)
        try:
            pg.create_database("bench")
            asyncio.run(bench(Path(tmp), src, dst, pg.dsn_for("bench"), args))
        finally:
            pg.stop()
            src.stop()
            dst.stop()
            shutil.rmtree(pg_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
