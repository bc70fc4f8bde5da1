"""Processes for benchmarks that must run without the test tree (`mirrorfs bench` is shipped):
a SeaweedFS cluster (`weed server -s3`, what `filer.sync` replicates between) and a mirrorfs
source region with one mirror region, started through the CLI as a user would.

Every process started here is stopped by `stop()`, which callers run in `finally`. weed writes
unix sockets `/tmp/seaweedfs-<service>[-grpc]-<port>.sock` (always /tmp, whatever $TMPDIR says)
and leaves some behind: `stop()` removes the ones named by this cluster's ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import botocore.session
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cli.source import free_ports, new_volume
from mirror import create_mirror
from mirror.embedded import postmaster_pid
from volume.client import SourceClient
from volume.config import MirrorConfig, VolumeConfig, load_config, write_config

STOP_TIMEOUT_S = 5.0
ACCESS_KEY = "mirrorfs"
SECRET_KEY = "mirrorfs-secret"


def quiet_with_credentials() -> None:
    """For a benchmark process: the S3 key pair SeaweedFS accepts (any works) unless one is
    set, and only warnings logged, to stderr (stdout carries figures or a protocol)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def venv_binary(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"no `{name}` binary beside {sys.executable} or on PATH")
    return found


def s3_client(endpoint: str) -> object:
    return botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; waits for the exit."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class WeedCluster:
    """One `weed server -s3` (master, volume, filer, S3 in one process) on 127.0.0.1, every
    gRPC port given explicitly (no +10000 twins to collide)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        names = ("master", "volume", "filer", "s3")
        ports = free_ports(2 * len(names))
        self.http = dict(zip(names, ports[: len(names)], strict=True))
        self.grpc = dict(zip(names, ports[len(names) :], strict=True))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http['s3']}"

    @property
    def filer_address(self) -> str:
        """host:port.grpcPort, the form weed takes for a server with a non-default gRPC port."""
        return f"127.0.0.1:{self.http['filer']}.{self.grpc['filer']}"

    def socket_paths(self) -> list[Path]:
        tmp = Path("/tmp")
        return [tmp / f"seaweedfs-{k}-{p}.sock" for k, p in self.http.items()] + [
            tmp / f"seaweedfs-{k}-grpc-{p}.sock" for k, p in self.grpc.items()
        ]

    def start(self, timeout_s: float = 60.0) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        h, g = self.http, self.grpc
        cmd = [
            venv_binary("weed"),
            "-logtostderr",
            "server",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            "-filer",
            f"-master.port={h['master']}",
            f"-master.port.grpc={g['master']}",
            f"-volume.port={h['volume']}",
            f"-volume.port.grpc={g['volume']}",
            f"-filer.port={h['filer']}",
            f"-filer.port.grpc={g['filer']}",
            f"-s3.port={h['s3']}",
            f"-s3.port.grpc={g['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=200",
            "-volume.preStopSeconds=0",
        ]
        with open(self.workdir / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        """Until a PUT to a probe bucket succeeds: S3, filer, master and a volume all up."""
        client = s3_client(self.endpoint)
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited while starting: {self.log_tail()}")
            try:
                with contextlib.suppress(ClientError):
                    client.create_bucket(Bucket="probe")  # type: ignore[attr-defined]
                client.put_object(Bucket="probe", Key="probe", Body=b"x")  # type: ignore[attr-defined]
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"weed server not ready in {timeout_s} s ({last}): {self.log_tail()}")

    def create_bucket(self, name: str) -> None:
        with contextlib.suppress(ClientError):
            s3_client(self.endpoint).create_bucket(Bucket=name)  # type: ignore[attr-defined]

    def log_tail(self, n: int = 3000) -> str:
        path = self.workdir / "weed.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"

    def stop(self) -> None:
        stop_process(self.proc)
        for path in self.socket_paths():
            path.unlink(missing_ok=True)


class FilerSync:
    """`weed filer.sync -isActivePassive` from cluster a to cluster b, one bucket's directory only
    (the clusters hold other systems' buckets too); restartable."""

    def __init__(self, a: WeedCluster, b: WeedCluster, workdir: Path, bucket: str) -> None:
        self.a, self.b, self.workdir, self.bucket = a, b, workdir, bucket
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            venv_binary("weed"),
            "-logtostderr",
            "filer.sync",
            f"-a={self.a.filer_address}",
            f"-b={self.b.filer_address}",
            "-isActivePassive",
            f"-a.path=/buckets/{self.bucket}",
            f"-b.path=/buckets/{self.bucket}",
        ]
        with open(self.workdir / "filer-sync.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


class MirrorfsRegions:
    """A source region of `nodes` `mirrorfs source serve` processes (blocks in `source_bucket`)
    and mirror region `name` (blocks in `mirror_bucket`, embedded PostgreSQL) whose daemon
    `mirrorfs mirror run` can be stopped and started again."""

    def __init__(
        self, workdir: Path, source_bucket: str, mirror_bucket: str, *, nodes: int, name: str
    ) -> None:
        self.workdir, self.name = workdir, name
        self.mirror_bucket = mirror_bucket
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mirrorfs.toml"
        write_config(
            new_volume(workdir, nodes=nodes, bucket=source_bucket, name="bench"), self.config_path
        )
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.daemon: subprocess.Popen[bytes] | None = None

    @property
    def cfg(self) -> VolumeConfig:
        return load_config(self.config_path)

    def _cli(self, log_name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{log_name}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "cli", "--config", str(self.config_path), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "MIRRORFS_LOG": "warning"},
            )

    async def start_source(self, timeout_s: float = 60.0) -> None:
        for node in self.cfg.source.nodes:
            self.nodes[node.id] = self._cli(
                f"node{node.id}", "source", "serve", "--node", str(node.id)
            )
        cfg = self.cfg
        deadline = time.monotonic() + timeout_s
        async with SourceClient(cfg.api_urls, cfg.token, retry_s=timeout_s) as c:
            while True:
                try:
                    await c.op("mkdir", path="/.bench-ready", mode=0o755)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

    async def create_mirror(self) -> None:
        cfg = self.cfg
        mcfg = MirrorConfig(
            bucket=self.mirror_bucket,
            api=f"http://127.0.0.1:{free_ports(1)[0]}",
            data_dir=f"mirrors/{self.name}",
            dsn="",
        )
        await create_mirror(cfg, mcfg, self.name)

    def start_daemon(self) -> None:
        self.daemon = self._cli(f"mirror-{self.name}", "mirror", "run", self.name)

    def stop_daemon(self) -> None:
        stop_process(self.daemon, timeout_s=20.0)
        self.daemon = None

    @property
    def daemon_pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    @property
    def pg_dir(self) -> Path:
        return self.cfg.resolve(f"mirrors/{self.name}") / "pg"

    def stop(self) -> None:
        self.stop_daemon()
        for proc in self.nodes.values():
            stop_process(proc)
        pid = postmaster_pid(self.pg_dir)
        if pid is not None:  # the last user stops it; a killed one may have left it up
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
