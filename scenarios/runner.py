"""Run one scenario (scenarios/model.py) on this machine and check what it observed.

The run starts a real source region (N `mirrorfs source serve` processes), one PostgreSQL for
the mirrors' replicas, and a region daemon per mirror whose stream from the source runs
through that mirror's link (scenarios/links.py); the mirror's readers reach the source API
through the same link. A writer at the source writes files at the scenario's rate; readers in
each mirror read them with their windows and policies; faults fire on the timeline. Then every
fault is undone, every mirror must catch up within `checks.converge_s`, and the checker
(scenarios/checker.py) judges the history and the end state. Every process the run starts is
stopped in a `finally`, and the whole run is bounded by `time_limit_s`.

`mutation` runs a deliberately broken component instead of the real one, for the tests that
prove the checker catches it: "ignore_bound" readers ask for any staleness, serve it unflagged
and record the scenario's bound as if they had kept it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import shutil
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import psutil

from cli.connect import open_client
from cli.mirror import fetch_status
from fallback import (
    ConsistencyGate,
    FsClient,
    ReadBound,
    ReadCounters,
    StaleMirrorError,
    StalePolicy,
)
from mirror import CopyQueue, verify
from objstore import open_store
from scenarios.checker import (
    SOURCE,
    History,
    Read,
    Write,
    check,
    check_metadata,
    check_visible,
)
from scenarios.links import LinkSet, LinkShape
from scenarios.model import Fault, FaultKind, Scenario
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, source_dump
from tests.mirror.waits import start_mirrorfs, wait_following
from tests.servers.postgres import PostgresServer, short_data_dir
from tests.servers.seaweed import SeaweedServer
from volume.config import VolumeConfig, load_config, write_config

SAMPLE_S = 0.5
DATA_DIR = "/data"
LARGE_PATH = f"{DATA_DIR}/large.bin"
MUTATIONS = ("ignore_bound",)


@dataclass
class Sample:
    t: float  # seconds since the workload started
    mirror: str
    lag_s: float | None
    pending: int | None
    applied: int | None


@dataclass
class ReadStat:
    t: float
    mirror: str
    latency_s: float
    came_from: str  # mirror | source | both | none (an empty file) | refused (stale, not found)
    size: int


@dataclass
class Result:
    scenario: Scenario
    violations: list[str]
    history: History
    samples: list[Sample] = field(default_factory=list)
    reads: list[ReadStat] = field(default_factory=list)
    egress: list[tuple[float, int]] = field(default_factory=list)  # (t, source bucket bytes)
    events: list[tuple[float, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.violations


@dataclass
class MirrorSide:
    region: MirrorRegion
    config: Path  # the volume's config with the source reached through the mirror's link
    cfg: VolumeConfig

    def start(self) -> None:
        self.region.proc = start_mirrorfs(
            self.config, "mirror", "run", self.region.name, log=self.region.log_path
        )


class Run:
    def __init__(self, scenario: Scenario, work: Path, *, mutation: str | None = None) -> None:
        if mutation is not None and mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {mutation!r}; known: {', '.join(MUTATIONS)}")
        self.sc = scenario
        self.work = work
        self.mutation = mutation
        self.rng = random.Random(scenario.seed)
        self.history = History()
        self.result = Result(scenario, [], self.history)
        self.t0 = time.monotonic()
        self.mirrors: dict[str, MirrorSide] = {}
        self.readers: list[FsClient] = []
        self.written: dict[str, bytes] = {}  # digest -> a write's bytes (reads share them)
        self.pids: list[int] = []
        self.seaweed: SeaweedServer | None = None
        self.pg: PostgresServer | None = None
        self.write_errors = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        self.result.events.append((round(self.now(), 2), text))

    async def run(self) -> Result:
        limit = asyncio.timeout(self.sc.time_limit_s)
        try:
            async with limit:
                await self._run()
        except TimeoutError as exc:
            if not limit.expired():  # a wait inside the run gave up: its own reason
                self._failed(exc)
            else:
                self.result.violations.append(
                    f"time limit: the run did not finish within {self.sc.time_limit_s:.0f} s"
                )
        except Exception as exc:  # noqa: BLE001 - a run that breaks fails, with its reason
            self._failed(exc)
        self.result.violations.extend(self._leaks())
        return self.result

    def _failed(self, exc: BaseException) -> None:
        self.result.violations.append(f"run failed: {type(exc).__name__}: {str(exc)[:500]}")
        self.result.figures["traceback"] = "".join(traceback.format_exception(exc))[-3000:]

    async def _run(self) -> None:
        sc = self.sc
        if self.work.exists():  # an earlier run's: its volume and regions would clash
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        pg = self.pg = PostgresServer.start(short_data_dir())
        try:
            if pg.pid:
                self.pids.append(pg.pid)
            if sc.topology.bucket == "s3":
                # SeaweedFS takes any key; the clients want one (not a credential of anything)
                os.environ.setdefault("AWS_ACCESS_KEY_ID", "mirrorfs")
                os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "mirrorfs-secret")
                self.seaweed = SeaweedServer.start(self.work / "seaweed")
                self.seaweed.create_bucket("source")
                if self.seaweed.pid:
                    self.pids.append(self.seaweed.pid)
            with LinkSet(seed=sc.seed) as links:
                async with self._cluster() as cluster:
                    await self._regions(cluster, pg, links)
                    try:
                        await self._workload(cluster, links)
                        await self._end_checks(cluster)
                    finally:
                        for side in self.mirrors.values():
                            side.region.stop()
        finally:
            try:
                if self.seaweed is not None:
                    self.seaweed.stop()
            finally:
                pg.stop()

    @contextlib.asynccontextmanager
    async def _cluster(self) -> AsyncIterator[SourceCluster]:
        topo = self.sc.topology
        bucket = None if self.seaweed is None else f"s3://source?endpoint={self.seaweed.endpoint}"
        cluster = SourceCluster(
            self.work / "vol",
            nodes=topo.source_nodes,
            bucket=bucket,
            tick_interval_s=topo.tick_interval_s,
        )
        cluster.start_all()
        try:
            self.pids.extend(p.pid for p in cluster.procs.values())
            await cluster.wait_leader(timeout_s=60)
            yield cluster
        finally:
            cluster.kill_all()

    async def _regions(self, cluster: SourceCluster, pg: PostgresServer, links: LinkSet) -> None:
        for i, name in enumerate(self.sc.topology.mirrors):
            region = MirrorRegion(cluster, name, pg.create_database(f"mirror_{i}"))
            await region.create()
            self.mirrors[name] = MirrorSide(region, Path(), cluster.cfg)
        cfg = load_config(cluster.config_path)
        for name, side in self.mirrors.items():
            spec = self.sc.link(name)
            links.add(
                name,
                LinkShape(
                    latency_s=spec.latency_ms / 1000,
                    jitter_s=spec.jitter_ms / 1000,
                    bandwidth_bps=spec.bandwidth_mbit * 1e6 / 8,
                    loss=spec.loss,
                    reset=spec.reset,
                ),
            )
            nodes = []
            for n in cfg.source.nodes:
                api = urlsplit(n.api)
                assert api.hostname and api.port
                nodes.append(
                    n.model_copy(update={"api": links.proxy(name, api.hostname, api.port)})
                )
            source_update: dict[str, Any] = {"nodes": nodes}
            if self.seaweed is not None:  # the source bucket, across the link too
                s3 = urlsplit(self.seaweed.endpoint)
                assert s3.hostname and s3.port
                via = links.proxy(name, s3.hostname, s3.port)
                source_update["bucket"] = f"s3://source?endpoint={via}"
            linked = cfg.model_copy(update={"source": cfg.source.model_copy(update=source_update)})
            side.config = cluster.directory / f"mirrorfs-{name}.toml"
            side.cfg = linked
            write_config(linked, side.config)
            side.start()
        for side in self.mirrors.values():
            await wait_following(side.region, timeout_s=60)
            if side.region.proc:
                self.pids.append(side.region.proc.pid)
        self.event("regions following")

    # -- the workload -------------------------------------------------------------------

    async def _workload(self, cluster: SourceCluster, links: LinkSet) -> None:
        sc = self.sc
        wl = sc.workload
        async with contextlib.AsyncExitStack() as stack:
            writer = await stack.enter_async_context(
                await FsClient.for_source(cluster.cfg, uid=0, gid=0)
            )
            readers: list[tuple[str, FsClient, Any]] = []
            for spec in wl.readers:
                side = self.mirrors[spec.mirror]
                for k in range(spec.count):
                    fs = await stack.enter_async_context(
                        await open_client(
                            side.cfg,
                            spec.mirror,
                            uid=0,
                            gid=0,
                            window_s=spec.window_s,
                            policy=spec.policy,
                        )
                    )
                    readers.append((f"{spec.mirror}-r{len(readers)}-{k}", fs, spec))
                    self.readers.append(fs)
            if wl.large_file_mb and not wl.large_file_at_s:
                await self._write(writer, LARGE_PATH, int(wl.large_file_mb * 2**20))
            for i in range(min(wl.files, 3)):  # something to read from the start
                await self._write(writer, f"{DATA_DIR}/f{i}", self._size())
            shift = time.monotonic() - self.t0  # times from here on: since the workload began
            self.t0 += shift
            self.result.events = [(round(t - shift, 2), e) for t, e in self.result.events]
            self.event("workload starts")
            deadline = self.t0 + sc.duration_s
            tasks = [
                asyncio.create_task(self._writes(writer, deadline)),
                asyncio.create_task(self._large(writer)),
                asyncio.create_task(self._sample(deadline)),
                *(asyncio.create_task(self._fault(cluster, links, f)) for f in sc.faults),
                *(
                    asyncio.create_task(self._reads(name, fs, spec, deadline))
                    for name, fs, spec in readers
                ),
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            self.event("workload ends")

    def _size(self) -> int:
        s = self.sc.workload.sizes
        lo, hi = max(1, s.min_bytes), max(1, s.max_bytes)
        return int(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))

    async def _write(self, fs: FsClient, path: str, size: int) -> None:
        data = f"{path}:{len(self.history.writes)}:".encode() + self.rng.randbytes(size)
        started = time.time()
        version = (await fs.write_file(path, data)).version
        self.history.wrote(Write("writer", SOURCE, path, version, data, started, time.time()))
        self.written[hashlib.sha256(data).hexdigest()] = data

    async def _large(self, fs: FsClient) -> None:
        wl = self.sc.workload
        if wl.large_file_mb and wl.large_file_at_s:
            await asyncio.sleep(max(0.0, wl.large_file_at_s - self.now()))
            await self._write(fs, LARGE_PATH, int(wl.large_file_mb * 2**20))
            self.event(f"wrote the large file ({wl.large_file_mb:g} MiB)")

    async def _writes(self, fs: FsClient, deadline: float) -> None:
        wl = self.sc.workload
        i = 0
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            path = f"{DATA_DIR}/f{i if i < wl.files else self.rng.randrange(wl.files)}"
            try:
                await self._write(fs, path, self._size())
            except Exception as exc:  # noqa: BLE001 - not acknowledged: no claim to check
                self.write_errors += 1
                if self.write_errors == 1:
                    self.event(f"a write failed: {type(exc).__name__}: {str(exc)[:200]}")
                self.result.figures["writes_failed"] = self.write_errors
            i += 1
            next_at += 1 / wl.write_rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _reads(self, session: str, fs: FsClient, spec: Any, deadline: float) -> None:
        gate = fs.gate
        assert isinstance(gate, ConsistencyGate)
        counters = cast(ReadCounters, gate.counters)  # open_client passes its ReadCounters
        while time.monotonic() < deadline:
            paths = sorted({w.path for w in self.history.writes if w.path != LARGE_PATH})
            path = LARGE_PATH if spec.large_file else self.rng.choice(paths)
            bound = ReadBound(window_s=spec.window_s, policy=StalePolicy(spec.policy))
            if self.mutation == "ignore_bound":
                bound = ReadBound(window_s=1e9, policy=StalePolicy.SERVE)
            before = counters.as_dict()
            started, t = time.time(), time.monotonic()
            try:
                file, stale = await fs.resolve(path, bound=bound)
                data = b"".join([c async for c in fs.iter_range(file, 0)])
            except (StaleMirrorError, FileNotFoundError) as exc:
                self.history.read(
                    Read(session, spec.mirror, path, spec.window_s, spec.policy, started,
                         time.time(), error=f"{type(exc).__name__}: {exc}")
                )  # fmt: skip
                self._read_stat(spec.mirror, t, "refused", 0)
                await asyncio.sleep(0.05)
                continue
            except Exception as exc:  # noqa: BLE001 - any other failure is a finding
                self.result.violations.append(
                    f"read failed: {session} read {path} at {self.now():.2f} s: "
                    f"{type(exc).__name__}: {exc}"
                )
                await asyncio.sleep(0.2)
                continue
            if self.mutation == "ignore_bound":
                stale = False  # and says nothing of it
            grew = counters.since(before)
            came_from = {
                (True, True): "both",
                (True, False): "source",
                (False, True): "mirror",
                (False, False): "none",
            }["fallback_bytes" in grew, "mirror_bytes" in grew]
            self._read_stat(spec.mirror, t, came_from, len(data))
            data = self.written.get(hashlib.sha256(data).hexdigest(), data)
            self.history.read(
                Read(session, spec.mirror, path, spec.window_s, spec.policy, started,
                     time.time(), version=file.version, data=data, stale=stale)
            )  # fmt: skip
            await asyncio.sleep(self.rng.uniform(0, 0.1))

    def _read_stat(self, mirror: str, started: float, came_from: str, size: int) -> None:
        self.result.reads.append(
            ReadStat(started - self.t0, mirror, time.monotonic() - started, came_from, size)
        )

    async def _sample(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await self._sample_once()
            await asyncio.sleep(SAMPLE_S)

    async def _sample_once(self) -> None:
        t = self.now()
        for name, side in self.mirrors.items():
            try:
                doc = await asyncio.wait_for(
                    fetch_status(side.region.api, side.cfg.token), SAMPLE_S * 2
                )
            except Exception:  # noqa: BLE001 - a killed daemon: the replica says how far back
                self.result.samples.append(await self._replica_sample(t, side))
                continue
            self.result.samples.append(
                Sample(t, name, doc.get("lag_seconds"), doc.get("blocks_pending"),
                       doc.get("applied_version"))
            )  # fmt: skip
        egress = 0
        for fs in self.readers:
            gate = fs.gate
            assert isinstance(gate, ConsistencyGate)
            egress += cast(ReadCounters, gate.counters).fallback_bytes
        self.result.egress.append((t, egress))

    async def _replica_sample(self, t: float, side: MirrorSide) -> Sample:
        """Lag from the replica's watermark (source clock = this host's, see the checker)."""
        try:
            version, applied_ms = await asyncio.wait_for(side.region.watermark(), SAMPLE_S * 2)
        except Exception:  # noqa: BLE001 - nothing to say: a gap in the plot
            return Sample(t, side.region.name, None, None, None)
        lag_s = max(0.0, time.time() - applied_ms / 1000)
        return Sample(t, side.region.name, round(lag_s, 3), None, version)

    # -- faults ---------------------------------------------------------------------------

    async def _fault(self, cluster: SourceCluster, links: LinkSet, f: Fault) -> None:
        await asyncio.sleep(max(0.0, f.at_s - self.now()))
        undo = await self._inject(cluster, links, f)
        try:
            await asyncio.sleep(f.duration_s)
        finally:
            await undo()

    async def _inject(self, cluster: SourceCluster, links: LinkSet, f: Fault) -> Any:
        if f.kind == FaultKind.KILL_LEADER:
            leader = await cluster.wait_leader(timeout_s=30)
            cluster.kill_node(leader)
            self.event(f"killed source leader node {leader}")

            async def restart() -> None:
                cluster.start_node(leader)
                self.pids.append(cluster.procs[leader].pid)
                self.event(f"restarted node {leader}")

            return restart
        if f.kind == FaultKind.RESTART_POSTGRES:
            pg = self.pg
            assert pg is not None
            await asyncio.to_thread(pg.stop)
            self.event("stopped the mirrors' PostgreSQL")

            async def pg_again() -> None:
                await asyncio.to_thread(pg.start_again)
                if pg.pid:
                    self.pids.append(pg.pid)
                self.event("started the mirrors' PostgreSQL again")

            return pg_again
        if f.kind == FaultKind.STOP_BUCKET:
            seaweed = self.seaweed
            assert seaweed is not None
            await asyncio.to_thread(seaweed.kill)
            self.event("killed the source bucket's S3 server")

            async def start() -> None:
                await asyncio.to_thread(seaweed.restart)
                if seaweed.pid:
                    self.pids.append(seaweed.pid)
                self.event("restarted the source bucket's S3 server")

            return start
        target = f.target
        assert target is not None
        side = self.mirrors[target]
        if f.kind == FaultKind.PARTITION:
            await asyncio.to_thread(links.partition, target, True)
            self.event(f"partitioned {f.target}")

            async def heal() -> None:
                await asyncio.to_thread(links.partition, target, False)
                self.event(f"healed {f.target}")

            return heal
        if f.kind == FaultKind.KILL_DAEMON:
            side.region.kill()
            self.event(f"killed {f.target}'s daemon")

            async def again() -> None:
                side.start()
                if side.region.proc:
                    self.pids.append(side.region.proc.pid)
                self.event(f"restarted {f.target}'s daemon")

            return again
        assert f.kind == FaultKind.PAUSE  # as `mirrorfs mirror pause` does (no CLI start-up)
        async with side.region.database() as db:
            await CopyQueue(db).set_paused(True)
        self.event(f"paused {target}'s replication")

        async def resume() -> None:
            async with side.region.database() as db:
                await CopyQueue(db).set_paused(False)
            self.event(f"resumed {target}'s replication")

        return resume

    # -- the end --------------------------------------------------------------------------

    async def _end_checks(self, cluster: SourceCluster) -> None:
        sc = self.sc
        out = self.result.violations
        out.extend(check(self.history, tolerance_s=sc.checks.tolerance_s))
        version, expected = await source_dump(cluster)
        finals: dict[str, dict[str, bytes | None]] = {}
        dumps: dict[str, dict[str, Any]] = {}
        converge_start = time.monotonic()
        for name, side in self.mirrors.items():
            if not await self._converged(side, version):
                out.append(
                    f"not converged: mirror {name} did not apply version {version} and copy "
                    f"every block within {sc.checks.converge_s:.0f} s of the workload's end"
                )
            dumps[name] = await side.region.dump()
            finals[name] = await self._final_reads(side)
            out.extend(await self._verify(side))
        self.result.figures["converge_s"] = round(time.monotonic() - converge_start, 2)
        self.result.figures["source_version"] = version
        out.extend(check_metadata(expected, dumps))
        out.extend(check_visible(self.history, finals))
        ok_reads = [r for r in self.history.reads if r.version is not None]
        if len(ok_reads) < sc.checks.min_reads:
            out.append(f"too few reads: {len(ok_reads)} succeeded, {sc.checks.min_reads} wanted")
        self.event("checked")

    async def _converged(self, side: MirrorSide, version: int) -> bool:
        deadline = time.monotonic() + self.sc.checks.converge_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                doc = await fetch_status(side.region.api, side.cfg.token)
                if doc["applied_version"] >= version and doc["blocks_pending"] == 0:
                    self.event(f"{side.region.name} converged")
                    return True
            await self._sample_once()
            await asyncio.sleep(SAMPLE_S)
        return False

    async def _final_reads(self, side: MirrorSide) -> dict[str, bytes | None]:
        """Every written path as the mirror's own replica and bucket serve it."""
        bound = ReadBound(window_s=1e9, policy=StalePolicy.SERVE)
        out: dict[str, bytes | None] = {}
        async with await open_client(side.cfg, side.region.name, uid=0, gid=0) as fs:
            for path in sorted({w.path for w in self.history.writes}):
                try:
                    out[path] = await fs.read_file(path, bound=bound)
                except FileNotFoundError:
                    out[path] = None
        return out

    async def _verify(self, side: MirrorSide) -> list[str]:
        """Every live block in the mirror bucket with the right checksum (mirror verify)."""
        region = side.cfg.mirror_region(side.region.name)
        store = await open_store(region.bucket, name="mirror")
        try:
            async with side.region.database() as db:
                report = await verify(db, store)
        finally:
            await store.aclose()
        out = [
            f"block check failed: mirror {side.region.name}: {p.problem} {p.key}: {p.detail}"
            for p in report.problems
        ]
        if report.blocks_not_copied:
            out.append(
                f"block check failed: mirror {side.region.name}: {report.blocks_not_copied} "
                "live block(s) not copied"
            )
        self.result.figures[f"{side.region.name}_blocks_verified"] = report.blocks_checked
        return out

    def _leaks(self) -> list[str]:
        out = []
        for pid in self.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"leaked process: {pid} ({' '.join(proc.cmdline()[:6])})")
                    proc.kill()
        return out
