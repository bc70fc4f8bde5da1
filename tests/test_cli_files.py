"""`put` and `get` through the real CLI: local files are never damaged, failed puts leak nothing.

`get` writes beside the destination and renames only on success, so an existing local file is
byte-identical after any failure; `put` checks the destination before uploading.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from objstore import open_store
from objstore.keys import BLOCK_PREFIX
from tests.changelog.cluster import SourceCluster
from tests.test_cli import mfs


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SourceCluster]:
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        yield cluster


async def bucket_keys(cluster: SourceCluster) -> list[str]:
    store = await open_store(cluster.cfg.source.bucket, name="test")
    try:
        return sorted([m.key async for m in store.list("")])
    finally:
        await store.aclose()


def assert_clean_error(proc: object, *words: bytes) -> None:
    assert proc.returncode != 0  # type: ignore[attr-defined]
    err: bytes = proc.stderr  # type: ignore[attr-defined]
    assert err.startswith(b"error: "), err
    assert b"Traceback" not in err
    for w in words:
        assert w in err, err


async def test_get_never_damages_a_local_file(source: SourceCluster, tmp_path: Path) -> None:
    cfg = source.config_path
    data = os.urandom(5 * 1024 * 1024 + 3)
    (tmp_path / "in.bin").write_bytes(data)
    mfs("put", str(tmp_path / "in.bin"), "/models/m.bin", config=cfg)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "precious.txt"
    mine.write_bytes(b"the user's own bytes\n" * 1000)
    mine.chmod(0o640)
    original = mine.read_bytes()

    # A typo in the remote path: the local file is untouched, nothing is left beside it.
    proc = mfs("get", "/models/typo.bin", str(mine), config=cfg, check=False)
    assert_clean_error(proc, b"ENOENT")
    assert mine.read_bytes() == original
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]

    # The remote path names a directory.
    proc = mfs("get", "/models", str(mine), config=cfg, check=False)
    assert_clean_error(proc, b"EISDIR")
    assert mine.read_bytes() == original

    # Fault injected: a block is missing from the bucket, so the read fails part-way.
    [key, *_] = [k for k in await bucket_keys(source) if k.startswith(BLOCK_PREFIX)]
    store = await open_store(source.cfg.source.bucket, name="test")
    saved = await store.get(key)
    await store.delete(key)
    try:
        proc = mfs("get", "/models/m.bin", str(mine), config=cfg, check=False)
        assert_clean_error(proc, key.encode())
        assert mine.read_bytes() == original
        assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    finally:
        await store.put(key, saved)
        await store.aclose()

    # Success replaces it whole, keeping the file's mode.
    mfs("get", "/models/m.bin", str(mine), config=cfg)
    assert mine.read_bytes() == data
    assert mine.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


async def test_get_into_a_directory_and_a_missing_local_parent(
    source: SourceCluster, tmp_path: Path
) -> None:
    cfg = source.config_path
    (tmp_path / "in.bin").write_bytes(b"hello")
    mfs("put", str(tmp_path / "in.bin"), "/a/hello.txt", config=cfg)
    into = tmp_path / "dl"
    into.mkdir()
    mfs("get", "/a/hello.txt", str(into), config=cfg)
    assert (into / "hello.txt").read_bytes() == b"hello"
    mfs("get", "/a/hello.txt", str(into) + "/", config=cfg)
    assert (into / "hello.txt").read_bytes() == b"hello"

    proc = mfs("get", "/a/hello.txt", str(tmp_path / "nope" / "x.txt"), config=cfg, check=False)
    assert_clean_error(proc, b"nope")
    assert b"hint: " in proc.stderr
    assert not (tmp_path / "nope").exists()


async def test_put_makes_parents_and_failed_puts_upload_nothing(
    source: SourceCluster, tmp_path: Path
) -> None:
    cfg = source.config_path
    data = os.urandom(6 * 1024 * 1024)
    local = tmp_path / "in.bin"
    local.write_bytes(data)
    mfs("put", str(local), "/deep/er/f.bin", config=cfg)
    assert mfs("cat", "/deep/er/f.bin", config=cfg).stdout == data
    before = await bucket_keys(source)

    proc = mfs("put", "--no-parents", str(local), "/other/f.bin", config=cfg, check=False)
    assert_clean_error(proc, b"ENOENT", b"/other")
    assert b"hint: " in proc.stderr
    for dest, word in [
        ("/deep", b"EISDIR"),
        ("/deep/er/", b"EINVAL"),
        ("/deep/er/f.bin/x", b"ENOTDIR"),
    ]:
        proc = mfs("put", str(local), dest, config=cfg, check=False)
        assert_clean_error(proc, word)
    assert await bucket_keys(source) == before, "a failed put left objects in the bucket"
    assert mfs("ls", "/", config=cfg).stdout.split() == [b"deep/"]
