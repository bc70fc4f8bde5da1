"""The public API, the sync client, fsspec and the CLI through a mirror region.

A real source, a real region daemon following it (copying paused, so reads fall back to the
source bucket), its PostgreSQL replica: what a program sees through `--region eu` /
`mirrorfs://eu/...` is what it sees through the source — the same bytes, the same listings,
the same errors and exit codes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from cli.client import aconnect, connect
from cli.filesystem import RegionFileSystem
from tests.fallback.test_mirror_reads import paused_region
from volume.errors import FsError
from volume.inode import BLOCK_SIZE


def mirrorfs(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "cli", "--config", str(config), *args]
    return subprocess.run(cmd, capture_output=True, timeout=120)


async def test_the_api_through_a_mirror_reads_as_at_the_source(tmp_path: Path, pg_dsn: str) -> None:
    async with paused_region(tmp_path, pg_dsn) as s:
        data = os.urandom(2 * BLOCK_SIZE + 5)
        await s.put("/m/a.bin", data)
        await s.put("/m/sub/b.txt", b"bee")
        await s.region.wait_applied(await s.put("/m/sub/c.txt", b"sea"))
        async with (
            await aconnect(s.cfg, "eu", uid=0, gid=0) as eu,
            await aconnect(s.cfg, "source", uid=0, gid=0) as src,
        ):
            assert eu.region == "eu"
            async with eu.open("/m/a.bin") as f:
                assert (f.size, f.stale) == (len(data), False)
                f.seek(BLOCK_SIZE - 2)
                assert await f.read(4) == data[BLOCK_SIZE - 2 : BLOCK_SIZE + 2]
                f.seek(1)
                assert await f.read() == data[1:]
                opened_at = f.version
                # Overwritten at the source and applied here: the handle keeps its version.
                await s.region.wait_applied(await s.put("/m/a.bin", b"replaced"))
                f.seek(0)
                assert await f.read(10) == data[:10] and f.version == opened_at
            assert await eu.read_file("/m/a.bin") == b"replaced"
            assert [w async for w in eu.walk("/m")] == [w async for w in src.walk("/m")]
            assert await eu.listdir("/m/sub") == ["b.txt", "c.txt"]
            for call in (
                lambda fs: fs.stat("/m/nope"),
                lambda fs: fs.read_file("/m/nope"),
                lambda fs: fs.open("/m/sub").__aenter__(),
                lambda fs: fs.listdir("/m/a.bin"),
            ):
                with pytest.raises(FsError) as mine:
                    await call(eu)
                with pytest.raises(FsError) as theirs:
                    await call(src)
                assert type(mine.value) is type(theirs.value)  # FileNotFoundError, ...
                assert str(mine.value) == str(theirs.value)
                assert mine.value.errno == theirs.value.errno
            # Written from the region, read back there at once (read-your-writes).
            await eu.write_file("/m/from-eu.bin", b"written in eu")
            assert await eu.read_file("/m/from-eu.bin") == b"written in eu"
            await eu.rmtree("/m/sub")
            assert await eu.listdir("/m") == ["a.bin", "from-eu.bin"]

        def sync_and_fsspec() -> None:
            with connect(s.cluster.config_path, "eu", uid=0, gid=0) as sync:
                assert sync.region == "eu"
                with sync.open("/m/from-eu.bin") as f:
                    assert f.read(7) == b"written" and f.read() == b" in eu"
                sync.write_file("/m/sync.txt", b"sync")
                assert sync.cat("/m/sync.txt") == b"sync"
            opts = {"config": str(s.cluster.config_path)}
            df = pd.DataFrame({"x": np.arange(100), "y": np.arange(100) * 0.5})
            df.to_parquet("mirrorfs://eu/m/t.parquet", storage_options=opts)
            back = pd.read_parquet("mirrorfs://eu/m/t.parquet", storage_options=opts)
            pd.testing.assert_frame_equal(back, df)
            fs = fsspec.filesystem("mirrorfs", region="eu", **opts)
            try:
                assert fs.ls("/m", detail=False) == [
                    "/m/a.bin",
                    "/m/from-eu.bin",
                    "/m/sync.txt",
                    "/m/t.parquet",
                ]
                assert fs.unstrip_protocol("/m/a.bin") == "mirrorfs://eu/m/a.bin"
                with pytest.raises(FileNotFoundError):
                    fs.cat_file("/m/nope")
            finally:
                for cached in RegionFileSystem._cache.values():
                    cached.close()
                RegionFileSystem.clear_instance_cache()

        await asyncio.to_thread(sync_and_fsspec)


async def test_cli_verbs_in_a_mirror_answer_as_at_the_source(tmp_path: Path, pg_dsn: str) -> None:
    async with paused_region(tmp_path, pg_dsn) as s:
        await s.put("/d/f.bin", b"12345")
        await s.put("/d/g.bin", os.urandom(BLOCK_SIZE + 1))
        await s.writer.source.op("symlink", path="/d/link", target="f.bin", uid=0, gid=0)
        await s.region.wait_applied(await s.writer.mkdir("/d/empty"))
        config = s.cluster.config_path
        out = tmp_path / "out"
        out.mkdir()
        commands = [
            ["ls", "-l", "/d"],
            ["ls", "/d/f.bin"],
            ["stat", "/d/link"],
            ["stat", "--json", "/d/f.bin"],
            ["cat", "/d/f.bin"],
            ["cat", "/nope"],
            ["cat", "/d"],
            ["ls", "/d/nope"],
            ["stat", "/d/nope"],
            ["get", "/d/nope", str(out)],
            ["rm", "-d", "/d"],
            ["mkdir", "/d/empty"],
            ["mv", "/nope", "/x"],
        ]

        def run_all(region: str) -> list[tuple[int, bytes, bytes]]:
            runs = [mirrorfs(config, *cmd, "--region", region) for cmd in commands]
            return [(p.returncode, p.stdout, p.stderr) for p in runs]

        in_eu, at_source = await asyncio.gather(
            asyncio.to_thread(run_all, "eu"), asyncio.to_thread(run_all, "source")
        )
        for cmd, mine, theirs in zip(commands, in_eu, at_source, strict=True):
            assert mine == theirs, (cmd, mine, theirs)
            if mine[0] != 0:
                assert mine[0] == 1 and mine[2].startswith(b"error: "), (cmd, mine)
                assert b"Traceback" not in mine[2]
        assert in_eu[4][1] == b"12345"
        assert in_eu[0][1].decode().splitlines()[3].endswith(" link -> f.bin")
        assert list(out.iterdir()) == []

        # The follower stopped: past its window, `serve` answers from the replica with a
        # warning on stderr; the exit status is still 0.
        s.region.stop()
        await s.put("/d/f.bin", b"newer")
        served = await asyncio.to_thread(
            mirrorfs, config, "cat", "--region", "eu", "--window", "0.2", "--policy", "serve",
            "/d/f.bin",
        )  # fmt: skip
        assert served.returncode == 0, served.stderr
        assert served.stdout == b"12345"
        assert b"warning: /d/f.bin was served from region 'eu'" in served.stderr
        for verb in ("stat", "ls"):  # bare attributes are flagged the same way
            served = await asyncio.to_thread(
                mirrorfs, config, verb, "--region", "eu", "--window", "0.2", "--policy", "serve",
                "/d/f.bin",
            )  # fmt: skip
            assert served.returncode == 0, served.stderr
            assert b"was served from region 'eu'" in served.stderr, (verb, served.stderr)
        fresh = await asyncio.to_thread(
            mirrorfs, config, "cat", "--region", "eu", "--window", "0.2", "--policy", "source",
            "/d/f.bin",
        )  # fmt: skip
        assert fresh.returncode == 0 and fresh.stdout == b"newer" and fresh.stderr == b""
