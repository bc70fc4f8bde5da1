"""A real FUSE mount of a region in a test: `mirrorfs mount --foreground` as a process.

Every mount a test starts is taken down by it, even when the test fails: the process is
signalled, and the mount point is detached lazily (`fusermount3 -uz`) whatever state the
process left it in (a killed mount process leaves "Transport endpoint is not connected").
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from cli.mount import mounted
from tests.fallback.test_mirror_reads import Setup, paused_region
from tests.mirror.waits import start_mirrorfs

MOUNT_TIMEOUT_S = 60.0


class Mount:
    def __init__(self, config: Path, where: Path, *args: str, log: Path) -> None:
        self.config = config
        self.path = where
        self.args = args
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mount:
        self.path.mkdir(parents=True, exist_ok=True)
        self.proc = start_mirrorfs(
            self.config, "mount", str(self.path), "--foreground", *self.args, log=self.log
        )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not mounted(self.path):
            if self.proc.poll() is not None:
                raise AssertionError(f"mount exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not mounted in {MOUNT_TIMEOUT_S} s: {self.tail()}")
            time.sleep(0.05)
        return self

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        """Unmount and wait for the process; safe to call twice, and after a kill."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if mounted(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], check=False, capture_output=True)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def mounted_at(config: Path, where: Path, *args: str, log: Path) -> Iterator[Mount]:
    mount = Mount(config, where, *args, log=log)
    try:
        yield mount.start()
    finally:
        mount.stop()


@contextlib.asynccontextmanager
async def mounted_mirror(
    tmp_path: Path, pg_dsn: str, *args: str, bucket: str | None = None
) -> AsyncIterator[tuple[Setup, Mount]]:
    """A one-node source, mirror region "eu" with copying paused (every read of a block not
    read before falls back to the source bucket), and the region mounted at tmp_path/mnt."""
    async with paused_region(tmp_path, pg_dsn, bucket) as s:
        where, log = tmp_path / "mnt", tmp_path / "mount.log"
        with mounted_at(s.cluster.config_path, where, "--region", "eu", *args, log=log) as mount:
            yield s, mount
