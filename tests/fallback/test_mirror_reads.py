"""Reads through a mirror region: a real source cluster, a real region daemon (following the
changelog, copying paused), its PostgreSQL replica and buckets, and the client of
cli/connect.py.

Claims checked: with replication paused, files written at the source read back from the mirror
byte-identical, through fallback, and afterwards their blocks are in the mirror bucket and
marked copied although the replicator never ran; each block was fetched from the source once,
however many readers; with the source bucket down, copied files still read; a corrupt mirror
copy is read correctly and repaired (by the reader, or queued and repaired by the replicator
when the reader cannot write it back); ranged reads; stat, ls and their errors match the
source's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.connect import open_client
from fallback import FallbackBlocks, FsClient
from fallback.errors import ReplicaBehindError
from mirror import CopyQueue, ReplicaView
from objstore import ObjectStore, StoreError, UnavailableError, open_store
from objstore.checksum import checksum
from objstore.faults import FaultLayer, FaultPlan
from objstore.keys import BLOCK_PREFIX, block_key, block_sizes
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from tests.mirror.volume import wait_until
from tests.servers.faultproxy import FaultProxy
from volume.config import VolumeConfig, load_config
from volume.errors import FsError
from volume.inode import BLOCK_SIZE, CHUNK_SIZE

MiB = 1024 * 1024
SIZES = [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 64 * MiB + 1]


@dataclass
class Setup:
    cluster: SourceCluster
    region: MirrorRegion
    cfg: VolumeConfig
    writer: FsClient  # the source region's client

    async def put(self, path: str, data: bytes) -> int:
        return (await self.writer.put(io.BytesIO(data), path)).version  # type: ignore[arg-type]

    async def block_rows(self) -> dict[tuple[int, int], tuple[str, int, str | None]]:
        """{(slice_id, idx): (state, priority, last_error)} of the region's block table."""
        async with self.region.database() as db, db.acquire() as conn:
            rows = await conn.fetch("SELECT slice_id, idx, state, priority, last_error FROM blocks")
        return {
            (r["slice_id"], r["idx"]): (r["state"], r["priority"], r["last_error"]) for r in rows
        }

    async def set_paused(self, paused: bool) -> None:
        async with self.region.database() as db:
            await CopyQueue(db).set_paused(paused)

    async def mirror_bucket(self) -> ObjectStore:
        return await open_store(self.cfg.mirror("eu").bucket, name="test-mirror")


@contextlib.asynccontextmanager
async def paused_region(
    tmp_path: Path, pg_dsn: str, bucket: str | None = None
) -> AsyncIterator[Setup]:
    """A one-node source, and mirror region "eu" whose daemon follows it with copying paused."""
    async with SourceCluster.running(tmp_path / "vol", nodes=1, bucket=bucket) as cluster:
        region = MirrorRegion(cluster, "eu", pg_dsn)
        await region.create()
        setup = Setup(cluster, region, load_config(cluster.config_path), None)  # type: ignore[arg-type]
        await setup.set_paused(True)
        region.start()
        try:
            async with await FsClient.for_source(setup.cfg, uid=0, gid=0) as writer:
                setup.writer = writer
                yield setup
        finally:
            region.stop()


async def read_all(fs: FsClient, path: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([c async for c in fs.read(path, offset=offset, length=length)])


def blocks_of(fs: FsClient) -> FallbackBlocks:
    assert isinstance(fs.blocks, FallbackBlocks)
    return fs.blocks


def source_block_gets(proxy: FaultProxy) -> dict[str, int]:
    """GETs of block keys the source bucket was asked for (through the proxy), per key."""
    out: dict[str, int] = {}
    for method, path in proxy.seen():
        if method == "GET" and f"/{BLOCK_PREFIX}" in path:
            key = path.split("?", 1)[0].split(f"/{BLOCK_PREFIX}", 1)[1]
            out[key] = out.get(key, 0) + 1
    return out


async def test_paused_mirror_reads_fall_back_copy_once_and_survive_a_source_outage(
    tmp_path: Path, pg_dsn: str, s3_bucket: str, fault_proxy: FaultProxy
) -> None:
    bucket = f"s3://{s3_bucket}?endpoint={fault_proxy.url}"
    async with paused_region(tmp_path, pg_dsn, bucket) as s:
        files = {f"/m/f{size}": os.urandom(size) for size in SIZES}
        version = 0
        for path, data in files.items():
            version = await s.put(path, data)
        await s.region.wait_applied(version)
        n_blocks = sum(len(block_sizes(len(d))) for d in files.values())
        assert n_blocks == 22
        fault_proxy.reset()  # count only the reads' GETs from here

        async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
            big = "/m/f67108865"
            # Four readers of the big file at once, and one of every other file, in one process.
            got = await asyncio.gather(
                *(read_all(fs, big) for _ in range(4)),
                *(read_all(fs, p) for p in files if p != big),
            )
            assert all(g == files[big] for g in got[:4]), "a concurrent reader got wrong bytes"
            assert got[4:] == [files[p] for p in files if p != big]
            counters = blocks_of(fs).counters
            assert counters.fallback_reads == n_blocks
            assert counters.fallback_bytes == sum(map(len, files.values()))
            # The big file's other three readers got its 17 blocks from the one source GET
            # each: by joining it, or from the mirror bucket it was written into.
            assert counters.source_gets_saved + counters.mirror_hits >= 3 * 17
        gets = source_block_gets(fault_proxy)
        assert len(gets) == n_blocks and set(gets.values()) == {1}, gets

        # The replicator never ran (paused), yet every block is in the mirror bucket, copied.
        rows = await s.block_rows()
        assert len(rows) == n_blocks and {st for st, _, _ in rows.values()} == {"copied"}
        mirror = await s.mirror_bucket()
        try:
            keys = {m.key async for m in mirror.list(BLOCK_PREFIX)}
            assert len(keys) == n_blocks
        finally:
            await mirror.aclose()
        status = await s.region.status()  # the region's sums: what this client flushed
        assert status["paused"] is True
        assert status["fallback_reads"] == n_blocks
        assert status["fallback_bytes"] == sum(map(len, files.values()))

        # With the source bucket down, the copied files still read (from the mirror alone).
        fault_proxy.reset()
        fault_proxy.set_down(True)
        try:
            async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
                for path, data in files.items():
                    assert await read_all(fs, path) == data, path
                counters = blocks_of(fs).counters
                assert counters.mirror_hits == n_blocks and counters.fallback_reads == 0
        finally:
            fault_proxy.set_down(False)
        assert source_block_gets(fault_proxy) == {}


async def test_a_corrupt_mirror_block_is_read_right_and_repaired(
    tmp_path: Path, pg_dsn: str
) -> None:
    async with paused_region(tmp_path, pg_dsn) as s:
        data = os.urandom(2 * BLOCK_SIZE + 100)
        await s.region.wait_applied(await s.put("/c.bin", data))
        rows_before = await s.block_rows()
        other = os.urandom(1000)
        await s.region.wait_applied(await s.put("/p.bin", other))
        [other_block] = set(await s.block_rows()) - set(rows_before)
        async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
            assert await read_all(fs, "/c.bin") == data  # fallback: now copied
        [(slice_id, _)] = {(sid, 0) for sid, _ in rows_before}
        key = block_key(slice_id, 1, BLOCK_SIZE)
        mirror = await s.mirror_bucket()
        try:

            async def corrupt() -> None:
                bad = bytearray(await mirror.get(key))
                bad[1000] ^= 0xFF
                await mirror.put(key, bytes(bad))

            async def mirror_copy_is_good() -> bool:
                return checksum(await mirror.get(key)) == checksum(
                    data[BLOCK_SIZE : 2 * BLOCK_SIZE]
                )

            # 1. The reader finds the bad copy, reads the source, and overwrites the copy.
            await corrupt()
            async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
                assert await read_all(fs, "/c.bin") == data
                counters = blocks_of(fs).counters
            # (after aclose: the write-back follows the read)
            assert counters.corrupt_repaired == 1 and counters.fallback_reads == 1
            assert counters.mirror_hits == 2
            assert await mirror_copy_is_good()
            assert (await s.block_rows())[(slice_id, 1)][0] == "copied"

            # 2. A reader that cannot write the mirror bucket still reads right; the block is
            # queued for repair (pending, fallback priority, the reason said), a block it read
            # from the source is raised to fallback priority, and the replicator, once
            # resumed, repairs and copies them.
            await corrupt()
            async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
                plan = FaultPlan()
                refused = StoreError("injected: mirror bucket refuses writes", op="put")
                plan.fail("put", refused, refused)
                blocks_of(fs).mirror = FaultLayer(blocks_of(fs).mirror, plan)
                assert await read_all(fs, "/c.bin") == data
                assert await read_all(fs, "/p.bin") == other
            assert blocks_of(fs).counters.corrupt_repaired == 0
            assert plan.calls["put"] == 2
            rows = await s.block_rows()
            state, priority, last_error = rows[(slice_id, 1)]
            assert (state, priority) == ("pending", 100)
            assert last_error is not None and last_error.startswith("mirror-corrupt:")
            assert rows[other_block][:2] == ("pending", 100)
            assert not await mirror_copy_is_good()
            await s.set_paused(False)

            async def repaired() -> bool:
                return {st for st, _, _ in (await s.block_rows()).values()} == {"copied"}

            await wait_until("the replicator repaired the block", repaired)
            assert await mirror_copy_is_good()

            # 3. A failing mirror bucket: every block from the source, asked once each.
            async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
                plan = FaultPlan()
                down = UnavailableError("injected: mirror bucket down", op="get")
                plan.fail("get", down, down, down)
                blocks_of(fs).mirror = FaultLayer(blocks_of(fs).mirror, plan)
                assert await read_all(fs, "/c.bin") == data
                assert blocks_of(fs).counters.fallback_reads == 3
                assert plan.calls["get"] == 3  # no re-check of a bucket that just failed
        finally:
            await mirror.aclose()


async def test_ranges_stat_and_listings_through_the_mirror_match_the_source(
    tmp_path: Path, pg_dsn: str
) -> None:
    async with paused_region(tmp_path, pg_dsn) as s:
        data = os.urandom(CHUNK_SIZE + 2 * BLOCK_SIZE + 7)
        await s.put("/d/big", data)
        await s.put("/d/small", b"hello")
        await s.writer.mkdir("/d/sub")
        version = await s.writer.commit_op("symlink", path="/d/link", target="small")
        await s.region.wait_applied(version)
        async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
            # Ranged reads fetch only the blocks they need.
            assert await read_all(fs, "/d/big", BLOCK_SIZE - 1, 2) == data[BLOCK_SIZE - 1 :][:2]
            assert blocks_of(fs).counters.fallback_reads == 2
            for off, n in [
                (0, 1),
                (5, None),
                (CHUNK_SIZE - 3, 10),
                (len(data) - 1, 5),
                (len(data), 10),
                (3 * BLOCK_SIZE + 17, BLOCK_SIZE),
            ]:
                want = data[off:] if n is None else data[off : off + n]
                assert await read_all(fs, "/d/big", off, n) == want, (off, n)

            src, mir = s.writer, fs
            for path in ["/", "/d", "/d/big", "/d/small", "/d/sub", "/d/link"]:
                assert await mir.stat(path) == await src.stat(path), path
            for path in ["/", "/d", "/d/sub"]:
                assert [e async for e in mir.ls(path)] == [e async for e in src.ls(path)], path
            # The views resolve the same file (a symlink and a directory as themselves, with no
            # chunks), the mirror's with block states.
            for path in ["/d/big", "/d/link", "/d/sub", "/"]:
                for off, n in [(0, None), (CHUNK_SIZE, 1), (1, 0)]:
                    a = await mir.view.resolve_file(path, offset=off, length=n)
                    b = await src.view.resolve_file(path, offset=off, length=n)
                    assert (a.inode, a.chunks) == (b.inode, b.chunks), (path, off, n)
                    assert a.blocks is not None and b.blocks is None

            async def error_of(call: object) -> tuple[int, str]:
                with pytest.raises(FsError) as info:
                    await call  # type: ignore[misc]
                return info.value.errno, str(info.value)

            for make in [
                lambda fs: fs.stat("/nope"),
                lambda fs: fs.stat("/d/small/x"),
                lambda fs: fs.stat("/d/nope/x"),
                lambda fs: fs.cat("/d/sub"),
                lambda fs: fs.cat("/d/link"),
                lambda fs: fs.ls("/d/small").__anext__(),
                lambda fs: fs.ls("/nope").__anext__(),
            ]:
                assert await error_of(make(mir)) == await error_of(make(src))
            assert (await error_of(mir.stat("/nope")))[0] == errno.ENOENT

            # A session that saw a newer version than the replica applied is told so.
            view = fs.view
            assert isinstance(view, ReplicaView)
            applied = await view.applied_version()
            ahead = applied + 1_000_000  # far ahead: the replica moves on with every tick
            with pytest.raises(ReplicaBehindError) as behind:
                await view.lookup("/d", min_version=ahead)
            assert behind.value.region == "eu" and behind.value.wanted == ahead
            assert applied <= behind.value.applied < ahead
            # A call's version is the watermark its snapshot saw.
            resolved = await view.resolve_file("/d/small")
            assert applied <= resolved.version <= await view.applied_version()


async def test_mirror_reads_racing_overwrites_each_see_one_whole_version(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The previous issue's guarantee on a mirror: the follower applies overwrites while
    readers resolve the file from the replica; every read is exactly one version's bytes."""
    contents = [os.urandom(10 * MiB), os.urandom(3)]
    digests = {checksum(c) for c in contents}
    async with paused_region(tmp_path, pg_dsn) as s:
        await s.region.wait_applied(await s.put("/model.bin", contents[0]))
        done = asyncio.Event()
        seen: list[str] = []

        async def overwrite() -> None:
            try:
                for i in range(20):
                    await s.put("/model.bin", contents[(i + 1) % 2])
            finally:
                done.set()

        async def read_loop() -> None:
            async with await open_client(s.cfg, "eu", uid=0, gid=0) as fs:
                while not done.is_set():
                    seen.append(checksum(await read_all(fs, "/model.bin")))

        await asyncio.gather(overwrite(), *(read_loop() for _ in range(4)))
    mixed = [d for d in seen if d not in digests]
    assert not mixed, f"{len(mixed)} of {len(seen)} reads returned bytes no version had"
    assert len(seen) >= 8 and len(set(seen)) == 2, "the readers did not race the overwrites"


async def test_permissions_through_the_mirror_are_the_sources(tmp_path: Path, pg_dsn: str) -> None:
    async with paused_region(tmp_path, pg_dsn) as s:
        await s.writer.mkdir("/open", mode=0o755)
        await s.writer.mkdir("/private", mode=0o700)
        await s.writer.mkdir("/private/inner", mode=0o755)
        await s.writer.mkdir("/searchable", mode=0o711)
        await s.put("/open/f", b"open")
        await s.put("/private/f", b"secret")
        await s.put("/searchable/f", b"known name")
        await s.region.wait_applied(await s.put("/private/inner/g", b"deeper"))
        async with (
            await open_client(s.cfg, "eu", uid=1000, gid=1000) as mir,
            await FsClient.for_source(s.cfg, uid=1000, gid=1000) as src,
        ):

            async def outcome(fs: FsClient, what: str, path: str) -> object:
                try:
                    if what == "stat":
                        return await fs.stat(path)
                    if what == "ls":
                        return [e async for e in fs.ls(path)]
                    return await fs.cat(path)
                except FsError as exc:
                    return (exc.errno, str(exc))

            denied = 0
            for what in ["stat", "ls", "cat"]:
                for path in [
                    "/open/f",
                    "/open",
                    "/private",
                    "/private/f",
                    "/private/nope",
                    "/private/inner/g",
                    "/searchable",
                    "/searchable/f",
                    "/searchable/nope",
                ]:
                    got = await outcome(mir, what, path)
                    assert got == await outcome(src, what, path), (what, path)
                    denied += isinstance(got, tuple) and got[0] == errno.EACCES
            assert denied >= 8  # the cases above do exercise EACCES
