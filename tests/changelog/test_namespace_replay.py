"""Effects alone rebuild the namespace; snapshots, pickles and hash seeds change nothing.

Random op sequences (seeded `random.Random`, several seeds) run on one namespace; the effects of
the successes are replayed on a fresh one and the two must be identical, down to counters.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from changelog.namespace import Namespace
from tests.changelog.test_namespace import ALICE, BOB, ROOT, MiB, put, state, sums, tree
from volume.errors import FsError
from volume.extents import invisible_indices, visible_extents
from volume.inode import CHUNK_SIZE, ROOT_INO, block_count

# -- effects are self-sufficient: replaying them rebuilds the same namespace --------------------

EFFECT_KEYS = {
    "mkdir": {"ino", "parent", "name", "attr", "parent_attr"},
    "symlink": {"ino", "parent", "name", "attr", "parent_attr"},
    "create": {"ino", "parent", "name", "attr", "parent_attr", "existed"},
    "write": {"ino", "chunk_index", "slice", "checksums", "attr", "dropped", "freed"},
    "truncate": {"ino", "attr", "dropped", "clipped", "freed"},
    "setattr": {"ino", "attr", "dropped", "clipped", "freed"},
    "unlink": {"ino", "parent", "name", "parent_attr", "attr", "freed"},
    "rmdir": {"ino", "parent", "name", "parent_attr"},
    "rename": {
        "noop",
        "ino",
        "src_parent",
        "src_name",
        "dst_parent",
        "dst_name",
        "attr",
        "src_parent_attr",
        "dst_parent_attr",
        "replaced",
        "freed",
    },
    "alloc_slices": {"first", "count", "ts"},
    "expire_slices": {"expired", "forgotten"},
}
NAMES = ["a", "b", "c", "d"]
POSITIONS = [0, 1, MiB, 3 * MiB, 4 * MiB, CHUNK_SIZE - 5 * MiB, CHUNK_SIZE - 1]
SIZES = [1, 4096, MiB, 4 * MiB, 5 * MiB, 9 * MiB]


def random_request(
    rng: random.Random, ns: Namespace, unused: list[int], used: list[int]
) -> tuple[str, dict[str, Any]]:
    dump = ns.dump_tree()
    paths = list(dump)
    dirs = [p for p in paths if dump[p]["kind"] == "dir"]
    files = [p for p in paths if dump[p]["kind"] == "file"] or ["/nofile"]
    new = rng.choice(dirs).rstrip("/") + "/" + rng.choice(NAMES)
    anyp = rng.choice([*paths, new])
    who = rng.choices([ROOT, ALICE, BOB], weights=[6, 3, 1])[0]
    op = rng.choices(
        [
            "mkdir",
            "create",
            "symlink",
            "alloc_slices",
            "expire_slices",
            "write",
            "truncate",
            "setattr",
            "rename",
            "unlink",
            "rmdir",
        ],
        weights=[4, 4, 1, 2, 1, 6, 2, 3, 4, 2, 2],
    )[0]
    if op == "mkdir":
        args = {"path": new, "mode": rng.choice([0o755, 0o700, 0o777, 0o1777, 0o555])}
    elif op == "create":
        args = {"path": rng.choice([new, anyp]), "mode": 0o644, "exclusive": rng.random() < 0.5}
    elif op == "symlink":
        args = {"path": new, "target": rng.choice(["/a", "x/y", "é"])}
    elif op == "alloc_slices":
        args = {"count": rng.randint(1, 4)}
    elif op == "expire_slices":  # the sweeper's: ids reserved long enough ago, and forgetting
        args = {"before_ts": rng.choice([0, rng.randint(0, 400)]), "forget": [[1, 10**6]]}
        who = ROOT if rng.random() < 0.9 else ALICE
    elif op == "write":
        if not unused or rng.random() < 0.05:
            sid = rng.choice([*used, 10**6])
        else:
            sid = rng.choice(unused)
        pos = rng.choice(POSITIONS)
        size = min(rng.choice(SIZES), CHUNK_SIZE - pos)
        args = {
            "path": rng.choice(files),
            "chunk_index": rng.randint(0, 2),
            "pos": pos,
            "slice_id": sid,
            "size": size,
            "checksums": sums(sid, size),
        }
    elif op == "truncate":
        size = rng.choice([0, 100, 2 * MiB, 70 * MiB, rng.randrange(3 * CHUNK_SIZE)])
        args = {"path": rng.choice(files), "size": size}
    elif op == "setattr":
        args = {"path": anyp}
        for key, values in [
            ("mode", [0o755, 0o644, 0o1777]),
            ("owner_uid", [0, 1000, 2000]),
            ("owner_gid", [0, 1000]),
            ("mtime_ms", [5]),
            ("size", [0, 3 * MiB]),
        ]:
            if rng.random() < 0.3:
                args[key] = rng.choice(values)
    elif op == "rename":
        args = {"src": anyp, "dst": rng.choice([new, rng.choice(paths)])}
    else:
        args = {"path": anyp}
    return op, {**args, **who}


def run_random(
    seed: int, steps: int, *, check_failures: bool = True
) -> tuple[Namespace, list[Any]]:
    rng = random.Random(seed)
    ns = Namespace()
    records: list[Any] = []
    unused: list[int] = []
    used: list[int] = []
    ts = 0
    for _ in range(steps):
        ts += rng.randint(0, 3)
        op, args = random_request(rng, ns, unused, used)
        before = state(ns) if check_failures else None
        try:
            effect = ns.apply(op, args, ts)
        except FsError:
            if check_failures:
                assert state(ns) == before, (op, args)
            continue
        if op == "write":  # the id is consumed only by a successful write
            unused.remove(effect["slice"]["id"])
            used.append(effect["slice"]["id"])
        if op == "alloc_slices":
            unused.extend(range(effect["first"], effect["first"] + effect["count"]))
        if op == "expire_slices":
            gone = {i for first, end in effect["expired"] for i in range(first, end)}
            unused[:] = [i for i in unused if i not in gone]
        records.append([op, effect])
    return ns, records


def check_invariants(ns: Namespace) -> None:
    rows = list(ns.iter_snapshot())
    header, slices = rows[0], {r["id"]: r for r in rows if r["row"] == "slice"}
    inodes = [r for r in rows if r["row"] == "inode"]
    assert (header["inodes"], header["slices"]) == (len(inodes), len(slices))
    subdirs: dict[int, int] = {}
    for r in inodes:
        if r["kind"] == "dir" and r["ino"] != ROOT_INO:
            subdirs[r["parent"]] = subdirs.get(r["parent"], 0) + 1
    ref_ids: list[int] = []
    for r in inodes:
        if r["kind"] == "dir":
            assert r["nlink"] == 2 + subdirs.get(r["ino"], 0)
        for index, refs in r["chunks"]:
            assert refs, "no empty chunk lists"
            dead = invisible_indices(ns.chunk_slices(r["ino"], index), CHUNK_SIZE)
            assert dead == [], "no fully covered refs are kept"
            for sid, size, off, length, pos in refs:
                assert index * CHUNK_SIZE + pos + length <= r["size"]
                assert off + length <= size == slices[sid]["size"]
                assert len(slices[sid]["checksums"]) == block_count(size)
                ref_ids.append(sid)
    assert sorted(ref_ids) == sorted(slices), "every live slice has exactly one ref"
    assert all(sid < header["next_slice_id"] for sid in ref_ids)


@pytest.mark.parametrize("seed", range(10))
def test_replaying_effects_rebuilds_the_namespace(seed: int) -> None:
    a, records = run_random(seed, 500)
    assert len({op for op, _ in records}) >= 8, "the run exercised most ops"
    check_invariants(a)
    b = Namespace()
    for op, effect in records:
        assert set(effect) == EFFECT_KEYS[op], op
        wire = msgpack.unpackb(msgpack.packb(effect), raw=False)
        assert wire == effect, "effects hold lists and str keys only"
        b.replay(op, wire)
    assert b.dump_tree() == a.dump_tree()
    assert list(b.iter_snapshot()) == list(a.iter_snapshot())  # counters and pending ids too
    json.dumps(records)  # JSON-friendly as well


@pytest.mark.parametrize("seed", range(3))
def test_snapshot_roundtrip(seed: int) -> None:
    a, _ = run_random(seed, 300, check_failures=False)
    rows = [msgpack.unpackb(msgpack.packb(r), raw=False) for r in a.iter_snapshot()]
    b = Namespace.from_snapshot(rows)
    assert b.dump_tree() == a.dump_tree()
    assert sorted(map(repr, b.iter_snapshot())) == sorted(map(repr, a.iter_snapshot()))
    # the rebuilt namespace keeps working and agrees with the original from here on
    for ns in (a, b):
        ns.apply("mkdir", {"path": "/zz", "mode": 0o755, **ROOT}, 10**6)
    assert b.dump_tree() == a.dump_tree()


def test_snapshot_rejects_truncated_or_reordered_streams() -> None:
    rows = list(tree().iter_snapshot())
    for bad in (
        rows[:-1],
        [rows[0], *rows[:0:-1]],
        [{"row": "nonsense"}],
        [*rows, rows[0]],
        [{**rows[0], "format": 99}, *rows[1:]],
    ):
        with pytest.raises(FsError) as exc:
            Namespace.from_snapshot(bad)
        assert exc.value.errno == errno.EINVAL
        assert gc.isenabled(), "the GC pause during loading is undone on failure too"


def test_effects_do_not_depend_on_hash_seed() -> None:
    """Raft nodes are separate processes: string hashing differs, effects must not."""
    root = Path(__file__).resolve().parents[2]
    code = (
        "import json; from tests.changelog.test_namespace_replay import run_random; "
        "print(json.dumps(run_random(7, 250, check_failures=False)[1]))"
    )
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1] == json.loads(json.dumps(run_random(7, 250, check_failures=False)[1]))


@pytest.mark.parametrize("seed", range(8))
def test_file_content_matches_byte_model(seed: int) -> None:
    """Writes and truncates vs a per-byte model: dropping and clipping refs never changes data."""
    rng = random.Random(seed)
    ns = Namespace()
    ino = ns.apply("create", {"path": "/f", "mode": 0o644, **ROOT}, 0)["ino"]
    model: dict[int, tuple[int, int]] = {}  # file offset -> (slice id, offset in slice)
    size = 0
    for step in range(150):
        if rng.random() < 0.8:
            chunk = rng.randint(0, 1)
            pos = rng.choice([rng.randrange(300), CHUNK_SIZE - 1 - rng.randrange(300)])
            length = min(rng.randint(1, 200), CHUNK_SIZE - pos)
            e = put(ns, "/f", length, pos=pos, chunk=chunk, ts=step)
            base = chunk * CHUNK_SIZE + pos
            for k in range(length):
                model[base + k] = (e["slice"]["id"], k)
            size = max(size, base + length)
        else:
            size = rng.choice([rng.randrange(600), CHUNK_SIZE + rng.randrange(-300, 600)])
            ns.apply("truncate", {"path": "/f", "size": size, **ROOT}, step)
            model = {p: v for p, v in model.items() if p < size}
        assert ns.getattr(ino).size == size
        seen: dict[int, tuple[int, int]] = {}
        for index in range(2):
            chunk_len = min(CHUNK_SIZE, size - index * CHUNK_SIZE)
            for x in visible_extents(ns.chunk_slices(ino, index), chunk_len):
                if x.slice_id is not None:
                    for k in range(x.length):
                        seen[index * CHUNK_SIZE + x.pos + k] = (x.slice_id, x.slice_off + k)
        assert seen == model
    check_invariants(ns)


def test_shared_slice_is_freed_with_its_last_ref() -> None:
    """No op shares a slice today, but the refcount must hold when a snapshot says so."""
    ns = Namespace()
    for name in ("a", "b"):
        ns.apply("create", {"path": f"/{name}", "mode": 0o644, **ROOT}, 1)
    sid = put(ns, "/a", MiB)["slice"]["id"]
    rows = list(ns.iter_snapshot())
    for row in rows:
        if row.get("name") == "b":
            row.update(size=MiB, chunks=[[0, [[sid, MiB, 0, MiB, 0]]]])
    shared = Namespace.from_snapshot(rows)
    assert shared.tables.refcount(sid) == 2
    assert shared.apply("unlink", {"path": "/a", **ROOT}, 2)["freed"] == []
    assert shared.tables.refcount(sid) == 1 and shared.slice_info(sid).size == MiB
    freed = shared.apply("truncate", {"path": "/b", "size": 0, **ROOT}, 3)["freed"]
    assert [f["id"] for f in freed] == [sid] and shared.tables.refcount(sid) == 0


def test_pickle_roundtrip() -> None:
    """pysyncobj snapshots its state with pickle."""
    a, _ = run_random(4, 200, check_failures=False)
    b = pickle.loads(pickle.dumps(a))
    assert list(b.iter_snapshot()) == list(a.iter_snapshot())
    for ns in (a, b):
        ns.apply("create", {"path": "/new", "mode": 0o600, **ROOT}, 10**6)
        put(ns, "/new", MiB, ts=10**6)
    assert b.dump_tree() == a.dump_tree()
