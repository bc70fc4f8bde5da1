"""The public API (open/read/seek, read_file, write_file, listdir, walk) and the sync client.

Against a real one-node source region; errors come out as the OSError subclasses a program
written against local files expects. Mirror regions run the same API: tests/fallback/
test_api_mirror.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import pickle
import random
import subprocess
import sys
import threading
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cli.client import aconnect, connect
from fallback.blocks import SourceBlocks
from fallback.client import FsClient
from fallback.sync import SyncClient
from fallback.writer import WritePolicy
from objstore import ObjectStore, StoreLayer
from objstore.errors import ChecksumError
from objstore.keys import BLOCK_PREFIX
from tests.changelog.cluster import SourceCluster
from volume.errors import ConfigError, FsError
from volume.inode import BLOCK_SIZE


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as c:
        yield c


@pytest.fixture
async def fs(cluster: SourceCluster) -> AsyncIterator[FsClient]:
    async with await aconnect(cluster.config_path, "source", uid=0, gid=0) as client:
        yield client


@pytest.fixture
def sync(cluster: SourceCluster) -> Iterator[SyncClient]:
    with connect(cluster.config_path, uid=0, gid=0) as client:
        yield client


async def test_handle_reads_ranges_across_blocks_and_seeks(fs: FsClient) -> None:
    data = os.urandom(2 * BLOCK_SIZE + 12345)
    await fs.write_file("/m/weights.bin", data)
    rng = random.Random(7)
    async with fs.open("/m/weights.bin") as f:
        assert (f.size, f.stale, f.tell()) == (len(data), False, 0)
        assert f.version >= 1
        assert await f.read(10) == data[:10]
        assert await f.read(BLOCK_SIZE) == data[10 : BLOCK_SIZE + 10]  # crosses a block
        for _ in range(40):  # random seeks, both directions, reads of every size
            pos = rng.randrange(0, len(data) + 10)
            n = rng.choice([0, 1, 7, 4096, BLOCK_SIZE - 1, BLOCK_SIZE + 1, -1])
            assert f.seek(pos) == pos
            want = data[pos:] if n < 0 else data[pos : pos + n]
            assert await f.read(n) == want, (pos, n)
            assert f.tell() == (pos + len(want) if want else pos)
        f.seek(-5, io.SEEK_END)
        assert await f.read() == data[-5:]
        assert await f.read() == b""  # at the end
        f.seek(3)
        f.seek(4, io.SEEK_CUR)
        assert await f.read(3) == data[7:10]
        with pytest.raises(ValueError):
            f.seek(-1)
    with pytest.raises(ValueError, match="closed"):
        await f.read(1)
    assert await fs.read_file("/m/weights.bin") == data


async def test_a_handle_keeps_the_version_it_opened(fs: FsClient) -> None:
    old = os.urandom(BLOCK_SIZE + 100)
    await fs.write_file("/f", old)
    handle = await fs.open("/f")
    try:
        assert await handle.read(50) == old[:50]
        new = await fs.write_file("/f", b"new contents")
        assert handle.version < new.version
        handle.seek(BLOCK_SIZE)  # a block the handle had not read yet: still the old one
        assert await handle.read() == old[BLOCK_SIZE:]
        assert handle.size == len(old)
    finally:
        await handle.aclose()
    async with fs.open("/f") as again:
        assert await again.read() == b"new contents"
        assert again.version == new.version


class HeldGets(StoreLayer):
    """GETs after the first `free` wait until released: readahead stays in flight."""

    def __init__(self, inner: ObjectStore, free: int) -> None:
        super().__init__(inner)
        self.free = free
        self.release = asyncio.Event()
        self.waiting = 0

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        if self.free > 0:
            self.free -= 1
        else:
            self.waiting += 1
            await self.release.wait()
        return await self.inner.get(key, offset=offset, length=length)


async def test_closing_a_handle_mid_read_cancels_its_readahead(fs: FsClient) -> None:
    data = os.urandom(6 * BLOCK_SIZE)
    await fs.write_file("/big", data)
    held = HeldGets(fs.store, free=2)
    fs.blocks = SourceBlocks(held)
    before = asyncio.all_tasks()
    async with fs.open("/big") as f:
        assert await f.read(1) == data[:1]  # after no seek but at 0: just the first block
        assert held.waiting == 0
        assert await f.read(BLOCK_SIZE) == data[1 : BLOCK_SIZE + 1]  # reading on: readahead
        for _ in range(100):
            if held.waiting == 4:
                break
            await asyncio.sleep(0.01)
        assert held.waiting == 4  # the rest of the file, in flight
    await asyncio.sleep(0)  # let the cancelled fetches unwind
    assert asyncio.all_tasks() == before


async def test_missing_paths_are_oserrors_with_errno(fs: FsClient) -> None:
    await fs.write_file("/d/file", b"x")
    with pytest.raises(FileNotFoundError) as info:
        await fs.stat("/nope")
    assert info.value.errno == 2 and isinstance(info.value, FsError)
    assert "/nope" in str(info.value) and info.value.filename == "/nope"
    for call in (
        lambda: fs.read_file("/nope"),
        lambda: fs.open("/d/nope").__aenter__(),
        lambda: fs.listdir("/nope"),
        lambda: fs.rm("/nope"),
        lambda: fs.mv("/nope", "/other"),
    ):
        with pytest.raises(FileNotFoundError):
            await call()
    with pytest.raises(FileNotFoundError):
        [x async for x in fs.walk("/nope")]
    with pytest.raises(IsADirectoryError):
        await fs.open("/d")
    with pytest.raises(NotADirectoryError):
        await fs.listdir("/d/file")
    with pytest.raises(FileExistsError):
        await fs.mkdir("/d")
    with pytest.raises(OSError) as err:  # no builtin subclass: an OSError with its errno
        await fs.rm("/d", dir=True)
    assert err.value.errno == 39  # ENOTEMPTY
    assert await fs.exists("/d/file") and not await fs.exists("/d/nope")


async def test_walk_is_top_down_like_os_walk_and_prunes(fs: FsClient) -> None:
    for path in ["/w/a/1", "/w/a/b/2", "/w/c/3", "/w/top"]:
        await fs.write_file(path, path.encode())
    await fs.mkdir("/w/empty")
    walked = [(d, sorted(ds), sorted(fs_)) async for d, ds, fs_ in fs.walk("/w")]
    assert walked == [
        ("/w", ["a", "c", "empty"], ["top"]),
        ("/w/a", ["b"], ["1"]),
        ("/w/a/b", [], ["2"]),
        ("/w/c", [], ["3"]),
        ("/w/empty", [], []),
    ]
    pruned = []
    async for d, dirs, _ in fs.walk("/w/"):
        pruned.append(d)
        if "a" in dirs:
            dirs.remove("a")
    assert pruned == ["/w", "/w/c", "/w/empty"]
    assert await fs.listdir("/w") == ["a", "c", "empty", "top"]


async def test_rmtree_removes_a_tree_in_one_request_or_in_several(fs: FsClient) -> None:
    for path in ["/t/a/1", "/t/a/b/2", "/t/c", "/keep"]:
        await fs.write_file(path, b"x")
    await fs.mkdir("/t/a/b/empty")
    await fs.source.op("symlink", path="/t/a/link", target="../c", uid=0, gid=0)
    version = await fs.rmtree("/t")
    assert await fs.listdir("/") == ["keep"]
    records = [r async for r in fs.source.stream(1, follow=False) if not r.is_tick]
    mine = [r for r in records if r.op in ("unlink", "rmdir")]
    assert len(mine) == 8 and mine[-1].version == version
    assert [r.ends_request for r in mine] == [False] * 7 + [True]  # one request
    fs.write_policy = WritePolicy(max_ops=3)
    for path in ["/u/a/1", "/u/a/2", "/u/b/c/3", "/u/d"]:
        await fs.write_file(path, b"y")
    await fs.rmtree("/u")  # 9 entries: 3 requests, deepest first
    assert await fs.listdir("/") == ["keep"]
    await fs.rmtree("/keep")  # a file: just it
    assert await fs.listdir("/") == []
    with pytest.raises(FileNotFoundError):
        await fs.rmtree("/keep")


async def test_write_file_takes_bytes_and_files(fs: FsClient, tmp_path: Path) -> None:
    res = await fs.write_file("/new/dir/x", bytearray(b"abc"))
    assert res.size == 3 and await fs.read_file("/new/dir/x") == b"abc"
    local = tmp_path / "l.bin"
    local.write_bytes(b"from a file" * 1000)
    with open(local, "rb") as f:
        await fs.write_file("/new/y", f)
    assert await fs.read_file("/new/y") == local.read_bytes()
    with pytest.raises(FileNotFoundError):
        await fs.write_file("/absent/z", b"", parents=False)


async def test_a_corrupt_block_through_a_handle_is_an_error_not_bytes(fs: FsClient) -> None:
    data = os.urandom(100_000)
    await fs.write_file("/c", data)
    [key] = [m.key async for m in fs.store.list(BLOCK_PREFIX)]
    good = await fs.store.get(key)
    bad = bytearray(good)
    bad[7] ^= 1
    await fs.store.put(key, bytes(bad))
    async with fs.open("/c") as f:
        with pytest.raises(ChecksumError):
            await f.read(10)
        await fs.store.put(key, good)  # repaired: the same handle reads again
        assert await f.read(10) == data[:10]


def test_sync_client_verbs(sync: SyncClient, tmp_path: Path) -> None:
    data = os.urandom(BLOCK_SIZE + 17)
    assert sync.write_file("/s/a.bin", data).size == len(data)
    local = tmp_path / "up.bin"
    local.write_bytes(b"up" * 100)
    sync.put(local, "/s/b.bin")
    assert sync.read_file("/s/a.bin") == data
    assert sync.cat("/s/b.bin") == b"up" * 100
    assert sync.listdir("/s") == ["a.bin", "b.bin"]
    assert [n for n, _ in sync.ls("/s")] == ["a.bin", "b.bin"]
    assert sync.stat("/s/a.bin").size == len(data)
    assert list(sync.walk("/")) == [("/", ["s"], []), ("/s", [], ["a.bin", "b.bin"])]
    assert sync.get("/s/a.bin", tmp_path / "down.bin") == len(data)
    assert (tmp_path / "down.bin").read_bytes() == data
    sync.mkdir("/s/sub/deeper", parents=True)
    sync.mv("/s/b.bin", "/s/sub/b.bin")
    sync.rm("/s/sub/b.bin")
    sync.rm("/s/sub/deeper", dir=True)
    assert sync.listdir("/s") == ["a.bin", "sub"]
    with pytest.raises(FileNotFoundError):
        sync.read_file("/s/b.bin")
    with pytest.raises(FileNotFoundError):
        sync.get("/s/nope", tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["down.bin", "up.bin", "vol"]


def test_sync_reader_is_a_file_for_zipfile_pickle_and_safetensors(sync: SyncClient) -> None:
    # torch.save writes a zip of pickles and torch.load reads it through exactly these calls
    # (seek to the end, read the central directory, seek back into each member); torch itself
    # is too big to install for a test.
    buf = io.BytesIO()
    weights = {"w": list(range(1000)), "name": "tiny"}
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model/data.pkl", pickle.dumps(weights))
        z.writestr("model/blob", os.urandom(BLOCK_SIZE + 3))
    sync.write_file("/model.zip", buf.getvalue())
    with sync.open("/model.zip") as f:
        assert f.seekable() and f.readable() and f.size == len(buf.getvalue())
        with zipfile.ZipFile(f) as z:
            assert pickle.loads(z.read("model/data.pkl")) == weights
            assert len(z.read("model/blob")) == BLOCK_SIZE + 3
        f.seek(0)
        out = bytearray(4)
        assert f.readinto(out) == 4 and bytes(out) == buf.getvalue()[:4]
        assert io.BufferedReader(f).read(6) == buf.getvalue()[4:10]  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        f.read(1)

    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(7, np.int64)}
    sync.write_file("/model.safetensors", st_save(tensors))
    loaded = st_load(sync.read_file("/model.safetensors"))
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert np.array_equal(loaded[k], v)
    with sync.open("/model.safetensors") as f:
        assert np.array_equal(st_load(f.read())["a"], tensors["a"])


def test_sync_reader_lines_across_blocks(sync: SyncClient) -> None:
    lines = [f"line {i} ".encode() * (i % 50) + b"\n" for i in range(40_000)]
    data = b"".join(lines)
    assert len(data) > BLOCK_SIZE  # lines straddle a block boundary
    sync.write_file("/lines.txt", data)
    with sync.open("/lines.txt") as f:
        assert f.peek()[:10] == data[:10] and f.tell() == 0
        assert list(f) == lines  # readline through peek: one scan per buffered block
        assert f.readline() == b"" and f.peek() == b""
        f.seek(len(lines[0]) + 3)
        assert f.readline() == lines[1][3:]
    with sync.open("/lines.txt") as f, io.TextIOWrapper(f, encoding="ascii") as text:
        assert sum(1 for _ in text) == len(lines)


def test_a_closed_sync_client_says_so(cluster: SourceCluster) -> None:
    client = connect(cluster.config_path)
    client.write_file("/x", b"1")
    f = client.open("/x")
    client.close()
    client.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        client.read_file("/x")
    f.close()  # its loop is gone: closing is still fine


def test_an_unknown_region_names_the_known_ones(cluster: SourceCluster) -> None:
    with pytest.raises(ConfigError) as info:
        connect(cluster.config_path, region="mars")
    assert "'mars'" in str(info.value) and "known: source" in str(info.value)


EXIT_SCRIPT = """
import asyncio, contextlib, sys
from fallback.client import FsClient
from fallback.sync import SyncClient
from volume.config import load_config

async def connect():
    client = await FsClient.for_source(load_config(sys.argv[1]), uid=0, gid=0)
    # As an embedded PostgreSQL's detach: closing needs a worker thread.
    client.resources = contextlib.AsyncExitStack()
    client.resources.push_async_callback(asyncio.to_thread, print, "closed", flush=True)
    return client

fs = SyncClient(connect)  # never closed: fsspec's cached file systems are not either
print(fs.listdir("/"), flush=True)
"""


def test_a_client_left_open_is_closed_at_exit_while_threads_still_work(
    cluster: SourceCluster,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(cluster.config_path)],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["[]", "closed"], proc.stdout.decode()
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()


def test_threads_share_a_sync_client(sync: SyncClient) -> None:
    data = os.urandom(3 * BLOCK_SIZE)
    sync.write_file("/shared.bin", data)
    shared = sync.open("/shared.bin")
    shared_lock = threading.Lock()  # seek + read as one step, as pyarrow's read_at does

    def reader(seed: int) -> int:
        rng = random.Random(seed)
        checked = 0
        with sync.open("/shared.bin") as own:
            for _ in range(30):
                pos, n = rng.randrange(len(data)), rng.choice([1, 100, BLOCK_SIZE])
                own.seek(pos)
                assert own.read(n) == data[pos : pos + n]
                with shared_lock:
                    shared.seek(pos)
                    assert shared.read(n) == data[pos : pos + n]
                checked += 1
        return checked

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(reader, range(8))) == 8 * 30
    shared.close()
