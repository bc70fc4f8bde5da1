"""Claim (DESIGN §9): side by side with SeaweedFS `filer.sync` on the same machine and workload,
mirrorfs's small-file lag p99 and backlog copy throughput are at least equal.

Two `weed server -s3` clusters, A (source side) and B (mirror side). filer.sync runs
`-isActivePassive` from A's filer to B's, restricted to one bucket's directory. mirrorfs runs a
source region (its blocks in a bucket on A) and mirror region "eu" (blocks in a bucket on B,
embedded PostgreSQL), each started through the CLI. Every figure runs both systems on the same
workload, round by round alternately (whoever goes first alternates too):

- small-file lag: 4 KiB files written open-loop at 50 and 200 ops/s by a writer process
  (scenarios/bench_writer.py, the same for both); per file, from the write's acknowledgement
  (mirrorfs: the source client's `put`; filer.sync: the PUT to A's S3) until each system's
  mirror-side read path shows it (mirrorfs: `stat` through the "eu" client, served from the
  replica; filer.sync: HEAD on B's S3). One poller checks every pending file each pass, the
  same for both: the resolution is one pass (reported as a diagnostic).
- backlog copy MiB/s: replication stopped (mirrorfs: the region daemon; filer.sync: the
  process), --backlog-files x 4 MiB written, replication started; MiB / seconds from the start
  until everything is in B (mirrorfs: every block of the replica `copied`; filer.sync: HEAD of
  every object, which filer.sync creates after copying its chunks).
- outage: replication stopped, 500 small files written, started: seconds until all are visible.
- CPU of the replicating process during the 50 ops/s rounds (mirrorfs: `mirror run` and, apart,
  its embedded PostgreSQL; filer.sync: its one process).

    python -m scenarios.bench_filer_sync [--seconds 10] [--rounds 2] [--backlog-files 32]
        [--outage-files 500] [--nodes 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from cli.connect import open_client
from cli.mirror import fetch_status
from fallback import FsClient
from mirror import open_database
from mirror.embedded import postmaster_pid
from scenarios.bench_load import Load, LoadMeter
from scenarios.bench_topology import (
    FilerSync,
    MirrorfsRegions,
    WeedCluster,
    quiet_with_credentials,
)
from volume.errors import FsError

MIB = 1024 * 1024
SMALL = 4096
BIG = 4 * MIB
SYNC_BUCKET = "filersync"
POLL_S = 0.002
REGION = "eu"
SELF = "this benchmark (alone)"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


class Side(Protocol):
    name: str
    writer_pid: int | None

    def writer_target(self) -> tuple[str, str]: ...

    async def write(self, path: str, data: bytes) -> int: ...
    async def visible(self, path: str) -> bool: ...
    async def all_copied(self, paths: list[str], last_version: int) -> bool: ...
    async def watermark(self) -> int | None: ...
    async def ready(self) -> bool: ...
    def stop_replicator(self) -> None: ...
    async def start_replicator(self) -> None: ...
    def replicator_pids(self) -> dict[str, int]: ...


class MirrorfsSide:
    name = "mirrorfs"

    def __init__(self, regions: MirrorfsRegions, source: FsClient, reader: FsClient, db: Any):
        self.regions, self.source, self.reader, self.db = regions, source, reader, db
        self.writer_pid: int | None = None

    def writer_target(self) -> tuple[str, str]:
        return "mirrorfs", str(self.regions.config_path)

    async def write(self, path: str, data: bytes) -> int:
        return (await self.source.put(io.BytesIO(data), path)).version  # type: ignore[arg-type]

    async def visible(self, path: str) -> bool:
        try:
            await self.reader.stat(path)
            return True
        except FsError:
            return False

    async def ready(self) -> bool:
        """The restarted daemon answers its status API (it has started its services)."""
        try:
            await fetch_status(self.regions.cfg.mirror(REGION).api, self.regions.cfg.token)
            return True
        except Exception:  # noqa: BLE001 - not up yet, whatever the reason
            return False

    async def watermark(self) -> int | None:
        async with self.db.acquire() as conn:
            return int(await conn.fetchval("SELECT applied_version FROM watermark"))

    async def all_copied(self, paths: list[str], last_version: int) -> bool:
        async with self.db.acquire() as conn:
            applied = await conn.fetchval("SELECT applied_version FROM watermark")
            if applied < last_version:
                return False
            left = await conn.fetchval("SELECT count(*) FROM blocks WHERE state <> 'copied'")
        return bool(left == 0)

    def stop_replicator(self) -> None:
        self.regions.stop_daemon()

    async def start_replicator(self) -> None:
        self.regions.start_daemon()

    def replicator_pids(self) -> dict[str, int]:
        pids = {} if self.regions.daemon is None else {"mirror run": self.regions.daemon.pid}
        pg = postmaster_pid(self.regions.pg_dir)
        if pg is not None:
            pids["its PostgreSQL"] = pg
        return pids


class FilerSyncSide:
    name = "filer.sync"

    def __init__(self, sync: FilerSync, a: Any, b: Any) -> None:
        self.sync, self.a, self.b = sync, a, b
        self.writer_pid: int | None = None

    def writer_target(self) -> tuple[str, str]:
        return "s3", f"{self.sync.a.endpoint}/{SYNC_BUCKET}"

    async def write(self, path: str, data: bytes) -> int:
        await self.a.put_object(Bucket=SYNC_BUCKET, Key=path.lstrip("/"), Body=data)
        return 0

    async def visible(self, path: str) -> bool:
        try:
            await self.b.head_object(Bucket=SYNC_BUCKET, Key=path.lstrip("/"))
            return True
        except ClientError:
            return False

    async def all_copied(self, paths: list[str], last_version: int) -> bool:
        return await self.visible(paths[-1]) and all(
            await asyncio.gather(*(self.visible(p) for p in paths))
        )

    async def watermark(self) -> int | None:
        return None  # no such thing to read: HEAD is its only view

    async def ready(self) -> bool:
        return True  # a Go binary: up as soon as it runs

    def stop_replicator(self) -> None:
        self.sync.stop()

    async def start_replicator(self) -> None:
        self.sync.start()

    def replicator_pids(self) -> dict[str, int]:
        return {"filer.sync": self.sync.pid}


@dataclass
class Figures:
    """name -> side -> values per round; name -> side -> load per round."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    loads: dict[str, list[Load]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, side: str, value: float) -> None:
        self.values.setdefault(name, {}).setdefault(side, []).append(value)


async def wait_visible(
    side: Side,
    pending: dict[str, float],
    out: list[float],
    done: asyncio.Event,
    limit_s: float,
    cycles: list[float] | None = None,
) -> int:
    """Moves each pending path (acked at the perf_counter value) to `out` (ms) once visible;
    returns how many were still not visible `limit_s` after `done`. `cycles` gets the time of
    each pass over the pending paths (ms): the resolution of the figures."""
    sem = asyncio.Semaphore(32)

    async def check(path: str) -> None:
        async with sem:
            if await side.visible(path):
                out.append((time.perf_counter() - pending.pop(path)) * 1000)

    deadline: float | None = None
    while True:
        if done.is_set():
            if not pending:
                return 0
            deadline = deadline or time.monotonic() + limit_s
            if time.monotonic() > deadline:
                return len(pending)
        if pending:
            t = time.perf_counter()
            await asyncio.gather(*(check(p) for p in list(pending)))
            if cycles is not None:
                cycles.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(POLL_S)


@dataclass
class LagRound:
    lags_ms: list[float] = field(default_factory=list)  # ack -> visible, per file
    ack_ms: list[float] = field(default_factory=list)  # the write itself, per file
    watermark_ms: list[float] = field(default_factory=list)  # ack -> replica covers it
    poll_ms: list[float] = field(default_factory=list)  # one pass of the visibility poller
    missing: int = 0


async def lag_round(side: Side, rate: float, seconds: float, tag: str) -> LagRound:
    """Writes from a scenarios.bench_writer process (its acks on a pipe); visibility polled
    here."""
    out = LagRound()
    pending: dict[str, float] = {}
    acked: dict[int, float] = {}  # version -> ack time (mirrorfs only)
    done = asyncio.Event()
    poller = asyncio.create_task(wait_visible(side, pending, out.lags_ms, done, 60.0, out.poll_ms))

    async def watch_watermark() -> None:
        """Diagnostic beside the read path: when the replica's watermark covers each write."""
        while not done.is_set() or acked:
            applied = await side.watermark()
            if applied is None:
                return
            now = time.perf_counter()
            for v in [v for v in acked if v <= applied]:
                out.watermark_ms.append((now - acked.pop(v)) * 1000)
            await asyncio.sleep(POLL_S)

    watcher = asyncio.create_task(watch_watermark())
    kind, target = side.writer_target()
    args = (kind, target, str(rate), str(seconds), f"/lag/{tag}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scenarios.bench_writer",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    side.writer_pid = proc.pid
    try:
        assert proc.stdin is not None and proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"bench_writer {args}: {line!r} {await proc.stderr.read()!r}")  # type: ignore[union-attr]
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        async for raw in proc.stdout:
            fields = raw.decode().split()
            if fields[:1] == ["done"]:
                break
            if fields[:1] != ["ack"]:
                continue
            _, path, version, t_ack, write_ms = fields
            pending[path] = float(t_ack)
            out.ack_ms.append(float(write_ms))
            if int(version):
                acked[int(version)] = float(t_ack)
        if await proc.wait() != 0:
            raise RuntimeError(f"bench_writer {args} failed: {await proc.stderr.read()!r}")  # type: ignore[union-attr]
    finally:
        side.writer_pid = None
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        done.set()
    out.missing = await poller
    await asyncio.wait_for(watcher, 60)
    return out


async def write_many(side: Side, paths: list[str], size: int, concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    seed = os.urandom(size)
    versions: list[int] = []

    async def one(i: int, path: str) -> None:
        async with sem:
            versions.append(await side.write(path, i.to_bytes(8, "little") + seed[8:]))

    await asyncio.gather(*(one(i, p) for i, p in enumerate(paths)))
    return max(versions)


async def backlog_round(side: Side, files: int, tag: str, figs: Figures | None = None) -> float:
    """MiB/s from the replicator's restart until `files` x 4 MiB written meanwhile are in B."""
    side.stop_replicator()
    paths = [f"/backlog/{tag}/{i}" for i in range(files)]
    last = await write_many(side, paths, BIG, 8)
    start = time.perf_counter()
    await side.start_replicator()
    startup = asyncio.create_task(time_until(side.ready, start))
    deadline = time.monotonic() + 600
    while not await side.all_copied(paths, last):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{side.name}: backlog {tag} not copied in 600 s")
        await asyncio.sleep(0.05)
    secs = time.perf_counter() - start
    if figs is not None:
        figs.add("startup", side.name, await startup)
    return files * BIG / MIB / secs


async def time_until(probe: Callable[[], Awaitable[bool]], start: float) -> float:
    """Seconds from `start` until `probe()` says yes."""
    while not await probe():
        await asyncio.sleep(0.02)
    return time.perf_counter() - start


async def outage_round(side: Side, files: int, tag: str) -> float:
    """Seconds from the replicator's restart until `files` small files written during its
    outage are all visible through the mirror-side read path."""
    side.stop_replicator()
    paths = [f"/outage/{tag}/{i}" for i in range(files)]
    await write_many(side, paths, SMALL, 16)
    start = time.perf_counter()
    await side.start_replicator()
    pending = dict.fromkeys(paths, start)
    seen: list[float] = []
    done = asyncio.Event()
    done.set()
    missing = await wait_visible(side, pending, seen, done, 600.0)
    if missing:
        raise TimeoutError(f"{side.name}: {missing} outage files not visible in 600 s")
    return max(seen) / 1000


async def wait_side_up(side: Side, tag: str) -> None:
    """One write seen through the mirror-side path: the replicator is up and following."""
    path = f"/warm/{tag}"
    await side.write(path, b"warm")
    deadline = time.monotonic() + 120
    while not await side.visible(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{side.name}: not replicating 120 s after start ({tag})")
        await asyncio.sleep(0.05)


async def run_rounds(
    sides: list[Side],
    rounds: int,
    figure: str,
    measure: Callable[[Side, str], Awaitable[float]],
    figs: Figures,
    pids: Callable[[], dict[str, int]],
) -> None:
    for r in range(rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            with LoadMeter(pids, flat=frozenset({SELF})) as meter:
                value = await measure(side, f"{figure}-{side.name}-{r}")
            figs.add(figure, side.name, value)
            figs.loads.setdefault(figure, []).append(meter.load)
            await wait_side_up(side, f"{figure}-{side.name}-{r}")


async def bench(args: argparse.Namespace, tmp: Path, figs: Figures) -> None:
    a = WeedCluster(tmp / "a")
    b = WeedCluster(tmp / "b")
    sync = FilerSync(a, b, tmp, SYNC_BUCKET)
    regions: MirrorfsRegions | None = None
    try:
        a.start()
        b.start()
        for c in (a, b):
            c.create_bucket(SYNC_BUCKET)
        a.create_bucket("mfs-source")
        b.create_bucket("mfs-mirror")
        sync.start()
        regions = MirrorfsRegions(
            tmp / "mfs",
            f"s3://mfs-source?endpoint={a.endpoint}",
            f"s3://mfs-mirror?endpoint={b.endpoint}",
            nodes=args.nodes,
            name=REGION,
        )
        await regions.start_source()
        await regions.create_mirror()
        regions.start_daemon()
        async with sides_open(regions, a, b, sync) as sides:
            for side in sides:
                await wait_side_up(side, f"first-{side.name}")

            def pids() -> dict[str, int]:
                out = {"weed A": a.proc.pid, "weed B": b.proc.pid}  # type: ignore[union-attr]
                for i, p in (regions.nodes if regions else {}).items():
                    out[f"source node {i}"] = p.pid
                for side in sides:
                    out.update(side.replicator_pids())
                    if side.writer_pid is not None:
                        out[f"writer ({side.name})"] = side.writer_pid
                out[SELF] = os.getpid()
                return out

            for rate in (50, 200):

                def lag(side: Side, tag: str, rate: float = rate) -> Awaitable[float]:
                    return lag_figure(side, rate, args.seconds, tag, figs)

                await run_rounds(sides, args.rounds, f"lag{rate}", lag, figs, pids)
            await run_rounds(
                sides,
                args.rounds,
                "backlog",
                lambda s, t: backlog_round(s, args.backlog_files, t, figs),
                figs,
                pids,
            )
            await run_rounds(
                sides,
                args.rounds,
                "outage",
                lambda s, t: outage_round(s, args.outage_files, t),
                figs,
                pids,
            )
    finally:
        sync.stop()
        if regions is not None:
            regions.stop()
        a.stop()
        b.stop()


async def lag_figure(side: Side, rate: float, seconds: float, tag: str, figs: Figures) -> float:
    """One lag round: records p50/p99 and (at 50 ops/s) the replicator's CPU; returns p99."""
    pids = side.replicator_pids()
    before = {k: tree_cpu(v) for k, v in pids.items()}
    t0 = time.perf_counter()
    r = await lag_round(side, rate, seconds, tag)
    wall = time.perf_counter() - t0
    if rate == 50:
        for k, v in pids.items():
            figs.add(f"cpu50 {k}", side.name, 100 * (tree_cpu(v) - before[k]) / wall)
    figs.add(f"lag{rate} p50", side.name, pct(r.lags_ms, 50))
    figs.add(f"ack{rate} p50", side.name, pct(r.ack_ms, 50))
    figs.add(f"poll{rate} p50", side.name, pct(r.poll_ms, 50))
    if r.watermark_ms:
        figs.add(f"watermark{rate} p50", side.name, pct(r.watermark_ms, 50))
        figs.add(f"watermark{rate} p99", side.name, pct(r.watermark_ms, 99))
    if r.missing:
        figs.notes.append(f"{side.name} {tag}: {r.missing} files never visible (60 s)")
    return pct(r.lags_ms, 99)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (PostgreSQL's backends, say)."""
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@contextlib.asynccontextmanager
async def sides_open(
    regions: MirrorfsRegions, a: WeedCluster, b: WeedCluster, sync: FilerSync
) -> AsyncIterator[list[Side]]:
    cfg = regions.cfg
    session = get_session()
    config = AioConfig(retries={"total_max_attempts": 1}, max_pool_connections=64)
    kw: dict[str, Any] = {
        "region_name": "us-east-1",
        "aws_access_key_id": "mirrorfs",
        "aws_secret_access_key": "mirrorfs-secret",
        "config": config,
    }
    source = await FsClient.for_source(cfg, uid=0, gid=0)
    # A window far beyond the run: the read is served by the replica, never sent to the source.
    reader = await open_client(cfg, REGION, uid=0, gid=0, window_s=3600, policy="serve")
    async with (
        source,
        reader,
        open_database(cfg.mirror_region(REGION), who="bench") as db,
        session.create_client("s3", endpoint_url=a.endpoint, **kw) as s3a,
        session.create_client("s3", endpoint_url=b.endpoint, **kw) as s3b,
    ):
        yield [MirrorfsSide(regions, source, reader, db), FilerSyncSide(sync, s3a, s3b)]


# key -> (title, unit, target on mirrorfs / filer.sync from DESIGN §9, "" where it sets none)
TITLES = {
    "lag50": ("small-file lag p99 at 50 ops/s", "ms", "<= 1"),
    "lag50 p50": ("small-file lag p50 at 50 ops/s", "ms", ""),
    "lag200": ("small-file lag p99 at 200 ops/s", "ms", "<= 1"),
    "lag200 p50": ("small-file lag p50 at 200 ops/s", "ms", ""),
    "backlog": ("backlog copy (4 MiB files)", "MiB/s", ">= 1"),
    "outage": ("outage: last of the writes visible after restart", "s", ""),
    "startup": ("diagnostic: replicator start -> serving (in the backlog)", "s", ""),
    "ack50 p50": ("diagnostic: write ack p50 at 50 ops/s", "ms", ""),
    "ack200 p50": ("diagnostic: write ack p50 at 200 ops/s", "ms", ""),
    "poll50 p50": ("diagnostic: one visibility poll pass p50 at 50 ops/s", "ms", ""),
    "poll200 p50": ("diagnostic: one visibility poll pass p50 at 200 ops/s", "ms", ""),
    "watermark50 p50": ("diagnostic: replica watermark lag p50 at 50 ops/s", "ms", ""),
    "watermark50 p99": ("diagnostic: replica watermark lag p99 at 50 ops/s", "ms", ""),
    "watermark200 p50": ("diagnostic: replica watermark lag p50 at 200 ops/s", "ms", ""),
    "watermark200 p99": ("diagnostic: replica watermark lag p99 at 200 ops/s", "ms", ""),
}


def summary(figs: Figures) -> list[tuple[str, str, str, float, float, str]]:
    """(key, title, unit, mirrorfs median, filer.sync median, target) rows; NaN where a system
    has no such figure (filer.sync has no replica watermark; the CPU rows are per process)."""
    rows = []
    for key, per in figs.values.items():
        cpu = (key.replace("cpu50 ", "CPU at 50 ops/s: "), "% of a core", "")
        title, unit, target = TITLES.get(key, cpu)
        m = statistics.median(per["mirrorfs"]) if "mirrorfs" in per else float("nan")
        f = statistics.median(per["filer.sync"]) if "filer.sync" in per else float("nan")
        rows.append((key, title, unit, m, f, target))
    return rows


def load_key(key: str) -> str:
    """The figure whose rounds' load a summary row shares ("cpu50 mirror run" -> "lag50")."""
    head = key.split(" ")[0]
    for prefix in ("cpu", "ack", "poll", "watermark"):
        if head.startswith(prefix):
            return "lag" + head.removeprefix(prefix)
    return "backlog" if head == "startup" else head


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10, help="length of a lag round")
    p.add_argument("--rounds", type=int, default=2, help="rounds per system per figure")
    p.add_argument("--backlog-files", type=int, default=32, help="4 MiB files in the backlog")
    p.add_argument("--outage-files", type=int, default=500)
    p.add_argument("--nodes", type=int, default=3, help="mirrorfs source nodes")
    return p


def main() -> None:
    figs = run(parser().parse_args())
    for _, title, unit, m, f, _ in summary(figs):
        print(f"{title:52s} mirrorfs {m:9.1f}  filer.sync {f:9.1f} {unit}  ratio {m / f:.2f}")
    for note in figs.notes:
        print("note:", note)


def run(args: argparse.Namespace) -> Figures:
    quiet_with_credentials()
    figs = Figures()
    tmp = Path(tempfile.mkdtemp(prefix="mfs-fs-", dir="/tmp"))
    try:
        asyncio.run(bench(args, tmp, figs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figs


if __name__ == "__main__":
    main()
