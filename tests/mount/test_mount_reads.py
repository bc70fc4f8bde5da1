"""Reading a mirror region through its FUSE mount, with replication paused: the tools programs
use (cp, cat, sha256sum, dd at offsets, ls -l, stat, find) give the same bytes and attributes
as the same files in a local directory given the source's attributes, and a safetensors file
written at the source loads memory-mapped through the mount with equal tensors.

Real components: a one-node source, the region's daemon (copying paused, so every block is
read through fallback to the source bucket), its PostgreSQL replica, and `mirrorfs mount`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from tests.fallback.test_mirror_reads import Setup
from tests.mount.mounts import mounted_mirror
from volume.inode import BLOCK_SIZE, CHUNK_SIZE

MiB = 1024 * 1024
FILES = {
    "/m/empty": 0,
    "/m/one": 1,
    "/m/block_less_one": BLOCK_SIZE - 1,
    "/m/two_blocks_plus": 2 * BLOCK_SIZE + 7,
    "/m/sub/deeper/chunk_plus": CHUNK_SIZE + 3,
}


def sh(cwd: Path, command: str) -> str:
    done = subprocess.run(
        command, shell=True, cwd=cwd, capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, (command, done.stderr)
    return done.stdout


async def put_both(s: Setup, local: Path, files: dict[str, bytes]) -> int:
    """Each file at the source and in `local`, the local one given the source's mode and
    mtime, so attributes compare too."""
    version = 0
    for path, data in files.items():
        version = await s.put(path, data)
        target = local / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for path in files:
        inode = await s.writer.stat(path)
        target = local / path.lstrip("/")
        os.chmod(target, inode.mode)
        os.utime(target, ns=(inode.mtime_ms * 1_000_000, inode.mtime_ms * 1_000_000))
    return version


async def test_tools_through_the_mount_see_what_a_local_copy_shows(
    tmp_path: Path, pg_dsn: str
) -> None:
    local = tmp_path / "local"
    files = {path: os.urandom(size) for path, size in FILES.items()}
    async with mounted_mirror(tmp_path, pg_dsn, "--cache-dir", str(tmp_path / "cache")) as (
        s,
        mount,
    ):
        version = await put_both(s, local, files)
        await s.region.wait_applied(version)
        mnt = mount.path
        # Checksums and bytes, whole and at offsets that cross block and chunk edges.
        names = " ".join(p.lstrip("/") for p in files)
        assert sh(mnt, f"sha256sum {names}") == sh(local, f"sha256sum {names}")
        assert sh(mnt, f"cat {names} | sha256sum") == sh(local, f"cat {names} | sha256sum")
        big = "m/sub/deeper/chunk_plus"
        for skip, count in [(0, 1), (1023, 2), (16383, 3), (16384, 1), (65535, 5)]:
            dd = f"dd if={big} bs=4096 skip={skip} count={count} status=none | sha256sum"
            assert sh(mnt, dd) == sh(local, dd), dd
        # Attributes: names, kinds, sizes, modes, mtimes (to the second: ls and find print).
        ls = "ls -l --time-style=+%s m | grep -v '^d' | awk '{print $1, $5, $6, $7}'"
        assert sh(mnt, ls) == sh(local, ls)
        find = "find m -type f -printf '%p %s %m %T@\\n' | sort"
        assert sh(mnt, find) == sh(local, find)
        assert sh(mnt, "find m | sort") == sh(local, "find m | sort")
        for path in files:
            a, b = os.stat(mnt / path.lstrip("/")), os.stat(local / path.lstrip("/"))
            assert (a.st_size, a.st_mode, a.st_mtime_ns) == (b.st_size, b.st_mode, b.st_mtime_ns)
        # cp -r of the tree gives the same bytes.
        sh(tmp_path, f"cp -r {mnt / 'm'} copied")
        for path, data in files.items():
            assert (tmp_path / "copied" / path.removeprefix("/m/")).read_bytes() == data


async def test_a_safetensors_file_loads_memory_mapped_through_the_mount(
    tmp_path: Path, pg_dsn: str
) -> None:
    rng = np.random.default_rng(7)
    tensors = {
        "embed": rng.standard_normal((1024, 512), dtype=np.float32),  # 2 MiB
        "layer.0": rng.standard_normal((2048, 1100), dtype=np.float32),  # ~8.6 MiB
        "bias": rng.standard_normal((7,), dtype=np.float32),
        "ids": np.arange(100_000, dtype=np.int64),
    }
    blob = save(tensors)
    async with mounted_mirror(tmp_path, pg_dsn, "--cache-dir", str(tmp_path / "cache")) as (
        s,
        mount,
    ):
        await s.region.wait_applied(await s.put("/models/x.safetensors", blob))
        path = mount.path / "models" / "x.safetensors"
        with safe_open(str(path), framework="np") as f:  # memory-maps the file
            assert sorted(f.keys()) == sorted(tensors)
            for name, want in tensors.items():
                np.testing.assert_array_equal(f.get_tensor(name), want)
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(blob).digest()
