"""Writes through the mount of a mirror region: forwarded to the source, committed on close or
fsync, read back in the region at once (read-your-writes); a commit that fails is the error of
that close or fsync and loses nothing (the buffer stays dirty: the next fsync commits it); a
file unlinked while open for writing is not brought back by its close.

Real components: a one-node source (killed and restarted for the outage), the region's daemon
and replica, `mirrorfs mount`, and other clients of the region and of the source.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cli.connect import open_client
from fallback import FsClient
from tests.changelog.cluster import SourceCluster
from tests.mount.mounts import mounted_at, mounted_mirror
from volume.config import load_config

MiB = 1024 * 1024


async def test_writes_reach_the_source_and_the_region_reads_them_at_once(
    tmp_path: Path, pg_dsn: str
) -> None:
    model = os.urandom(9 * MiB + 11)
    (tmp_path / "model.bin").write_bytes(model)
    async with mounted_mirror(tmp_path, pg_dsn, "--cache-dir", str(tmp_path / "cache")) as (
        s,
        mount,
    ):
        mnt = mount.path
        os.makedirs(mnt / "w" / "deep" / "er")
        shutil.copyfile(tmp_path / "model.bin", mnt / "w" / "deep" / "model.bin")
        # close() returned: the source has it, and so does every other client in the region.
        assert await s.writer.cat("/w/deep/model.bin") == model
        async with await open_client(s.cfg, "eu", uid=0, gid=0, policy="error") as region:
            assert await region.read_file("/w/deep/model.bin") == model
        os.rename(mnt / "w" / "deep" / "model.bin", mnt / "w" / "model.bin")
        os.truncate(mnt / "w" / "model.bin", 5)
        os.chmod(mnt / "w" / "model.bin", 0o600)
        os.symlink("model.bin", mnt / "w" / "link")
        os.rmdir(mnt / "w" / "deep" / "er")
        with open(mnt / "w" / "log", "ab") as f:  # appends: two commits of a growing file
            f.write(b"one\n")
            f.flush()
            os.fsync(f.fileno())
            assert await s.writer.cat("/w/log") == b"one\n"
            f.write(b"two\n")
        assert await s.writer.cat("/w/log") == b"one\ntwo\n"
        assert await s.writer.cat("/w/model.bin") == model[:5]
        st = await s.writer.stat("/w/model.bin")
        assert st.mode == 0o600
        assert (await s.writer.stat("/w/link")).target == "model.bin"
        assert await s.writer.listdir("/w") == ["deep", "link", "log", "model.bin"]
        assert await s.writer.listdir("/w/deep") == []
        # Through the mount, the same (its own writes, read back without waiting).
        assert (mnt / "w" / "link").read_bytes() == model[:5]
        assert sorted(os.listdir(mnt / "w")) == ["deep", "link", "log", "model.bin"]
        # A big file written in pieces at offsets, as a program writing a checkpoint does.
        with open(mnt / "w" / "ckpt", "wb") as f:
            f.seek(6 * MiB)
            f.write(b"tail")
            f.seek(0)
            f.write(b"head")
        want = b"head" + bytes(6 * MiB - 4) + b"tail"
        assert await s.writer.cat("/w/ckpt") == want
        assert (mnt / "w" / "ckpt").read_bytes() == want


async def test_a_failed_commit_is_the_error_of_fsync_and_the_next_fsync_commits(
    tmp_path: Path, pg_dsn: str
) -> None:
    data = os.urandom(3 * MiB + 1)
    async with mounted_mirror(tmp_path, pg_dsn, "--no-cache") as (s, mount):
        path = mount.path / "f" / "x.bin"
        path.parent.mkdir()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            s.cluster.kill_all()  # the source is gone before the commit
            with pytest.raises(OSError) as failed:
                await asyncio.to_thread(os.fsync, fd)
            assert failed.value.errno == errno.EIO
            assert "mount.failed" in mount.tail()
            s.cluster.start_all()
            await s.cluster.wait_leader()
            os.fsync(fd)  # the buffer kept every byte: committed now
        finally:
            os.close(fd)
        assert await s.writer.cat("/f/x.bin") == data

        # A commit refused for good (the directory removed elsewhere) is close()'s error.
        fd = os.open(path.parent / "y.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"doomed")
        await s.writer.rmtree("/f")
        with pytest.raises(OSError) as refused:
            os.close(fd)
        assert refused.value.errno == errno.ENOENT
        assert not await s.writer.exists("/f")


async def test_a_file_unlinked_while_open_for_writing_stays_gone(
    tmp_path: Path, pg_dsn: str
) -> None:
    async with mounted_mirror(tmp_path, pg_dsn, "--no-cache") as (s, mount):
        path = mount.path / "gone"
        with open(path, "wb") as f:
            f.write(b"first")
            f.flush()
            os.fsync(f.fileno())
            f.write(b" and more")
            os.unlink(path)
        assert not await s.writer.exists("/gone")
        assert not path.exists()
        # And a file renamed over while open for writing: the rename's result stands.
        (mount.path / "a").write_bytes(b"a")
        with open(mount.path / "b", "wb") as f:
            f.write(b"b")
            os.rename(mount.path / "a", mount.path / "b")
        assert await s.writer.cat("/b") == b"a"
        done = subprocess.run(["cat", str(mount.path / "b")], capture_output=True, check=True)
        assert done.stdout == b"a"


async def test_the_source_region_mounts_too(tmp_path: Path) -> None:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        where, log = tmp_path / "mnt", tmp_path / "mount.log"
        with mounted_at(cluster.config_path, where, "--no-cache", log=log) as mount:
            (mount.path / "notes").mkdir()
            (mount.path / "notes" / "a.txt").write_bytes(b"at the source")
            async with await FsClient.for_source(load_config(cluster.config_path)) as fs:
                assert await fs.cat("/notes/a.txt") == b"at the source"
                await fs.write_file("/notes/b.txt", b"from a client")
            assert (mount.path / "notes" / "b.txt").read_bytes() == b"from a client"
