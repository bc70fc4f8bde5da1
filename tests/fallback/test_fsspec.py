"""`mirrorfs://` through fsspec: its own reusable test suite, pandas, safetensors.

fsspec's abstract tests (fsspec.tests.abstract) run against a real one-node source region,
found through the installed entry point, as a user's `fsspec.open("mirrorfs://...")` finds it.
Which of them do not apply, and why, is in MirrorFixtures' docstring.
"""

from __future__ import annotations

import asyncio
import io
import os
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cli.filesystem import RegionFileSystem
from fallback.fsspec import MirrorFileSystem
from tests.changelog.cluster import SourceCluster
from volume.errors import ConfigError
from volume.inode import BLOCK_SIZE


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceCluster]:
    cluster = SourceCluster(tmp_path_factory.mktemp("fsspec") / "vol", nodes=1)
    cluster.start_all()
    try:
        asyncio.run(cluster.wait_leader())
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture(scope="module")
def mfs(cluster: SourceCluster) -> Iterator[MirrorFileSystem]:
    fs = fsspec.filesystem("mirrorfs", config=str(cluster.config_path))
    try:
        yield fs
    finally:
        for cached in [fs, *RegionFileSystem._cache.values()]:  # every one a test made
            cached.close()
        RegionFileSystem.clear_instance_cache()


class MirrorFixtures(AbstractFixtures):  # type: ignore[misc]
    """fsspec's abstract Copy, Get, Put, Open and Pipe tests, each in a fresh directory.

    Not run, because they do not apply: fsspec.tests.abstract.mv (its tests are for the local
    file system only: they build `fsspec.filesystem("file")` and chmod a local directory);
    the AsyncFileSystem-only behaviour (MirrorFileSystem is a synchronous AbstractFileSystem
    over the client's own background loop, so `asynchronous=True` is not offered)."""

    @pytest.fixture
    def fs(self, mfs: MirrorFileSystem) -> MirrorFileSystem:
        return mfs

    @pytest.fixture
    def fs_join(self) -> object:
        return posixpath.join

    @pytest.fixture
    def fs_path(self, mfs: MirrorFileSystem) -> Iterator[str]:
        root = f"/abstract-{uuid.uuid4().hex[:8]}"
        mfs.makedirs(root)
        yield root
        mfs.rm(root, recursive=True)


class TestCopy(AbstractCopyTests, MirrorFixtures):  # type: ignore[misc]
    pass


class TestGet(AbstractGetTests, MirrorFixtures):  # type: ignore[misc]
    pass


class TestPut(AbstractPutTests, MirrorFixtures):  # type: ignore[misc]
    pass


class TestOpen(AbstractOpenTests, MirrorFixtures):  # type: ignore[misc]
    pass


class TestPipe(AbstractPipeTests, MirrorFixtures):  # type: ignore[misc]
    pass


def test_urls_name_the_region_and_the_entry_point_finds_it(
    cluster: SourceCluster, mfs: MirrorFileSystem
) -> None:
    assert isinstance(mfs, RegionFileSystem) and mfs.region == "source"
    mfs.pipe_file("/u/hello.txt", b"hello\nworld\n")
    url = "mirrorfs://source/u/hello.txt"
    with fsspec.open(url, config=str(cluster.config_path)) as f:
        assert f.read() == b"hello\nworld\n"
    with fsspec.open(url, "rt", config=str(cluster.config_path)) as f:
        assert f.readlines() == ["hello\n", "world\n"]
    fs, path = fsspec.core.url_to_fs(url, config=str(cluster.config_path))
    assert isinstance(fs, RegionFileSystem) and fs.region == "source"
    assert path == "/u/hello.txt"
    assert fs.unstrip_protocol(path) == url
    assert MirrorFileSystem._strip_protocol("mirrorfs:///a//b/") == "/a/b"
    assert MirrorFileSystem._get_kwargs_from_urls("mirrorfs://eu/x") == {"region": "eu"}
    assert MirrorFileSystem._get_kwargs_from_urls("mirrorfs:///x") == {}


def test_an_unknown_region_is_a_config_error_naming_the_known(cluster: SourceCluster) -> None:
    fs = fsspec.filesystem("mirrorfs", region="mars", config=str(cluster.config_path))
    try:
        with pytest.raises(ConfigError, match=r"'mars' \(known: source\)"):
            fs.ls("/")
    finally:
        fs.close()


def test_info_ls_and_errors_as_a_local_file_system_gives_them(mfs: MirrorFileSystem) -> None:
    mfs.pipe_file("/i/f.bin", b"x" * 10)
    mfs.client.run(mfs.client.client.commit_op("symlink", path="/i/link", target="f.bin"))
    info = mfs.info("mirrorfs://source/i/f.bin")
    assert (info["name"], info["size"], info["type"], info["islink"]) == (
        "/i/f.bin",
        10,
        "file",
        False,
    )
    assert oct(info["mode"]) == "0o100644" and info["mtime"] > 1e9
    link = mfs.info("/i/link")
    assert (link["type"], link["islink"], link["destination"]) == ("other", True, "f.bin")
    assert mfs.ls("/i", detail=False) == ["/i/f.bin", "/i/link"]
    assert mfs.ls("/i/f.bin", detail=False) == ["/i/f.bin"]  # ls of a file is the file
    assert mfs.isdir("/i") and mfs.isfile("/i/f.bin") and not mfs.exists("/i/none")
    assert mfs.modified("/i/f.bin").timestamp() == pytest.approx(info["mtime"])
    with pytest.raises(FileNotFoundError):
        mfs.info("/i/none")
    with pytest.raises(FileNotFoundError):
        mfs.cat_file("/i/none")
    with pytest.raises(IsADirectoryError):
        mfs.open("/i")
    with pytest.raises(FileExistsError):
        mfs.mkdir("/i")
    with pytest.raises(FileExistsError):
        mfs.makedirs("/i/f.bin", exist_ok=True)
    mfs.makedirs("/i", exist_ok=True)
    with pytest.raises(ValueError, match="mode"):
        mfs.open("/i/f.bin", "r+b")


def test_reads_of_ranges_and_writes_whole_or_not_at_all(mfs: MirrorFileSystem) -> None:
    data = os.urandom(BLOCK_SIZE + 1000)
    mfs.pipe_file("/r/d.bin", data)
    assert mfs.cat_file("/r/d.bin", start=BLOCK_SIZE - 5, end=BLOCK_SIZE + 5) == data[-1005:-995]
    assert mfs.cat_file("/r/d.bin", start=-10) == data[-10:]
    with mfs.open("/r/d.bin") as f:
        f.seek(BLOCK_SIZE)
        assert f.read(3) == data[BLOCK_SIZE : BLOCK_SIZE + 3]
        assert f.size == len(data)

    with pytest.raises(RuntimeError), mfs.open("/r/d.bin", "wb") as w:
        w.write(b"half")
        raise RuntimeError("the writer failed")
    assert mfs.cat_file("/r/d.bin") == data  # the old file, not half a new one

    with mfs.open("/r/d.bin", "ab") as w:
        w.write(b"+tail")
    assert mfs.cat_file("/r/d.bin") == data + b"+tail"

    with mfs.transaction:
        with mfs.open("/r/t.bin", "wb") as w:
            w.write(b"in a transaction")
        assert not mfs.exists("/r/t.bin")  # committed when the transaction ends
    assert mfs.cat_file("/r/t.bin") == b"in a transaction"

    mfs.mv("/r/t.bin", "/r/moved.bin")
    mfs.mkdir("/r/sub", create_parents=False)
    mfs.mv("/r/moved.bin", "/r/sub/")  # into a directory, as fsspec's cp
    assert mfs.ls("/r/sub", detail=False) == ["/r/sub/moved.bin"]
    with pytest.raises(IsADirectoryError):
        mfs.mv("/r/sub", "/r/sub2")
    mfs.mv("/r/sub", "/r/sub2", recursive=True)
    assert mfs.cat_file("/r/sub2/moved.bin") == b"in a transaction"


def test_pandas_reads_and_writes_parquet_through_mirrorfs(
    cluster: SourceCluster, mfs: MirrorFileSystem
) -> None:
    df = pd.DataFrame({"n": np.arange(1000), "s": [f"row {i}" for i in range(1000)]})
    opts = {"config": str(cluster.config_path)}
    df.to_parquet("mirrorfs://source/data/t.parquet", storage_options=opts)
    back = pd.read_parquet("mirrorfs://source/data/t.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(back, df)
    df.to_csv("mirrorfs://source/data/t.csv", index=False, storage_options=opts)
    csv = pd.read_csv("mirrorfs://source/data/t.csv", storage_options=opts)
    pd.testing.assert_frame_equal(csv, df)


def test_safetensors_load_from_the_bytes_of_an_fsspec_file(
    cluster: SourceCluster, mfs: MirrorFileSystem
) -> None:
    tensors = {"w": np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)}
    with fsspec.open("mirrorfs:///m/x.safetensors", "wb", config=str(cluster.config_path)) as f:
        f.write(st_save(tensors))
    with fsspec.open("mirrorfs:///m/x.safetensors", config=str(cluster.config_path)) as f:
        loaded = st_load(f.read())
    assert np.array_equal(loaded["w"], tensors["w"])


def test_put_and_get_files_and_trees(mfs: MirrorFileSystem, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "a").mkdir(parents=True)
    (src / "a" / "1.bin").write_bytes(os.urandom(BLOCK_SIZE + 1))
    (src / "2.txt").write_text("two")
    mfs.put(str(src), "/p", recursive=True)
    assert sorted(mfs.find("/p")) == ["/p/2.txt", "/p/a/1.bin"]
    out = tmp_path / "out"
    mfs.get("/p", str(out), recursive=True)
    assert (out / "a" / "1.bin").read_bytes() == (src / "a" / "1.bin").read_bytes()
    assert (out / "2.txt").read_text() == "two"
    buf = io.BytesIO()
    mfs.get_file("/p/2.txt", buf)
    assert buf.getvalue() == b"two"
