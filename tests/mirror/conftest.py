"""Fixtures for the mirror replica tests, and a workload: random ops on a source `Namespace`.

The database comes from the shared `pg_dsn` fixture (a fresh database on the session's real
PostgreSQL). `Workload` drives a `Namespace` with random mkdir/create/write/truncate/rename/...
requests and keeps the effects as wire-decoded `Record`s with contiguous versions, mixed with
the source's bookkeeping records (ticks, alloc_slices, mirror registry).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from changelog.namespace import Namespace
from mirror.db import Database
from mirror.replica import Replica
from objstore import ObjectStore, open_store
from tests.mirror.volume import bucket_on
from tests.servers.seaweed import SeaweedServer
from volume.errors import FsError
from volume.inode import CHUNK_SIZE, ROOT_INO, block_count
from volume.records import MIRROR_ACK, MIRROR_REGISTER, TICK, Record, decode_payload, encode_payload

MiB = 1024 * 1024
NAMES = ["a", "b", "c", "d", "e", "f", "é", "Z"]
POSITIONS = [0, 0, 1, MiB, 3 * MiB, 4 * MiB, CHUNK_SIZE - 5 * MiB]
SIZES = [1, 4096, MiB, 4 * MiB, 5 * MiB, 9 * MiB, 20 * MiB]
ROOT = {"uid": 0, "gid": 0}


def sums(slice_id: int, size: int) -> list[str]:
    return [f"xxh3:{slice_id:08x}{i:08x}" for i in range(block_count(size))]


class Workload:
    """A source namespace and the records its successful ops produced."""

    def __init__(self, seed: int, *, wire: bool = True) -> None:
        self.rng = random.Random(seed)
        self.ns = Namespace()
        self.records: list[Record] = []
        self.ts = 1_000
        self.wire = wire  # round-trip each record through msgpack, as the follower receives it
        self._unused: list[int] = []

    @property
    def version(self) -> int:
        return len(self.records)

    def emit(self, op: str, effect: dict[str, Any]) -> None:
        record = Record(self.version + 1, self.ts, op, effect)
        self.records.append(decode_payload(encode_payload(record)) if self.wire else record)

    def apply(self, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        try:
            effect = self.ns.apply(op, {**args, **ROOT}, self.ts)
        except FsError:
            return None
        self.emit(op, effect)
        return effect

    # -- picking paths by random walks (no full scan per op) -----------------------------------

    def _walk(self, want: str) -> str | None:
        path, ino = "/", ROOT_INO
        for _ in range(12):
            entries = self.ns.tables.entries[ino]
            if not entries or (want == "dir" and self.rng.random() < 0.35):
                break
            name = self.rng.choice(list(entries))
            child = entries[name]
            path = f"{path.rstrip('/')}/{name}"
            kind = self.ns.tables.inodes[child].kind
            if kind != "dir":
                return path if want in (kind, "any") else None
            ino = child
        return path if want in ("dir", "any") else None

    def dir_path(self) -> str:
        return self._walk("dir") or "/"

    def new_path(self) -> str:
        return f"{self.dir_path().rstrip('/')}/{self.rng.choice(NAMES)}"

    def file_path(self) -> str | None:
        for _ in range(6):
            path = self._walk("file")
            if path is not None:
                return path
        return None

    # -- ops -------------------------------------------------------------------------------------

    def write(self, path: str) -> None:
        if not self._unused:
            effect = self.apply("alloc_slices", {"count": self.rng.randint(1, 8)})
            assert effect is not None
            self._unused.extend(range(effect["first"], effect["first"] + effect["count"]))
        sid = self._unused[0]
        pos = self.rng.choice(POSITIONS)
        size = min(self.rng.choice(SIZES), CHUNK_SIZE - pos)
        args = {
            "path": path,
            "chunk_index": self.rng.choice([0, 0, 0, 1, 2]),
            "pos": pos,
            "slice_id": sid,
            "size": size,
            "checksums": sums(sid, size),
        }
        if self.apply("write", args) is not None:
            self._unused.pop(0)

    def step(self) -> None:
        """One random request (it may fail: then no record), and sometimes a tick."""
        rng = self.rng
        self.ts += rng.randint(0, 3)
        op = rng.choices(
            [
                "mkdir",
                "create",
                "symlink",
                "write",
                "truncate",
                "setattr",
                "rename",
                "unlink",
                "rmdir",
                "tick",
                "mirror",
            ],
            weights=[5, 6, 1, 12, 2, 2, 5, 3, 2, 3, 1],
        )[0]
        if op == "tick":
            self.emit(TICK, {})
        elif op == "mirror":
            self.emit(MIRROR_ACK if self.version % 2 else MIRROR_REGISTER, {"name": "m1"})
        elif op == "mkdir":
            self.apply("mkdir", {"path": self.new_path(), "mode": rng.choice([0o755, 0o700])})
        elif op == "create":
            path = self.new_path() if rng.random() < 0.8 else (self.file_path() or "/x")
            self.apply("create", {"path": path, "mode": 0o644, "exclusive": rng.random() < 0.5})
        elif op == "symlink":
            self.apply("symlink", {"path": self.new_path(), "target": rng.choice(["/a", "é/b"])})
        elif op in ("write", "truncate", "setattr"):
            file = self.file_path()
            if file is None:
                return
            if op == "write":
                for _ in range(rng.choice([1, 1, 2, 3])):
                    self.write(file)
            elif op == "truncate":
                size = rng.choice([0, 100, 2 * MiB, 70 * MiB, rng.randrange(3 * CHUNK_SIZE)])
                self.apply("truncate", {"path": file, "size": size})
            else:
                self.apply("setattr", {"path": file, "mode": 0o600, "size": rng.choice([0, MiB])})
        elif op == "rename":
            kind = rng.choice(["file", "dir", "any"])
            src = self._walk(kind) or "/nothing"
            dst = rng.choice([self.new_path(), self._walk(kind) or "/none", src])
            self.apply("rename", {"src": src, "dst": dst})
        elif op == "unlink":
            self.apply("unlink", {"path": self._walk("any") or "/nothing"})
        else:
            self.apply("rmdir", {"path": self.dir_path()})

    def run(self, records: int) -> Workload:
        """Step until at least `records` records exist."""
        while self.version < records:
            self.step()
        return self


def batches(records: list[Record], rng: random.Random, max_size: int) -> list[list[Record]]:
    """`records` cut into consecutive batches of random sizes 1..max_size."""
    out: list[list[Record]] = []
    i = 0
    while i < len(records):
        n = rng.randint(1, max_size)
        out.append(records[i : i + n])
        i += n
    return out


@pytest.fixture
async def source(s3_url: str) -> AsyncIterator[ObjectStore]:
    """The source region's bucket (a test module may define its own `source`: a cluster)."""
    store = await open_store(s3_url, name="source")
    yield store
    await store.aclose()


@pytest.fixture
async def mirror(seaweed: SeaweedServer) -> AsyncIterator[ObjectStore]:
    """A mirror bucket on the source's own server (so its endpoint sees the source bucket)."""
    with bucket_on(seaweed) as name:
        store = await open_store(f"s3://{name}?endpoint={seaweed.endpoint}", name="mirror")
        yield store
        await store.aclose()


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    """A migrated replica database (fresh per test); enough connections for a replicator."""
    database = await Database.connect(pg_dsn, max_size=10)
    try:
        await database.migrate()
        yield database
    finally:
        await database.aclose()


@pytest.fixture
def replica(db: Database) -> Replica:
    return Replica(db)
