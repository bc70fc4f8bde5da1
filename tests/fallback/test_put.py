"""`put` leaks nothing: a bad destination is refused before anything is uploaded, a put that
fails after uploading deletes what it uploaded, and a file over one request's op limit still
lands atomically (readers see the old file or the new one, never a part).

Real source (one Raft node process), real buckets: a directory and SeaweedFS S3.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from fallback.client import FsClient
from fallback.writer import TEMP_PREFIX, WritePolicy
from objstore import ObjectMeta, ObjectStore, StoreLayer, open_store
from objstore.errors import UnavailableError
from tests.changelog.cluster import SourceCluster
from volume.client import SourceClient
from volume.config import VolumeConfig
from volume.errors import FsError
from volume.inode import BLOCK_SIZE

MiB = 1024 * 1024


class Volume:
    """A running one-node source, its bucket, and clients over it."""

    def __init__(self, cluster: SourceCluster, store: ObjectStore) -> None:
        self.cluster = cluster
        self.cfg: VolumeConfig = cluster.cfg
        self.store = store

    def client(self, store: ObjectStore | None = None, **policy: Any) -> FsClient:
        source = SourceClient(self.cfg.api_urls, self.cfg.token)
        return FsClient(
            source, store or self.store, uid=0, gid=0, write_policy=WritePolicy(**policy)
        )

    async def objects(self) -> list[str]:
        return sorted([m.key async for m in self.store.list("")])

    def op(self, op: str, **args: Any) -> dict[str, Any]:
        """One op over plain blocking HTTP: callable from a reader's worker thread."""
        body = {"ops": [{"op": op, "args": args}], "uid": 0, "gid": 0}
        req = urllib.request.Request(
            f"{self.cfg.api_urls[0]}/v1/ops",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.cfg.token}"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result


@pytest.fixture(params=["file", "s3"])
async def vol(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Volume]:
    bucket = None if request.param == "file" else request.getfixturevalue("s3_url")
    async with SourceCluster.running(tmp_path / "vol", nodes=1, bucket=bucket) as cluster:
        store = await open_store(cluster.cfg.source.bucket, name="test")
        try:
            yield Volume(cluster, store)
        finally:
            await store.aclose()


class Pieces(io.RawIOBase):
    """A source file handed out in given pieces (one per read call); `hook(n)` runs before the
    n-th read (in the writer's worker thread), e.g. to race the put or make the read fail."""

    def __init__(self, pieces: list[bytes], hook: Callable[[int], None] | None = None) -> None:
        self.pieces = list(pieces)
        self.hook = hook
        self.calls = 0

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.hook is not None:
            self.hook(self.calls)
        return self.pieces.pop(0) if self.pieces else b""


def as_file(raw: io.RawIOBase) -> BinaryIO:
    return cast(BinaryIO, raw)


async def read_all(fs: FsClient, path: str) -> bytes:
    return b"".join([c async for c in fs.read(path)])


BAD_DESTINATIONS = [
    ("/d", errno.EISDIR),  # an existing directory
    ("/d/", errno.EINVAL),  # a trailing slash
    ("/d/a\0b", errno.EINVAL),  # a bad name
    ("/d/" + "x" * 256, errno.ENAMETOOLONG),
    ("/d/file/x", errno.ENOTDIR),  # a file where a directory should be
    ("/", errno.EISDIR),
    ("relative", errno.EINVAL),
]


async def test_a_bad_destination_is_refused_before_anything_is_uploaded(vol: Volume) -> None:
    async with vol.client() as fs:
        await fs.mkdir("/d")
        await fs.put(io.BytesIO(b"x"), "/d/file")  # type: ignore[arg-type]
        before = await vol.objects()
        data = os.urandom(2 * BLOCK_SIZE + 5)
        for path, want in BAD_DESTINATIONS:
            with pytest.raises(FsError) as info:
                await fs.put(io.BytesIO(data), path)  # type: ignore[arg-type]
            assert info.value.errno == want, (path, info.value)
            assert path.rstrip("/") in str(info.value) or path == "relative"
        with pytest.raises(FsError) as info:
            await fs.put(io.BytesIO(data), "/missing/f", parents=False)  # type: ignore[arg-type]
        assert info.value.errno == errno.ENOENT and info.value.hint
        assert await vol.objects() == before, "a refused put left objects in the bucket"
        with pytest.raises(FsError):
            await fs.stat("/missing")


async def test_put_makes_missing_parent_directories(vol: Volume) -> None:
    async with vol.client() as fs:
        data = os.urandom(300_000)
        res = await fs.put(io.BytesIO(data), "/x/y/z/f.bin")  # type: ignore[arg-type]
        assert res.size == len(data)
        assert await read_all(fs, "/x/y/z/f.bin") == data
        for d in ("/x", "/x/y", "/x/y/z"):
            attr = await fs.stat(d)
            assert attr.is_dir and attr.mode == 0o755
        await fs.put(io.BytesIO(b"again"), "/x/y/g")  # type: ignore[arg-type]
        assert sorted([n async for n, _ in fs.ls("/x/y")]) == ["g", "z"]


async def test_a_put_refused_at_commit_deletes_what_it_uploaded(vol: Volume) -> None:
    """Fault injected: the destination becomes a directory while the blocks upload."""

    def race(n: int) -> None:
        if n == 2:  # the first piece is uploaded by now
            assert vol.op("mkdir", path="/f", mode=0o755)["results"][0]["ok"]

    async with vol.client() as fs:
        await fs.mkdir("/keep")
        before = await vol.objects()
        src = Pieces([os.urandom(2 * BLOCK_SIZE + 9), b"tail"], hook=race)
        with pytest.raises(FsError) as info:
            await fs.put(as_file(src), "/f")
        assert info.value.errno == errno.EISDIR
        assert src.calls >= 2, "the race ran after the upload"
        assert await vol.objects() == before, "the refused put's blocks stayed in the bucket"
        assert (await fs.stat("/f")).is_dir


async def test_a_put_whose_local_file_fails_midway_deletes_what_it_uploaded(
    vol: Volume,
) -> None:
    def vanish(n: int) -> None:
        if n == 2:
            raise OSError(errno.EIO, "injected: the local disk went away")

    async with vol.client() as fs:
        await fs.put(io.BytesIO(b"old"), "/f")  # type: ignore[arg-type]
        before = await vol.objects()
        with pytest.raises(OSError, match="injected"):
            await fs.put(as_file(Pieces([os.urandom(BLOCK_SIZE + 1)], hook=vanish)), "/f")
        assert await vol.objects() == before
        assert await read_all(fs, "/f") == b"old", "a failed put changed the file"


class FailNthPut(StoreLayer):
    """Fault layer: the n-th PUT fails for good (UnavailableError), the others go through."""

    def __init__(self, inner: ObjectStore, n: int) -> None:
        super().__init__(inner)
        self.n = n
        self.puts = 0

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        self.puts += 1
        if self.puts == self.n:
            raise UnavailableError("injected: bucket gone", op="put", key=key)
        return await self.inner.put(key, data)


async def test_a_put_whose_upload_fails_deletes_the_blocks_that_landed(vol: Volume) -> None:
    faulty = FailNthPut(vol.store, 3)  # the slice's blocks go up together: others land
    async with vol.client(store=faulty) as fs:
        before = await vol.objects()
        with pytest.raises(UnavailableError):
            await fs.put(io.BytesIO(os.urandom(4 * BLOCK_SIZE)), "/f")  # type: ignore[arg-type]
        assert faulty.puts >= 3
        assert await vol.objects() == before
        with pytest.raises(FsError):
            await fs.stat("/f")


async def test_a_file_over_the_op_limit_commits_in_several_requests_atomically(
    vol: Volume,
) -> None:
    """Four ops per request and 1 MiB pieces: a 10-piece file takes several requests, under a
    hidden temporary name, then one rename; a reader racing it sees the old or the new file."""
    old, new = os.urandom(3 * MiB + 5), os.urandom(10 * MiB + 7)
    async with (
        vol.client(max_ops=4, piece_bytes=MiB) as writer,
        vol.client() as reader,
    ):
        await reader.put(io.BytesIO(old), "/m/model.bin")  # type: ignore[arg-type]
        start = (await reader.stat("/m/model.bin")).ino
        seen: list[bytes] = []
        done = asyncio.Event()

        async def race() -> None:
            while not done.is_set():
                try:
                    seen.append(await read_all(reader, "/m/model.bin"))
                except FsError as exc:  # the old inode went while a read resolved it
                    assert exc.errno == errno.ENOENT, exc
                await asyncio.sleep(0)

        task = asyncio.create_task(race())
        try:
            res = await writer.put(io.BytesIO(new), "/m/model.bin")  # type: ignore[arg-type]
        finally:
            done.set()
            await task
        assert res.size == len(new) and res.slices == 11
        assert await read_all(reader, "/m/model.bin") == new
        assert len(seen) >= 2
        assert all(s in (old, new) for s in seen), "a reader saw part of a put"
        assert [n async for n, _ in reader.ls("/m")] == ["model.bin"], "temporary file left"
        assert (await reader.stat("/m/model.bin")).ino != start
        records = [r async for r in reader.source.stream(1, follow=False)]
        renames = [r for r in records if r.op == "rename"]
        assert len(renames) == 1 and renames[0].effect["src_name"].startswith(TEMP_PREFIX)
        writes = [r for r in records if r.op == "write" and r.version <= res.version]
        assert len(writes) == 1 + 11  # the old file's one slice, then the new file's


async def test_a_stale_temporary_file_is_removed_by_the_next_put_in_its_directory(
    vol: Volume,
) -> None:
    """A client that died mid-way through a multi-request put leaves `.mirrorfs-put-...`: a later
    put into that directory removes it once it is older than the grace; a fresh one stays."""
    async with vol.client(temp_grace_s=0.5) as fs:
        await fs.mkdir("/m")
        # More stale ones than the sweep's first page: the later pages are read too.
        stale = [f"/m/{TEMP_PREFIX}0123456789abc{i:03d}-model.bin" for i in range(5)]
        fresh = f"/m/{TEMP_PREFIX}fedcba9876543210-other.bin"
        for path in stale:
            await fs.put(io.BytesIO(b"abandoned"), path)  # type: ignore[arg-type]
        await asyncio.sleep(0.6)
        await fs.put(io.BytesIO(b"in flight"), fresh)  # type: ignore[arg-type]
        await fs.put(io.BytesIO(b"x"), "/m/next.bin")  # type: ignore[arg-type]
        names = sorted([n async for n, _ in fs.ls("/m")])
        assert names == sorted(["next.bin", fresh.rsplit("/", 1)[1]])
