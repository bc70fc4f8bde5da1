"""Consistency windows through a mirror region: a real one-node source, a real region daemon
whose stream from the source runs through a delay line (tests/fallback/delayline.py) or is
stopped, and clients from cli/connect.py.

Claims checked: read-your-writes with the follower delayed (the put returns once the local
replica shows it, so another session there sees it too; a session whose write returned before
that still reads it); with the follower stopped, reads with a 1 s bound wait, then `source`
serves current data, `error` raises StaleMirrorError naming the region, `serve` returns the
replica's data flagged stale; sessions never go back in time; the outcomes are counted and
reach the region's sums; a randomised workload of writers at the source and in the region and
readers with windows and policies, checked afterwards (scenarios/checker.py); and two
consecutive CLI commands in a script read their write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cli.connect import open_client
from fallback import ConsistencyGate, FsClient, ReadBound, StaleMirrorError, StalePolicy
from fallback.consistency import now_ms
from mirror.region_counters import RegionCounters
from mirror.watermark import save_clock_skew
from scenarios.checker import SOURCE, History, Read, Write, check
from tests.changelog.cluster import SourceCluster
from tests.fallback.delayline import DelayLine
from tests.mirror.region import MirrorRegion
from tests.mirror.volume import wait_until
from tests.mirror.waits import start_mirrorfs, wait_following, wait_status
from volume.config import VolumeConfig, load_config, write_config

WINDOW_S = 1.0


@dataclass
class Setup:
    cluster: SourceCluster
    region: MirrorRegion
    cfg: VolumeConfig
    line: DelayLine
    daemon_config: Path  # the volume's config with the source reached through `line`

    def start_daemon(self) -> None:
        self.region.proc = start_mirrorfs(
            self.daemon_config, "mirror", "run", "eu", log=self.region.log_path
        )

    async def client(self, **kwargs: object) -> FsClient:
        return await open_client(self.cfg, "eu", uid=0, gid=0, **kwargs)  # type: ignore[arg-type]


def gate_of(fs: FsClient) -> ConsistencyGate:
    assert isinstance(fs.gate, ConsistencyGate)
    return fs.gate


@contextlib.asynccontextmanager
async def delayed_region(tmp_path: Path, pg_dsn: str) -> AsyncIterator[Setup]:
    """A one-node source and region "eu" whose daemon follows it through a delay line."""
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        region = MirrorRegion(cluster, "eu", pg_dsn)
        await region.create()
        cfg = load_config(cluster.config_path)
        api = urlsplit(cluster.api(1))
        assert api.hostname and api.port
        with DelayLine(api.hostname, api.port) as line:
            nodes = [n.model_copy(update={"api": line.url}) for n in cfg.source.nodes]
            daemon_cfg = cfg.model_copy(
                update={"source": cfg.source.model_copy(update={"nodes": nodes})}
            )
            daemon_config = cluster.directory / "mirrorfs-delayed.toml"
            write_config(daemon_cfg, daemon_config)
            setup = Setup(cluster, region, cfg, line, daemon_config)
            setup.start_daemon()
            try:
                await wait_following(region)
                yield setup
            finally:
                region.stop()


async def test_read_your_writes_with_the_follower_delayed(tmp_path: Path, pg_dsn: str) -> None:
    async with delayed_region(tmp_path, pg_dsn) as s:
        # The follower's clock estimate, in its status and for readers in the replica: one
        # host, one clock, so a lower bound at or just below zero (the delivery delay).
        doc = await wait_status(
            s.region, lambda d: d["source_clock_skew_ms"] is not None, "a clock estimate"
        )
        assert -500 < doc["source_clock_skew_ms"] <= 1, doc
        s.line.set_delay(1.5)
        async with await s.client() as fs, await s.client() as other:
            skew = (await gate_of(fs).progress.current()).source_clock_skew_ms
            assert skew is not None and -500 < skew <= 1, skew
            data = os.urandom(300_000)
            started = time.monotonic()
            result = await fs.write_file("/ryw/a.bin", data)
            took = time.monotonic() - started
            # The put returned only once the local replica showed it (the stream is 1.5 s late).
            assert took >= 1.2, took
            state = await gate_of(fs).progress.current()
            assert state.applied_version >= result.version
            assert await fs.read_file("/ryw/a.bin") == data  # the writer, at once
            # Another session in the region, which knows nothing of the write and accepts an
            # hour of staleness, sees it too: the replica has it.
            assert await other.read_file("/ryw/a.bin", bound=ReadBound(window_s=3600)) == data
            assert gate_of(fs).counters.stale_source == 0  # both served by the replica

            # A put that returned before the replica showed it (the wait for it cut short):
            # the writer's session still reads its write (the replica did not move during the
            # put's wait, so the gate asks the source at once), where a session that never saw
            # it may not yet.
            s.line.set_delay(4.0)
            gate_of(fs).settle_timeout_s = 0.2
            data2 = os.urandom(1000)
            result2 = await fs.write_file("/ryw/b.bin", data2)
            assert (await gate_of(fs).progress.current()).applied_version < result2.version
            with pytest.raises(FileNotFoundError):
                await other.read_file("/ryw/b.bin", bound=ReadBound(window_s=3600))
            assert await fs.read_file("/ryw/b.bin") == data2
            assert gate_of(fs).counters.stale_source == 1
            # A session never goes back in time, whatever the policy: serving the replica
            # would, so `serve` refuses, naming the version the session already saw.
            with pytest.raises(StaleMirrorError) as exc:
                await fs.read_file("/ryw/a.bin", bound=ReadBound(policy=StalePolicy.SERVE))
            assert exc.value.wanted is not None and exc.value.wanted >= result2.version


async def stale_by(s: Setup, fs: FsClient, seconds: float) -> None:
    """Until the replica is more than `seconds` stale (its follower is stopped), on this host's
    clock, which is the source's: the tests run both on one host."""

    async def stale() -> bool:
        return now_ms() - (await gate_of(fs).progress.current()).applied_ts_ms > seconds * 1000

    await wait_until(f"the replica is {seconds} s stale", stale, timeout_s=30)


async def test_follower_stopped_reads_wait_then_follow_their_policy(
    tmp_path: Path, pg_dsn: str
) -> None:
    async with delayed_region(tmp_path, pg_dsn) as s:
        old, new = os.urandom(5000), os.urandom(6000)
        async with await s.client() as fs:
            await fs.write_file("/p/f", old)  # in the replica when it returns
        s.region.stop()
        async with await FsClient.for_source(s.cfg, uid=0, gid=0) as src:
            current = (await src.write_file("/p/f", new)).version

        def bound(policy: StalePolicy) -> ReadBound:
            return ReadBound(window_s=WINDOW_S, policy=policy)

        async with await s.client() as fs:
            await stale_by(s, fs, WINDOW_S)
            gate = gate_of(fs)
            # `source`: waited (up to wait_s) for the replica, then asked the source.
            started = time.monotonic()
            assert await fs.read_file("/p/f", bound=bound(StalePolicy.SOURCE)) == new
            assert time.monotonic() - started >= gate.wait_s * 0.9
            assert (gate.counters.stale_waits, gate.counters.stale_source) == (1, 1)
            # The replica has not moved since that wait ran out: the next read does not wait.
            started = time.monotonic()
            assert await fs.read_file("/p/f", bound=bound(StalePolicy.SOURCE)) == new
            assert time.monotonic() - started < gate.wait_s * 0.9
            assert (gate.counters.stale_waits, gate.counters.stale_source) == (1, 2)
            # This session has seen the current version: even `serve` may not go back.
            with pytest.raises(StaleMirrorError) as behind:
                await fs.read_file("/p/f", bound=bound(StalePolicy.SERVE))
            assert behind.value.wanted is not None and behind.value.wanted >= current

        async with await s.client() as fs:
            # `error`: the named error, with the region, its staleness and the bound.
            with pytest.raises(StaleMirrorError) as exc:
                await fs.read_file("/p/f", bound=bound(StalePolicy.ERROR))
            err = exc.value
            assert (err.region, err.bound_s, err.wanted) == ("eu", WINDOW_S, None)
            assert err.staleness_s > WINDOW_S
            assert "mirror 'eu'" in str(err) and "bound of 1 s" in str(err)
            assert isinstance(err, OSError) and err.hint
            # `serve`: the replica's data, flagged stale.
            async with fs.open("/p/f", bound=bound(StalePolicy.SERVE)) as handle:
                assert handle.stale
                assert await handle.read() == old
            # A window the replica is within: its data, not stale, no wait.
            file, stale = await fs.resolve("/p/f", bound=ReadBound(window_s=3600))
            assert not stale and file.inode.size == len(old)
            counters = gate_of(fs).counters
            assert (counters.stale_errors, counters.stale_served) == (1, 1)
            assert counters.stale_source == 0

        # The client's own default (open_client's window_s and policy) holds without a bound.
        async with await s.client(window_s=WINDOW_S, policy="error") as fs:
            with pytest.raises(StaleMirrorError):
                await fs.stat("/p/f")
        # The outcomes reached the region's sums (the clients flushed them on close).
        async with s.region.database() as db:
            totals = await RegionCounters(db).totals()
        assert totals.get("stale_errors", 0) >= 2 and totals.get("stale_served", 0) >= 1
        assert totals.get("stale_source", 0) >= 2 and totals.get("stale_waits", 0) >= 1

        s.start_daemon()  # the follower is back: the same bound is met from the replica
        await wait_following(s.region, current)
        async with await s.client() as fs:
            assert await fs.read_file("/p/f", bound=bound(StalePolicy.ERROR)) == new
            assert gate_of(fs).counters.stale_errors == 0


async def test_source_region_down_serve_keeps_reads_working_flagged_stale(
    tmp_path: Path, pg_dsn: str
) -> None:
    async with delayed_region(tmp_path, pg_dsn) as s:
        data = os.urandom(70_000)
        async with await s.client() as fs:
            await fs.write_file("/down/f", data)
        s.cluster.kill_all()  # no source node answers; the daemon's follower is cut off
        serve = ReadBound(window_s=WINDOW_S, policy=StalePolicy.SERVE)
        async with await s.client() as fs:
            await stale_by(s, fs, WINDOW_S)
            async with fs.open("/down/f", bound=serve) as handle:
                assert handle.stale
                assert await handle.read() == data
            assert await fs.listdir("/down", bound=serve) == ["f"]
            assert (await fs.stat("/down/f", bound=serve)).size == len(data)
            assert gate_of(fs).counters.stale_served == 3
            # The replica stopped moving during the first wait: the others did not wait.
            assert gate_of(fs).counters.stale_waits == 1


async def test_a_source_clock_ahead_adds_to_staleness_one_behind_never_subtracts(
    tmp_path: Path, pg_dsn: str
) -> None:
    async with delayed_region(tmp_path, pg_dsn) as s:
        async with await s.client() as fs:
            await fs.write_file("/clock/f", b"x")
        s.region.stop()  # no follower to overwrite the estimates set below
        error = StalePolicy.ERROR
        async with s.region.database() as db:
            await save_clock_skew(db, -5000)  # the source 5 s behind (or a slow link)
        async with await s.client() as fs:
            await stale_by(s, fs, 3.0)
            # Subtracting it would make the replica look fresh: it never counts.
            with pytest.raises(StaleMirrorError) as behind:
                await fs.stat("/clock/f", bound=ReadBound(window_s=3.0, policy=error))
            assert behind.value.staleness_s < 5.0
        async with s.region.database() as db:
            await save_clock_skew(db, 5000)  # the source's clock proven 5 s ahead
        async with await s.client() as fs:
            with pytest.raises(StaleMirrorError) as ahead:
                await fs.stat("/clock/f", bound=ReadBound(window_s=6.0, policy=error))
            assert ahead.value.staleness_s > 8.0  # ~3 s on this host's clock, plus 5


# -- the randomised workload ----------------------------------------------------------------

PATHS = [f"/w/f{i}" for i in range(6)]
WINDOWS = [0.0, 0.3, 1.0, 5.0]
POLICIES = ["source", "source", "error", "serve"]
DELAYS_S = [0.0, 0.6, 2.0, 0.0, 1.2]  # the follower's lag, phase by phase
PHASE_S = 2.5


async def test_random_workload_reads_within_their_bounds_and_sessions_monotonic(
    tmp_path: Path, pg_dsn: str
) -> None:
    rng = random.Random(10)
    history = History()
    async with delayed_region(tmp_path, pg_dsn) as s:
        clients: dict[str, FsClient] = {}
        async with contextlib.AsyncExitStack() as stack:
            for name in ("src-w1", "src-w2"):
                clients[name] = await stack.enter_async_context(
                    await FsClient.for_source(s.cfg, uid=0, gid=0)
                )
            for name in ("eu-w", "eu-r1", "eu-r2", "eu-r3"):
                clients[name] = await stack.enter_async_context(await s.client())
            counter = 0

            async def write(session: str, path: str | None = None) -> None:
                nonlocal counter
                counter += 1
                path = path or rng.choice(PATHS)
                data = f"{session}:{counter}:".encode() + os.urandom(rng.randint(0, 3000))
                fs = clients[session]
                started = time.time()
                version = (await fs.write_file(path, data)).version
                returned = time.time()
                region = SOURCE if session.startswith("src") else "eu"
                settled = False
                if region != SOURCE:
                    settled = (await gate_of(fs).progress.current()).applied_version >= version
                history.wrote(
                    Write(session, region, path, version, data, started, returned, settled)
                )

            for path in PATHS:  # every path exists, in the region too, before anyone reads
                await write("src-w1", path)
            last = history.writes[-1].version
            progress = gate_of(clients["eu-r1"]).progress
            assert (await progress.wait(version=last, timeout_s=30)).applied_version >= last

            async def read(session: str, window: float | None = None, policy: str = "") -> None:
                fs = clients[session]
                path = rng.choice(PATHS)
                window = rng.choice(WINDOWS) if window is None else window
                policy = policy or rng.choice(POLICIES)
                bound = ReadBound(window_s=window, policy=StalePolicy(policy))
                started = time.time()
                try:
                    file, stale = await fs.resolve(path, bound=bound)
                    data = b"".join([c async for c in fs.iter_range(file, 0)])
                except StaleMirrorError as exc:
                    ended = time.time()
                    history.read(
                        Read(session, "eu", path, window, policy, started, ended, error=str(exc))
                    )
                    return
                history.read(
                    Read(session, "eu", path, window, policy, started, time.time(),
                         version=file.version, data=data, stale=stale)
                )  # fmt: skip

            deadline = time.monotonic() + PHASE_S * len(DELAYS_S)

            async def run(session: str) -> None:
                writes = {"src-w1": 1.0, "src-w2": 1.0, "eu-w": 0.5}.get(session, 0.0)
                while time.monotonic() < deadline:
                    if rng.random() < writes:
                        await write(session)
                    else:
                        await read(session)
                    await asyncio.sleep(rng.uniform(0, 0.3 if writes == 1.0 else 0.05))

            async def phases() -> None:
                for delay in DELAYS_S:
                    s.line.set_delay(delay)
                    await asyncio.sleep(PHASE_S)

            await asyncio.gather(phases(), *(run(name) for name in clients))

            # Whether the random phases served a read stale depends on the machine's load: a
            # last phase lags the follower well past every window and wait, so one surely is.
            s.line.set_delay(4.0)
            await write("src-w1")
            await stale_by(s, clients["eu-r1"], 2.0)
            await read("eu-r1", window=0.3, policy="serve")

        violations = check(history)
        assert violations == [], "\n".join(violations[:20])
        reads = [r for r in history.reads if r.version is not None]
        # The workload exercised what it claims to check.
        assert len(history.writes) >= 30 and len(reads) >= 60, (len(history.writes), len(reads))
        assert any(r.stale for r in reads), "no read was served stale"
        assert any(r.error for r in history.reads), "no read was refused as stale"
        assert any(w.region == "eu" and w.settled for w in history.writes)


# -- two commands of a script ---------------------------------------------------------------


def mirrorfs(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(config), *args],
        capture_output=True,
        timeout=120,
        env={**os.environ, "MIRRORFS_LOG": "warning"},
    )


async def test_put_then_cat_in_the_region_reads_the_write(tmp_path: Path, pg_dsn: str) -> None:
    async with delayed_region(tmp_path, pg_dsn) as s:
        # Each command is a new process (over a second to start): the follower must lag more
        # than that, less than the put's wait for it (DEFAULT_SETTLE_TIMEOUT_S), and less than
        # the stream's idle timeout (volume/client.py STREAM_IDLE_TIMEOUT_S, 5 s).
        s.line.set_delay(4.0)
        local = tmp_path / "x.bin"
        data = os.urandom(200_000)
        local.write_bytes(data)
        config = s.cluster.config_path
        put = await asyncio.to_thread(
            mirrorfs, config, "put", "--region", "eu", str(local), "/s/x.bin"
        )
        assert put.returncode == 0, put.stderr.decode()
        cat = await asyncio.to_thread(
            mirrorfs, config, "cat", "--region", "eu", "--window", "3600", "/s/x.bin"
        )
        assert cat.returncode == 0, cat.stderr.decode()
        assert cat.stdout == data
        # A stale read refused by policy is one line and a hint, never a traceback.
        s.region.stop()
        async with await s.client() as fs:
            await stale_by(s, fs, WINDOW_S)
        cat = await asyncio.to_thread(
            mirrorfs, config, "cat", "--region", "eu", "--window", "1", "--policy", "error",
            "/s/x.bin",
        )  # fmt: skip
        err = cat.stderr.decode()
        assert cat.returncode != 0 and "Traceback" not in err, err
        assert "error: mirror 'eu'" in err and "hint:" in err, err


# -- the checker itself ---------------------------------------------------------------------


def test_the_checker_finds_each_kind_of_violation() -> None:
    def w(session: str, version: int, returned: float, data: bytes, region: str = SOURCE) -> Write:
        return Write(session, region, "/f", version, data, returned - 0.1, returned, True)

    def r(session: str, version: int, started: float, data: bytes, **kw: object) -> Read:
        return Read(session, "eu", "/f", 1.0, "source", started, started + 0.1,  # type: ignore[arg-type]
                    version=version, data=data, **kw)  # fmt: skip

    good = History()
    good.wrote(w("a", 5, 10.0, b"five"))
    good.read(r("b", 5, 10.5, b"five"))  # within its 1 s window of the write: either is fine
    good.wrote(w("a", 8, 11.0, b"eight"))
    good.read(r("b", 5, 11.5, b"five"))
    good.read(r("c", 5, 20.0, b"five", stale=True))  # flagged stale: no bound
    assert check(good) == []

    stale = History()
    stale.wrote(w("a", 5, 10.0, b"five"))
    stale.wrote(w("a", 8, 11.0, b"eight"))
    stale.read(r("b", 5, 12.5, b"five"))
    assert [v.split(":")[0] for v in check(stale)] == ["stale read"]

    back = History()
    back.wrote(w("a", 5, 10.0, b"five"))
    back.wrote(w("a", 8, 10.2, b"eight"))
    back.read(r("b", 8, 10.3, b"eight"))
    back.read(r("b", 5, 10.4, b"five", stale=True))
    assert [v.split(":")[0] for v in check(back)] == ["back in time"]

    hidden = History()
    hidden.wrote(w("e", 9, 10.0, b"nine", region="eu"))
    hidden.read(r("b", 3, 10.2, b"three"))
    kinds = sorted(v.split(":")[0] for v in check(hidden))
    assert kinds == ["read of nothing", "region write not visible"]

    wrong = History()
    wrong.wrote(w("a", 5, 10.0, b"five"))
    wrong.read(r("b", 6, 10.5, b"six"))
    assert [v.split(":")[0] for v in check(wrong)] == ["wrong bytes"]
