"""Versions and lifecycle of a mount: a reader holding a file open reads the version it opened,
whole, while the source overwrites it, and two readers of two versions at once each read
their own; a new open after the window sees the new version; a killed mount process leaves no
hung mount (`mirrorfs umount` detaches it); the background mount and its errors.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.mount import mounted
from tests.mount.mounts import mounted_at, mounted_mirror

MiB = 1024 * 1024
WINDOW = "0.5"


def mirrorfs(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def read_new(path: Path, want: bytes, timeout_s: float = 15.0) -> bytes:
    """A fresh open's bytes, once they are `want` (the kernel's entry and attribute caches
    hold the old ones for up to the window), or the last read after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = path.read_bytes()
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


async def test_an_open_reader_keeps_its_version_while_the_source_overwrites(
    tmp_path: Path, pg_dsn: str
) -> None:
    v1, v2, v3 = os.urandom(9 * MiB + 3), os.urandom(5 * MiB + 1), os.urandom(6 * MiB)
    async with mounted_mirror(tmp_path, pg_dsn, "--window", WINDOW, "--no-cache") as (s, mount):
        await s.region.wait_applied(await s.put("/v/f", v1))
        path = mount.path / "v" / "f"
        with open(path, "rb") as first:
            head = first.read(MiB)
            await s.region.wait_applied(await s.put("/v/f", v2))
            # A new open sees v2 once the kernel's caches (the window) let it look again...
            assert read_new(path, v2) == v2
            with open(path, "rb") as second:
                # ...and reads of the two handles interleaved each stay on their version.
                parts1, parts2 = [head], []
                while True:
                    a, b = first.read(700_000), second.read(300_000)
                    parts1.append(a)
                    parts2.append(b)
                    if not a and not b:
                        break
                assert b"".join(parts1) == v1
                assert b"".join(parts2) == v2
                await s.region.wait_applied(await s.put("/v/f", v3))
                second.seek(5 * MiB - 10)
                assert second.read() == v2[5 * MiB - 10 :]  # still v2 after a seek
        assert read_new(path, v3) == v3


async def test_a_killed_mount_process_leaves_no_hung_mount(tmp_path: Path, pg_dsn: str) -> None:
    async with mounted_mirror(tmp_path, pg_dsn, "--no-cache") as (s, mount):
        await s.region.wait_applied(await s.put("/k/f", b"data"))
        assert (mount.path / "k" / "f").read_bytes() == b"data"
        mount.kill()
        with pytest.raises(OSError) as dead:
            os.listdir(mount.path)  # a request the kernel cannot answer from its caches
        assert dead.value.errno == errno.ENOTCONN
        done = mirrorfs(s.cluster.config_path, "umount", str(mount.path))
        assert done.returncode == 0, done.stderr
        assert not mounted(mount.path)
        assert os.listdir(mount.path) == []  # the plain directory again


async def test_the_background_mount_and_its_errors(tmp_path: Path, pg_dsn: str) -> None:
    async with mounted_mirror(tmp_path, pg_dsn, "--no-cache") as (s, mount):
        config = s.cluster.config_path
        await s.region.wait_applied(await s.put("/b/f", b"bg"))
        # Mounting where a mount is: refused, named.
        again = mirrorfs(config, "mount", "--region", "eu", str(mount.path))
        assert again.returncode == 1 and "already a mount point" in again.stderr
        assert "Traceback" not in again.stderr
        # Not a directory, an unknown region, a bad cache size: one line each, no mount.
        a_file = tmp_path / "file"
        a_file.write_bytes(b"")
        bad = mirrorfs(config, "mount", str(a_file))
        assert bad.returncode == 1 and "not a directory" in bad.stderr
        other = tmp_path / "other"
        other.mkdir()
        unknown = mirrorfs(config, "mount", "--region", "nowhere", str(other))
        assert unknown.returncode == 1 and "nowhere" in unknown.stderr
        size = mirrorfs(config, "mount", "--cache-size", "lots", str(other))
        assert size.returncode == 1 and "--cache-size" in size.stderr
        assert not mounted(other)
        not_mounted = mirrorfs(config, "umount", str(other))
        assert not_mounted.returncode == 1 and "not mounted" in not_mounted.stderr
        # In the background: returns once mounted; umount ends its process.
        log = tmp_path / "bg.log"
        started = mirrorfs(
            config, "mount", "--region", "eu", str(other), "--no-cache", "--log-file", str(log)
        )
        try:
            assert started.returncode == 0, started.stderr
            assert mounted(other)
            assert (other / "b" / "f").read_bytes() == b"bg"
            pid = int(started.stdout.split("pid ")[1].split(";")[0])
            done = mirrorfs(config, "umount", str(other))
            assert done.returncode == 0, done.stderr
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(pid), "the mount process outlived its mount"
        finally:
            if mounted(other):
                subprocess.run(["fusermount3", "-uz", str(other)], check=False)
        with mounted_at(config, tmp_path / "ro", "--region", "eu", "--read-only", "--no-cache",
                        log=tmp_path / "ro.log") as ro:  # fmt: skip
            with pytest.raises(OSError) as refused:
                (ro.path / "b" / "new").write_bytes(b"x")
            assert refused.value.errno == errno.EROFS
            assert (ro.path / "b" / "f").read_bytes() == b"bg"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped by its parent, which is gone) counts as ended.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


async def test_a_new_open_sees_a_new_version_as_soon_as_the_replica_has_it(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Even inside a long window: the kernel's entry still names the old version's node, whose
    open is refused with ESTALE, and the kernel's retry looks the name up again."""
    old, new = os.urandom(2 * MiB), os.urandom(3 * MiB + 5)
    async with mounted_mirror(tmp_path, pg_dsn, "--window", "60", "--no-cache") as (s, mount):
        await s.region.wait_applied(await s.put("/n/f", old))
        path = mount.path / "n" / "f"
        assert path.read_bytes() == old
        with open(path, "rb") as held:
            await s.region.wait_applied(await s.put("/n/f", new))
            assert path.read_bytes() == new  # no wait: the open itself found the new one
            assert held.read() == old
            assert os.fstat(held.fileno()).st_size == len(old)
