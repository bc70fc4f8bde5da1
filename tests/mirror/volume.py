"""A test volume for the replicator and verify tests: files whose blocks are real objects in a
source bucket and whose changelog records (built by the source's own `Namespace`) are applied to
the replica, as a writer and the follower would; and checks of a mirror bucket's contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

from changelog.namespace import Namespace
from mirror.db import Database
from mirror.follow.applier import apply_records
from mirror.replicate.replicator import Replicator
from objstore import ObjectMeta, ObjectStore, StoreLayer
from objstore.checksum import checksum
from objstore.keys import BLOCK_PREFIX, block_key, block_sizes
from objstore.retry import RetryLayer
from tests.conftest import unique_name
from tests.servers.seaweed import SeaweedServer, make_s3_client
from volume.inode import CHUNK_SIZE
from volume.records import Record, decode_payload, encode_payload

KiB = 1024
MiB = 1024 * KiB
ROOT = {"uid": 0, "gid": 0}


@dataclass(frozen=True)
class Block:
    key: str
    slice_id: int
    idx: int
    data: bytes

    @property
    def checksum(self) -> str:
        return checksum(self.data)


class Volume:
    """Files whose blocks are real objects in `source` and whose records are in the replica."""

    def __init__(self, db: Database, source: ObjectStore, seed: int = 0) -> None:
        self.db = db
        self.source = source
        self.ns = Namespace()
        self.rng = random.Random(seed)
        self.records: list[Record] = []
        self.applied = 0
        self.ts = 1_000
        self.blocks: dict[str, Block] = {}

    def _op(self, op: str, **args: object) -> dict[str, object]:
        self.ts += 1
        effect = self.ns.apply(op, {**args, **ROOT}, self.ts)
        record = Record(len(self.records) + 1, self.ts, op, effect)
        self.records.append(decode_payload(encode_payload(record)))  # as received on the wire
        return effect

    def mkdir(self, path: str) -> None:
        self._op("mkdir", path=path, mode=0o755)

    async def write(self, path: str, size: int) -> list[Block]:
        """Upload the blocks of a new file of `size` (< one chunk) to the source bucket, then
        record its create and write (the writer's order)."""
        assert 0 < size <= CHUNK_SIZE
        alloc = self._op("alloc_slices", count=1)
        slice_id = int(alloc["first"])  # type: ignore[call-overload]
        blocks = [
            Block(block_key(slice_id, i, n), slice_id, i, self.rng.randbytes(n))
            for i, n in enumerate(block_sizes(size))
        ]
        await asyncio.gather(*(self.source.put(b.key, b.data) for b in blocks))
        self._op("create", path=path, mode=0o644)
        self._op(
            "write",
            path=path,
            chunk_index=0,
            pos=0,
            slice_id=slice_id,
            size=size,
            checksums=[b.checksum for b in blocks],
        )
        self.blocks.update((b.key, b) for b in blocks)
        return blocks

    async def commit(self) -> None:
        """Apply the records not yet applied, in one batch (as the follower would)."""
        await apply_records(self.db, self.records[self.applied :])
        self.applied = len(self.records)

    async def files(self, prefix: str, count: int, sizes: list[int]) -> list[Block]:
        self.mkdir(prefix)
        out: list[Block] = []
        for i in range(count):
            out += await self.write(f"{prefix}/f{i}", sizes[i % len(sizes)])
        await self.commit()
        return out


class CountingLayer(StoreLayer):
    """Counts GETs and PUTs per key (a layer like any other, around the real store)."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.gets: dict[str, int] = {}
        self.puts: dict[str, int] = {}

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        self.gets[key] = self.gets.get(key, 0) + 1
        return await self.inner.get(key, offset=offset, length=length)

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        self.puts[key] = self.puts.get(key, 0) + 1
        return await self.inner.put(key, data)


async def wait_until(
    what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


async def states(db: Database) -> dict[str, int]:
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM blocks GROUP BY state")
    return {r["state"]: int(r["n"]) for r in rows}


async def all_copied(db: Database) -> bool:
    return set(await states(db)) == {"copied"}


async def copied_count(db: Database) -> int:
    return (await states(db)).get("copied", 0)


async def assert_mirror_holds_exactly(mirror: ObjectStore, blocks: dict[str, Block]) -> None:
    """The mirror bucket has exactly these block keys, each with the right bytes."""
    keys = [m.key async for m in mirror.list(BLOCK_PREFIX)]
    assert sorted(keys) == sorted(blocks), "mirror bucket keys differ from the volume's blocks"
    for key, block in blocks.items():
        assert checksum(await mirror.get(key)) == block.checksum, f"{key} has wrong bytes"


@contextlib.asynccontextmanager
async def running(rep: Replicator) -> AsyncIterator[Replicator]:
    stop = asyncio.Event()
    task = asyncio.create_task(rep.run(stop))
    try:
        yield rep
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.contextmanager
def bucket_on(server: SeaweedServer) -> Iterator[str]:
    name = unique_name("mfs")
    server.create_bucket(name)
    try:
        yield name
    finally:
        if server.is_running:
            server.delete_bucket(name)


SMALL = [64 * KiB, 200 * KiB, 1, 333 * KiB]


def retries_of(store: ObjectStore) -> int:
    """Retries counted by the RetryLayer inside an `open_store` stack."""
    layer: object = store
    while not isinstance(layer, RetryLayer):
        layer = layer.inner  # type: ignore[attr-defined]
    return layer.retries


async def at_least(db: Database, n: int) -> bool:
    return await copied_count(db) >= n


@contextlib.contextmanager
def bucket_on_endpoint(endpoint: str) -> Iterator[str]:
    client = make_s3_client(endpoint)
    name = unique_name("mfs")
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        client.delete_bucket(Bucket=name)
