"""Reads of the replica answer like the source namespace's reads (minus permission checks)."""

from __future__ import annotations

import errno

import pytest

from changelog.namespace import Namespace
from mirror.audit import dump_tree
from mirror.db import Database
from mirror.follow.applier import apply_records
from mirror.replica import Replica
from mirror.replicate import CopyQueue
from objstore.keys import block_sizes
from tests.mirror.conftest import Workload
from volume.errors import FsError
from volume.inode import Inode


async def backlog(db: Database) -> tuple[int, int, int]:
    """(blocks pending, bytes pending, blocks failed) as the copy queue counts them."""
    stats = await CopyQueue(db).stats()
    return stats.blocks_pending, stats.bytes_pending, stats.blocks_failed


async def replica_of(db: Database, seed: int, records: int) -> Workload:
    w = Workload(seed).run(records)
    w.apply("symlink", {"path": "/_link", "target": "/a"})  # at least one, whatever the seed
    for i in range(0, len(w.records), 200):
        await apply_records(db, w.records[i : i + 200])
    return w


async def test_empty_replica_is_the_version_0_namespace(db: Database, replica: Replica) -> None:
    assert await dump_tree(db) == Namespace().dump_tree()
    assert await replica.watermark() == (0, 0)
    assert await replica.snapshot_version() is None
    assert await backlog(db) == (0, 0, 0)
    assert await replica.readdir("/") == []


def _paths(w: Workload) -> list[str]:
    dump = w.ns.dump_tree()
    extra = ["/nope", "/nope/deeper", "//", "relative", "/a/../b", "/" + "n" * 300, "/a/"]
    for path, attr in dump.items():
        if attr["kind"] != "dir":
            extra += [f"{path}/below", f"{path}/below/more"]  # ENOTDIR through a file or symlink
        else:
            extra.append(f"{path.rstrip('/')}/missing")
    return [*dump, *extra]


async def _same_answer(ns_call: object, replica_call: object) -> None:
    assert callable(ns_call) and callable(replica_call)
    try:
        want = ns_call()
    except FsError as exc:
        with pytest.raises(FsError) as info:
            await replica_call()
        assert (info.value.errno, str(info.value)) == (exc.errno, str(exc))
        return
    assert await replica_call() == want


@pytest.mark.parametrize("seed", [1, 2])
async def test_lookup_and_getattr_match_the_source(
    seed: int, db: Database, replica: Replica
) -> None:
    w = await replica_of(db, seed, 500)
    paths = _paths(w)
    assert any(w.ns.dump_tree()[p]["kind"] == "symlink" for p in w.ns.dump_tree())
    for path in paths:
        await _same_answer(lambda p=path: w.ns.resolve(p), lambda p=path: replica.lookup(p))
    for ino in [*w.ns.tables.inodes, 10**9]:
        await _same_answer(lambda i=ino: w.ns.getattr(i), lambda i=ino: replica.getattr(i))


async def test_readdir_pages_like_the_source(db: Database, replica: Replica) -> None:
    w = await replica_of(db, 3, 600)
    dump = w.ns.dump_tree()
    dirs = [p for p, a in dump.items() if a["kind"] == "dir"]
    assert any(len(w.ns.tables.entries[dump[d]["ino"]]) >= 4 for d in dirs)
    for path in dirs:
        for limit in (1, 2, 1000):
            after = ""
            while True:
                want = w.ns.readdir(path, 0, 0, after, limit)
                got = await replica.readdir(path, after, limit)
                assert got == want
                if len(got) < limit:
                    break
                after = got[-1][0]
    # code point order, not a locale's: "Z" < "a" < "é"
    names = [name for name, _ in await replica.readdir("/")]
    assert names == sorted(names)
    files = [p for p, a in dump.items() if a["kind"] != "dir"]
    for path in [files[0], "/nope", "/x/../y"]:
        await _same_answer(lambda p=path: w.ns.readdir(p, 0, 0), lambda p=path: replica.readdir(p))
    with pytest.raises(FsError) as info:
        await replica.readdir("/", limit=0)
    assert info.value.errno == errno.EINVAL


async def test_readdir_of_unicode_and_ascii_names(db: Database, replica: Replica) -> None:
    w = Workload(0)
    for name in ["é", "a", "Z", "_", "ß", "aa", "A", "日本", "~"]:
        w.apply("mkdir", {"path": f"/{name}", "mode": 0o755})
    await apply_records(db, w.records)
    want = w.ns.readdir("/", 0, 0)
    assert [n for n, _ in await replica.readdir("/")] == [n for n, _ in want]
    assert await replica.readdir("/", after="a", limit=2) == w.ns.readdir("/", 0, 0, "a", 2)


async def test_chunk_matches_the_source(db: Database, replica: Replica) -> None:
    w = await replica_of(db, 4, 600)
    files = [i for i in w.ns.tables.inodes.values() if i.is_file]
    assert any(len(w.ns.chunk_slices(f.ino, 0)) > 1 for f in files), "chunks with several refs"
    for f in files:
        for index in range(4):
            refs, checksums = await replica.chunk(f.ino, index)
            assert refs == w.ns.chunk_slices(f.ino, index)
            assert checksums == {r.id: list(w.ns.slice_info(r.id).checksums) for r in refs}
    with pytest.raises(FsError) as info:
        await replica.chunk(10**9, 0)
    assert info.value.errno == errno.ENOENT


async def test_block_states_and_backlog_follow_the_table(db: Database, replica: Replica) -> None:
    w = await replica_of(db, 5, 500)
    blocks = {
        (sid, i): size
        for sid, info in w.ns.tables.slices.items()
        for i, size in enumerate(block_sizes(info.size))
    }
    assert blocks
    states = await replica.block_states(w.ns.tables.slices)
    assert states == dict.fromkeys(blocks, "pending")
    assert await backlog(db) == (len(blocks), sum(blocks.values()), 0)
    some = sorted(blocks)[:3]
    async with db.acquire() as conn:
        await conn.execute(
            "UPDATE blocks SET state = 'copied' WHERE slice_id = $1 AND idx = $2", *some[0]
        )
        await conn.execute(
            "UPDATE blocks SET state = 'failed' WHERE slice_id = $1 AND idx = $2", *some[1]
        )
    states = await replica.block_states([some[0][0], some[1][0], 10**9])
    assert states[some[0]] == "copied" and states[some[1]] == "failed"
    assert {k[0] for k in states} == {some[0][0], some[1][0]}
    pending = set(blocks) - {some[0], some[1]}
    assert await backlog(db) == (len(pending), sum(blocks[b] for b in pending), 1)
    assert await replica.block_states([]) == {}


async def test_lookup_returns_symlinks_themselves(db: Database, replica: Replica) -> None:
    w = Workload(0)
    w.apply("mkdir", {"path": "/d", "mode": 0o755})
    w.apply("symlink", {"path": "/d/link", "target": "/d"})
    await apply_records(db, w.records)
    link = await replica.lookup("/d/link")
    assert isinstance(link, Inode) and link.kind == "symlink" and link.target == "/d"
    with pytest.raises(FsError) as info:
        await replica.lookup("/d/link/x")
    assert info.value.errno == errno.ENOTDIR
