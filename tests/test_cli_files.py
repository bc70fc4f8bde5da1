"""`put` and `get` through the real CLI: local files are never damaged, failed puts leak nothing.

`get` writes beside the destination and renames only on success, so an existing local file is
byte-identical after any failure; `put` checks the destination before uploading.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
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


async def test_stat_ls_long_and_regions_by_name(source: SourceCluster, tmp_path: Path) -> None:
    cfg = source.config_path
    (tmp_path / "f").write_bytes(b"12345")
    mfs("put", str(tmp_path / "f"), "/d/f.bin", config=cfg)
    async with source.client() as c:
        await c.op("symlink", path="/d/link", target="f.bin", uid=0, gid=0)

    human = mfs("stat", "/d/f.bin", config=cfg).stdout.decode()
    assert "kind:     file" in human and "size:     5 bytes" in human
    assert "mode:     0644 (-rw-r--r--)" in human and " UTC" in human
    as_json = orjson.loads(mfs("stat", "--json", "/d/f.bin", config=cfg).stdout)
    assert as_json["size"] == 5 and as_json["mode"] == 0o644 and as_json["kind"] == "file"
    assert "path:     /d/link -> f.bin" in mfs("stat", "/d/link", config=cfg).stdout.decode()

    lines = mfs("ls", "-l", "/d", config=cfg).stdout.decode().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("-rw-r--r--") and lines[0].split()[4] == "5"
    assert lines[0].endswith(" f.bin")
    assert lines[1].startswith("lrwxrwxrwx") and lines[1].endswith(" link -> f.bin")
    assert mfs("ls", "/d/f.bin", config=cfg).stdout == b"/d/f.bin\n"  # a file: just it
    # The read options are accepted in the source region too (it is never stale).
    out = mfs("cat", "--window", "0.5", "--policy", "error", "/d/f.bin", config=cfg)
    assert out.stdout == b"12345"
    assert mfs("ls", "--region", "source", "/", config=cfg).stdout == b"d/\n"

    # An unknown region: one line naming the known ones, from --region or the environment.
    for args, env in [(["--region", "mars"], {}), ([], {"MIRRORFS_REGION": "mars"})]:
        for verb in (["ls", "/"], ["cat", "/d/f.bin"], ["mkdir", "/x"]):
            proc = mfs_env(env, *verb, *args, config=cfg)
            assert_clean_error(proc, b"'mars'", b"known: source")
            assert proc.returncode == 1 and b"hint: " in proc.stderr
    proc = mfs("cat", "--policy", "sometimes", "/d/f.bin", config=cfg, check=False)
    assert proc.returncode == 2 and b"sometimes" in proc.stderr  # a usage error, as click's
    assert b"Traceback" not in proc.stderr
    assert mfs("ls", "/", config=cfg).stdout == b"d/\n"  # and nothing was made


def mfs_env(env: dict[str, str], *args: str, config: Path) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "cli", "--config", str(config), *args]
    return subprocess.run(cmd, capture_output=True, timeout=120, env={**os.environ, **env})
