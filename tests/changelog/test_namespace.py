"""The namespace model: every op's happy path and errors, and that effects alone rebuild it.

A failed op must change nothing, so every error case also compares the full dump and snapshot
before and after.
"""

from __future__ import annotations

import errno
import random
from typing import Any

import pytest

from changelog.namespace import Namespace
from volume.errors import FsError
from volume.extents import visible_extents
from volume.inode import CHUNK_SIZE, ROOT_INO, block_count

ROOT = {"uid": 0, "gid": 0}
ALICE = {"uid": 1000, "gid": 1000}
BOB = {"uid": 2000, "gid": 2000}
MiB = 1024 * 1024


def sums(slice_id: int, size: int) -> list[str]:
    return [f"xxh3:{slice_id:08x}{i:08x}" for i in range(block_count(size))]


def put(
    ns: Namespace,
    path: str,
    size: int,
    *,
    pos: int = 0,
    chunk: int = 0,
    ts: int = 50,
    who: dict[str, int] = ROOT,
) -> dict[str, Any]:
    sid = ns.apply("alloc_slices", {"count": 1, **who}, ts)["first"]
    args = {
        "path": path,
        "chunk_index": chunk,
        "pos": pos,
        "slice_id": sid,
        "size": size,
        "checksums": sums(sid, size),
        **who,
    }
    return ns.apply("write", args, ts)


def tree() -> Namespace:
    """A small namespace with owners, modes, a sticky dir and data, built at ts 10..."""
    ns = Namespace()
    ts = iter(range(10, 1000))
    alice = {"owner_uid": 1000, "owner_gid": 1000}
    for path in ["/d", "/d/sub", "/e", "/ro", "/noexec", "/noread", "/sticky"]:
        ns.apply("mkdir", {"path": path, "mode": 0o755, **ROOT}, next(ts))
    for path in ["/d/f", "/d/sub/g", "/sticky/mine", "/ro/x", "/rootfile"]:
        ns.apply("create", {"path": path, "mode": 0o644, **ROOT}, next(ts))
    ns.apply("symlink", {"path": "/l", "target": "/d", **ROOT}, next(ts))
    for path, mode in [
        ("/d", 0o755),
        ("/d/sub", 0o755),
        ("/e", 0o755),
        ("/ro", 0o555),
        ("/noexec", 0o644),
        ("/noread", 0o311),
        ("/d/f", 0o644),
        ("/d/sub/g", 0o644),
        ("/sticky/mine", 0o644),
        ("/ro/x", 0o644),
    ]:
        ns.apply("setattr", {"path": path, "mode": mode, **alice, **ROOT}, next(ts))
    ns.apply("setattr", {"path": "/sticky", "mode": 0o1777, **ROOT}, next(ts))
    put(ns, "/d/f", 5 * MiB, who=ALICE)
    return ns


def state(ns: Namespace) -> tuple[Any, Any]:
    return ns.dump_tree(), list(ns.iter_snapshot())


# -- happy paths --------------------------------------------------------------------------------


def test_root_exists() -> None:
    root = Namespace().getattr(ROOT_INO)
    assert (root.kind, root.mode, root.uid, root.gid, root.nlink) == ("dir", 0o755, 0, 0, 2)


def test_mkdir_create_symlink_effects() -> None:
    ns = Namespace()
    ns.apply("setattr", {"path": "/", "mode": 0o777, **ROOT}, 99)
    e = ns.apply("mkdir", {"path": "/a", "mode": 0o750, **ALICE}, 100)
    assert e["ino"] == 2 and e["parent"] == ROOT_INO and e["name"] == "a"
    assert e["attr"] == {
        "ino": 2,
        "kind": "dir",
        "mode": 0o750,
        "uid": 1000,
        "gid": 1000,
        "size": 0,
        "mtime_ms": 100,
        "ctime_ms": 100,
        "nlink": 2,
        "target": None,
    }
    assert e["parent_attr"]["nlink"] == 3 and e["parent_attr"]["mtime_ms"] == 100
    e = ns.apply("create", {"path": "/a/f", "mode": 0o600, **ALICE}, 101)
    assert (e["ino"], e["parent"], e["existed"], e["attr"]["kind"]) == (3, 2, False, "file")
    assert e["parent_attr"]["nlink"] == 2 and e["parent_attr"]["ctime_ms"] == 101
    again = ns.apply("create", {"path": "/a/f", "mode": 0o600, "exclusive": False, **ALICE}, 102)
    assert again["existed"] is True and again["attr"] == e["attr"]
    e = ns.apply("symlink", {"path": "/a/s", "target": "../f€", **ALICE}, 103)
    assert e["attr"]["kind"] == "symlink" and e["attr"]["target"] == "../f€"
    assert e["attr"]["size"] == len("../f€".encode()) and e["attr"]["mode"] == 0o777
    assert ns.lookup("/a/s", **ALICE).target == "../f€"
    assert ns.resolve("/a/f").ino == 3


def test_write_grows_size_and_drops_covered_slices() -> None:
    ns = Namespace()
    ns.apply("create", {"path": "/f", "mode": 0o644, **ROOT}, 1)
    e1 = put(ns, "/f", 6 * MiB)
    assert e1["attr"]["size"] == 6 * MiB and e1["dropped"] == [] and e1["freed"] == []
    assert e1["checksums"] == sums(e1["slice"]["id"], 6 * MiB)
    e2 = put(ns, "/f", MiB, pos=MiB)  # partial overwrite: slice 1 stays visible
    assert e2["dropped"] == [] and e2["attr"]["size"] == 6 * MiB
    e3 = put(ns, "/f", 8 * MiB, ts=60)  # covers both
    s1, s2 = e1["slice"], e2["slice"]
    assert e3["dropped"] == [{"chunk_index": 0, **s1}, {"chunk_index": 0, **s2}]
    assert [f["id"] for f in e3["freed"]] == [s1["id"], s2["id"]]
    assert e3["freed"][0] == {"id": s1["id"], "size": 6 * MiB, "checksums": e1["checksums"]}
    assert ns.chunk_slices(e3["ino"], 0) == [ns.chunk_slices(e3["ino"], 0)[0]]
    assert e3["attr"]["mtime_ms"] == 60
    e4 = put(ns, "/f", 10, chunk=2, pos=CHUNK_SIZE - 10)  # sparse: size jumps to 3 chunks
    assert e4["attr"]["size"] == 3 * CHUNK_SIZE
    assert ns.slice_info(e4["slice"]["id"]).checksums == tuple(e4["checksums"])
    with pytest.raises(FsError) as err:
        ns.slice_info(s1["id"])
    assert err.value.errno == errno.ENOENT


def test_slice_partly_hidden_by_two_newer_ones_is_dropped() -> None:
    ns = Namespace()
    ns.apply("create", {"path": "/f", "mode": 0o644, **ROOT}, 1)
    old = put(ns, "/f", 4 * MiB)["slice"]
    put(ns, "/f", 2 * MiB)
    e = put(ns, "/f", 2 * MiB, pos=2 * MiB)
    assert [d["id"] for d in e["dropped"]] == [old["id"]]


def test_truncate_shrink_then_grow_reads_zeros() -> None:
    ns = Namespace()
    ino = ns.apply("create", {"path": "/f", "mode": 0o644, **ROOT}, 1)["ino"]
    a = put(ns, "/f", 10 * MiB)["slice"]
    b = put(ns, "/f", MiB, chunk=1)["slice"]
    e = ns.apply("truncate", {"path": "/f", "size": 3 * MiB, **ROOT}, 70)
    assert e["dropped"] == [{"chunk_index": 1, **b}]
    assert e["clipped"] == [{"chunk_index": 0, **a, "len": 3 * MiB}]
    assert [f["id"] for f in e["freed"]] == [b["id"]]
    assert (e["attr"]["size"], e["attr"]["mtime_ms"]) == (3 * MiB, 70)
    e = ns.apply("truncate", {"path": "/f", "size": 20 * MiB, **ROOT}, 71)
    assert (e["dropped"], e["clipped"], e["freed"]) == ([], [], [])
    extents = visible_extents(ns.chunk_slices(ino, 0), 20 * MiB)
    assert [(x.pos, x.length, x.is_hole) for x in extents] == [
        (0, 3 * MiB, False),
        (3 * MiB, 17 * MiB, True),
    ]
    same = ns.apply("truncate", {"path": "/f", "size": 20 * MiB, **ROOT}, 72)
    assert same["attr"]["mtime_ms"] == 71  # size unchanged: times unchanged
    e = ns.apply("truncate", {"path": "/f", "size": 0, **ROOT}, 73)
    assert [f["id"] for f in e["freed"]] == [a["id"]] and ns.chunk_slices(ino, 0) == []


def test_truncate_drops_refs_the_cut_leaves_covered() -> None:
    ns = Namespace()
    ns.apply("create", {"path": "/f", "mode": 0o644, **ROOT}, 1)
    old = put(ns, "/f", 9 * MiB)["slice"]  # visible only in [5, 9) MiB once `new` lands
    new = put(ns, "/f", 5 * MiB)["slice"]
    e = ns.apply("truncate", {"path": "/f", "size": 3 * MiB, **ROOT}, 2)
    assert e["dropped"] == [{"chunk_index": 0, **old}]
    assert e["clipped"] == [{"chunk_index": 0, **new, "len": 3 * MiB}]
    assert [f["id"] for f in e["freed"]] == [old["id"]]


def test_setattr() -> None:
    ns = tree()
    e = ns.apply("setattr", {"path": "/d/f", "mode": 0o600, "mtime_ms": 5, **ALICE}, 300)
    assert (e["attr"]["mode"], e["attr"]["mtime_ms"], e["attr"]["ctime_ms"]) == (0o600, 5, 300)
    e = ns.apply("setattr", {"path": "/d/f", "owner_uid": 7, "owner_gid": 8, **ROOT}, 301)
    assert (e["attr"]["uid"], e["attr"]["gid"]) == (7, 8)
    e = ns.apply("setattr", {"path": "/d/f", "size": 0, **ROOT}, 302)
    assert e["attr"]["size"] == 0 and len(e["freed"]) == 1 and e["attr"]["mtime_ms"] == 302
    # chown to the current owner is not a change of owner: allowed to the owner
    ns.apply("setattr", {"path": "/d/sub/g", "owner_uid": 1000, **ALICE}, 303)
    nothing = ns.apply("setattr", {"path": "/d/sub/g", **BOB}, 304)
    assert nothing["attr"] == ns.lookup("/d/sub/g", **ROOT).to_dict()
    assert nothing["attr"]["ctime_ms"] == 303


def test_unlink_frees_slices_and_updates_parent() -> None:
    ns = tree()
    f = ns.lookup("/d/f", **ROOT)
    e = ns.apply("unlink", {"path": "/d/f", **ALICE}, 400)
    assert (e["ino"], e["name"], e["attr"]) == (f.ino, "f", None)
    assert len(e["freed"]) == 1 and e["parent_attr"]["mtime_ms"] == 400
    assert "/d/f" not in ns.dump_tree()
    with pytest.raises(FsError):
        ns.getattr(f.ino)
    e = ns.apply("unlink", {"path": "/l", **ROOT}, 401)  # a symlink goes, its target stays
    assert "/d" in ns.dump_tree() and e["freed"] == []
    # sticky dir: the entry's owner may remove it
    ns.apply("unlink", {"path": "/sticky/mine", **ALICE}, 402)


def test_rmdir() -> None:
    ns = tree()
    ns.apply("mkdir", {"path": "/d/tmp", "mode": 0o700, **ALICE}, 499)
    assert ns.lookup("/d", **ROOT).nlink == 4
    e = ns.apply("rmdir", {"path": "/d/tmp", **ALICE}, 500)
    assert (e["name"], e["parent_attr"]["nlink"], e["parent_attr"]["mtime_ms"]) == ("tmp", 3, 500)
    e = ns.apply("rmdir", {"path": "/e", **ROOT}, 501)
    assert e["name"] == "e" and e["parent_attr"]["nlink"] == ns.getattr(ROOT_INO).nlink
    assert ns.getattr(ROOT_INO).nlink == 2 + 5  # d ro noexec noread sticky left


@pytest.mark.parametrize(
    ("src", "dst", "gone"),
    [
        ("/d/f", "/e/f2", None),  # file to another dir
        ("/d/f", "/rootfile", "/rootfile"),  # file replaces file
        ("/d/sub", "/e", "/e"),  # dir replaces empty dir
        ("/d/sub", "/new", None),  # dir to another parent
        ("/l", "/d/f", "/d/f"),  # symlink replaces file
        ("/d/f", "/d/f", None),  # same entry: nothing happens
    ],
)
def test_rename_happy(src: str, dst: str, gone: str | None) -> None:
    ns = tree()
    before = ns.dump_tree()
    moved = ns.lookup(src, **ROOT)
    e = ns.apply("rename", {"src": src, "dst": dst, **ROOT}, 600)
    after = ns.dump_tree()
    assert after[dst]["ino"] == moved.ino
    if src == dst:
        assert e["noop"] is True and after == before
        return
    assert src not in after and e["noop"] is False and after[dst]["ctime_ms"] == 600
    for path, item in after.items():  # the subtree moved with it
        if path.startswith(dst + "/"):
            assert before[src + path[len(dst) :]]["ino"] == item["ino"]
    if gone is None:
        assert e["replaced"] is None and e["freed"] == []
    else:
        assert e["replaced"] == {
            "ino": before[gone]["ino"],
            "kind": before[gone]["kind"],
            "attr": None,
        }
        assert all(item["ino"] != before[gone]["ino"] for item in after.values())
    if gone == "/rootfile":
        assert e["freed"] == []
    if gone == "/d/f":
        assert len(e["freed"]) == 1
    for path, item in after.items():  # nlink of every directory is 2 + its subdirectories
        if item["kind"] == "dir":
            subdirs = [
                p
                for p, i in after.items()
                if i["kind"] == "dir"
                and p != "/"
                and p.rsplit("/", 1)[0] == (path if path != "/" else "")
            ]
            assert item["nlink"] == 2 + len(subdirs), path


def test_readdir_pages_in_name_order() -> None:
    ns = Namespace()
    names = [f"n{i:03d}" for i in range(250)] + ["Z", "é", "a b"]
    rng = random.Random(1)
    rng.shuffle(names)
    for i, name in enumerate(names):
        ns.apply("create", {"path": f"/{name}", "mode": 0o644, **ROOT}, i)
    got: list[str] = []
    after = ""
    while page := ns.readdir("/", 0, 0, after=after, limit=7):
        got += [n for n, _ in page]
        after = page[-1][0]
        if len(got) == 98:  # the listing stays right while the directory changes
            ns.apply("create", {"path": "/zzz", "mode": 0o644, **ROOT}, 999)
            ns.apply("unlink", {"path": "/n000", **ROOT}, 999)
    assert len(got) > 98
    assert got == sorted([*names, "zzz"])  # n000 went after it was listed, zzz came before
    assert ns.readdir("/", 0, 0, after="n248", limit=2)[0][0] == "n249"
    assert ns.readdir("/", 0, 0)[0][1] == ns.lookup("/Z", **ROOT)


def test_alloc_slices_and_write_once() -> None:
    ns = Namespace()
    ns.apply("create", {"path": "/f", "mode": 0o644, **ROOT}, 1)
    assert ns.apply("alloc_slices", {"count": 5, **ROOT}, 2) == {"first": 1, "count": 5, "ts": 2}
    assert ns.apply("alloc_slices", {"count": 1, **ROOT}, 2) == {"first": 6, "count": 1, "ts": 2}
    args = {
        "path": "/f",
        "chunk_index": 0,
        "pos": 0,
        "slice_id": 3,
        "size": 1,
        "checksums": ["c"],
        **ROOT,
    }
    ns.apply("write", args, 3)
    with pytest.raises(FsError) as err:  # the same request again cannot commit twice
        ns.apply("write", args, 4)
    assert err.value.errno == errno.EINVAL


def test_expire_slices_makes_old_uncommitted_ids_uncommittable() -> None:
    ns = Namespace()
    ns.apply("create", {"path": "/f", "mode": 0o644, **ROOT}, 1)
    ns.apply("alloc_slices", {"count": 3, **ROOT}, 100)  # ids 1..3
    ns.apply("alloc_slices", {"count": 2, **ROOT}, 200)  # ids 4..5
    args = {"path": "/f", "chunk_index": 0, "pos": 0, "size": 1, "checksums": ["c"], **ROOT}
    ns.apply("write", {**args, "slice_id": 2}, 150)  # committed in time: never expired
    effect = ns.apply("expire_slices", {"before_ts": 100, **ROOT}, 300)
    assert effect == {"expired": [[1, 2], [3, 4]], "forgotten": []}
    assert ns.tables.pending.ranges() == [[4, 6, 200]]
    with pytest.raises(FsError) as err:  # a late commit of an expired id fails cleanly
        ns.apply("write", {**args, "slice_id": 3}, 301)
    assert err.value.errno == errno.EINVAL and "expired" in str(err.value)
    ns.apply("write", {**args, "slice_id": 4, "pos": 1}, 302)  # a young id still commits
    forget = ns.apply("expire_slices", {"before_ts": 0, "forget": [[0, 3]], **ROOT}, 303)
    assert forget == {"expired": [], "forgotten": [[1, 2]]}
    assert ns.tables.pending.expired_ranges() == [[3, 4]]
    header = next(ns.iter_snapshot())
    assert (header["pending"], header["expired"]) == ([[5, 6, 200]], [[3, 4]])
    assert ns.slice_info(2).size == 1, "the committed slice is live"


def test_a_snapshot_from_before_reservation_times_still_loads() -> None:
    ns = Namespace()
    ns.apply("alloc_slices", {"count": 3, **ROOT}, 100)
    rows = list(ns.iter_snapshot())
    del rows[0]["expired"]
    rows[0]["pending"] = [[1, 4]]
    back = Namespace.from_snapshot(rows)
    assert back.tables.pending.ranges() == [[1, 4, 0]]
    assert back.tables.pending.expired_ranges() == []


# -- errors: each leaves the namespace exactly as it was ------------------------------------------

LONG = "x" * 256
ERRORS: list[tuple[str, dict[str, Any], dict[str, int], int]] = [
    ("mkdir", {"path": "/d", "mode": 0o755}, ROOT, errno.EEXIST),
    ("mkdir", {"path": "/", "mode": 0o755}, ROOT, errno.EEXIST),
    ("mkdir", {"path": "/missing/x", "mode": 0o755}, ROOT, errno.ENOENT),
    ("mkdir", {"path": "/d/f/x", "mode": 0o755}, ROOT, errno.ENOTDIR),
    ("mkdir", {"path": "/l/x", "mode": 0o755}, ROOT, errno.ENOTDIR),  # symlinks not followed
    ("mkdir", {"path": f"/{LONG}", "mode": 0o755}, ROOT, errno.ENAMETOOLONG),
    ("mkdir", {"path": "/" + "é" * 128, "mode": 0o755}, ROOT, errno.ENAMETOOLONG),  # bytes
    ("mkdir", {"path": "/a\0b", "mode": 0o755}, ROOT, errno.EINVAL),
    ("mkdir", {"path": "/d//x", "mode": 0o755}, ROOT, errno.EINVAL),
    ("mkdir", {"path": "/d/x/", "mode": 0o755}, ROOT, errno.EINVAL),
    ("mkdir", {"path": "/d/..", "mode": 0o755}, ROOT, errno.EINVAL),
    ("mkdir", {"path": "/d/.", "mode": 0o755}, ROOT, errno.EINVAL),
    ("mkdir", {"path": "d/x", "mode": 0o755}, ROOT, errno.EINVAL),
    ("mkdir", {"path": "/\udcff", "mode": 0o755}, ROOT, errno.EINVAL),
    ("mkdir", {"path": "/x", "mode": 0o10000}, ROOT, errno.EINVAL),
    ("mkdir", {"path": "/ro/x2", "mode": 0o755}, ALICE, errno.EACCES),
    ("mkdir", {"path": "/noexec/x", "mode": 0o755}, ALICE, errno.EACCES),
    ("mkdir", {"path": "/d/x", "mode": 0o755}, BOB, errno.EACCES),
    ("create", {"path": "/d/f", "mode": 0o644}, ROOT, errno.EEXIST),
    ("create", {"path": "/d", "mode": 0o644, "exclusive": False}, ROOT, errno.EISDIR),
    ("create", {"path": "/l", "mode": 0o644, "exclusive": False}, ROOT, errno.EEXIST),
    ("create", {"path": "/d/g", "mode": 0o644}, BOB, errno.EACCES),
    ("symlink", {"path": "/d/f", "target": "x"}, ROOT, errno.EEXIST),
    ("symlink", {"path": "/s", "target": ""}, ROOT, errno.EINVAL),
    ("symlink", {"path": "/s", "target": "a\0b"}, ROOT, errno.EINVAL),
    ("symlink", {"path": "/s", "target": "a" * 4097}, ROOT, errno.ENAMETOOLONG),
    ("symlink", {"path": "/ro/s", "target": "x"}, ALICE, errno.EACCES),
    ("write", {"path": "/d", "slice_id": 90}, ROOT, errno.EISDIR),
    ("write", {"path": "/l", "slice_id": 90}, ROOT, errno.EINVAL),
    ("write", {"path": "/nope", "slice_id": 90}, ROOT, errno.ENOENT),
    ("write", {"path": "/d/f", "slice_id": 1}, ROOT, errno.EINVAL),  # already committed
    ("write", {"path": "/d/f", "slice_id": 999}, ROOT, errno.EINVAL),  # never allocated
    ("write", {"path": "/d/f", "slice_id": 90, "checksums": []}, ROOT, errno.EINVAL),
    ("write", {"path": "/d/f", "slice_id": 90, "pos": CHUNK_SIZE - 1}, ROOT, errno.EINVAL),
    ("write", {"path": "/d/f", "slice_id": 90, "size": 0, "checksums": []}, ROOT, errno.EINVAL),
    ("write", {"path": "/d/f", "slice_id": 90, "chunk_index": -1}, ROOT, errno.EINVAL),
    ("write", {"path": "/d/f", "slice_id": 90, "chunk_index": 2**37 - 1}, ROOT, errno.EFBIG),
    ("write", {"path": "/d/f", "slice_id": 90, "chunk_index": 2**37}, ROOT, errno.EINVAL),
    ("write", {"path": "/d/f", "slice_id": 90}, BOB, errno.EACCES),
    ("truncate", {"path": "/d", "size": 0}, ROOT, errno.EISDIR),
    ("truncate", {"path": "/l", "size": 0}, ROOT, errno.EINVAL),
    ("truncate", {"path": "/d/f", "size": -1}, ROOT, errno.EINVAL),
    ("truncate", {"path": "/d/f", "size": 2**63 - 1}, ROOT, errno.EFBIG),
    ("truncate", {"path": "/d/f", "size": 0}, BOB, errno.EACCES),
    ("truncate", {"path": "/noexec/nope", "size": 0}, ALICE, errno.EACCES),
    ("rename", {"src": "/nope", "dst": "/x"}, ROOT, errno.ENOENT),
    ("rename", {"src": "/d/f", "dst": "/nope/x"}, ROOT, errno.ENOENT),
    ("rename", {"src": "/d/f", "dst": "/e"}, ROOT, errno.EISDIR),
    ("rename", {"src": "/e", "dst": "/d/f"}, ROOT, errno.ENOTDIR),
    ("rename", {"src": "/e", "dst": "/d"}, ROOT, errno.ENOTEMPTY),
    ("rename", {"src": "/d/sub", "dst": "/d"}, ROOT, errno.ENOTEMPTY),  # onto its own parent
    ("rename", {"src": "/d", "dst": "/d/sub/x"}, ROOT, errno.EINVAL),
    ("rename", {"src": "/d", "dst": "/d/x"}, ROOT, errno.EINVAL),
    ("rename", {"src": "/", "dst": "/x"}, ROOT, errno.EBUSY),
    ("rename", {"src": "/e", "dst": "/"}, ROOT, errno.EBUSY),
    ("rename", {"src": "/d/f", "dst": "/d/a/"}, ROOT, errno.EINVAL),
    ("rename", {"src": "/d/f", "dst": "/ro/f"}, ALICE, errno.EACCES),
    ("rename", {"src": "/rootfile", "dst": "/x"}, ALICE, errno.EACCES),
    ("rename", {"src": "/sticky/mine", "dst": "/sticky/x"}, BOB, errno.EPERM),
    ("unlink", {"path": "/d"}, ROOT, errno.EISDIR),
    ("unlink", {"path": "/"}, ROOT, errno.EISDIR),
    ("unlink", {"path": "/nope"}, ROOT, errno.ENOENT),
    ("unlink", {"path": "/d/f/x"}, ROOT, errno.ENOTDIR),
    ("unlink", {"path": "/d/f"}, BOB, errno.EACCES),
    ("unlink", {"path": "/sticky/mine"}, BOB, errno.EPERM),
    ("rmdir", {"path": "/d"}, ROOT, errno.ENOTEMPTY),
    ("rmdir", {"path": "/d/f"}, ROOT, errno.ENOTDIR),
    ("rmdir", {"path": "/l"}, ROOT, errno.ENOTDIR),
    ("rmdir", {"path": "/"}, ROOT, errno.EBUSY),
    ("rmdir", {"path": "/nope"}, ROOT, errno.ENOENT),
    ("rmdir", {"path": "/e"}, BOB, errno.EACCES),
    ("setattr", {"path": "/d/f", "owner_uid": 5}, ALICE, errno.EPERM),
    ("setattr", {"path": "/d/f", "owner_gid": 5}, ALICE, errno.EPERM),
    ("setattr", {"path": "/d/f", "mode": 0o777}, BOB, errno.EPERM),
    ("setattr", {"path": "/d/f", "mtime_ms": 1}, BOB, errno.EPERM),
    ("setattr", {"path": "/d/f", "mode": -1}, ROOT, errno.EINVAL),
    ("setattr", {"path": "/d", "size": 0}, ROOT, errno.EISDIR),
    (
        "setattr",
        {"path": "/d/f", "mode": 0o600, "size": 0},
        ALICE,
        errno.EACCES,
    ),  # w on the old mode
    ("setattr", {"path": "/nope", "mode": 0o600}, ROOT, errno.ENOENT),
    ("alloc_slices", {"count": 0}, ROOT, errno.EINVAL),
    ("alloc_slices", {"count": 2**21}, ROOT, errno.EINVAL),
    ("expire_slices", {"before_ts": 0}, ALICE, errno.EPERM),
    ("expire_slices", {"before_ts": 801}, ROOT, errno.EINVAL),  # after the op's own ts
    ("expire_slices", {"before_ts": 0, "forget": [[5, 5]]}, ROOT, errno.EINVAL),
    ("expire_slices", {"before_ts": 0, "forget": [[1, 2, 3]]}, ROOT, errno.EINVAL),
    ("expire_slices", {"before_ts": 0, "forget": "x"}, ROOT, errno.EINVAL),
]


def _full_write_args(args: dict[str, Any]) -> dict[str, Any]:
    size = args.get("size", 100)
    base = {"chunk_index": 0, "pos": 0, "size": size, "checksums": ["c"] * block_count(size)}
    return {**base, **args}


@pytest.mark.parametrize(("op", "args", "who", "err"), ERRORS, ids=lambda v: repr(v)[:40])
def test_errors_change_nothing(
    op: str, args: dict[str, Any], who: dict[str, int], err: int
) -> None:
    ns = tree()
    ns.apply("alloc_slices", {"count": 100, **ROOT}, 700)  # ids up to 101 pending, 1 committed
    if op == "write":
        args = _full_write_args(args)
    if op == "setattr" and "size" in args and who is ALICE:
        ns.apply("setattr", {"path": "/d/f", "mode": 0o444, **ALICE}, 701)
    before = state(ns)
    with pytest.raises(FsError) as exc:
        ns.apply(op, {**args, **who}, 800)
    assert exc.value.errno == err, exc.value
    assert state(ns) == before


READ_ERRORS: list[tuple[str, tuple[Any, ...], int]] = [
    ("lookup", ("/noexec/y", *ALICE.values()), errno.EACCES),
    ("lookup", ("/nope", 0, 0), errno.ENOENT),
    ("lookup", ("/d/f/x", 0, 0), errno.ENOTDIR),
    ("lookup", ("/l/f", 0, 0), errno.ENOTDIR),
    ("readdir", ("/noread", *BOB.values()), errno.EACCES),
    ("readdir", ("/d/f", 0, 0), errno.ENOTDIR),
    ("readdir", ("/d", 0, 0, "", 0), errno.EINVAL),
    ("readdir", ("/d", 0, 0, None), errno.EINVAL),
    ("getattr", (999,), errno.ENOENT),
    ("getattr", ([1],), errno.ENOENT),
    ("chunk_slices", (999, 0), errno.ENOENT),
    ("resolve", ("relative",), errno.EINVAL),
]


@pytest.mark.parametrize(("method", "args", "err"), READ_ERRORS)
def test_read_errors(method: str, args: tuple[Any, ...], err: int) -> None:
    with pytest.raises(FsError) as exc:
        getattr(tree(), method)(*args)
    assert exc.value.errno == err


def test_reads_with_permission() -> None:
    ns = tree()
    assert ns.lookup("/noread", **BOB).kind == "dir"  # x without r: lookup fine
    assert [n for n, _ in ns.readdir("/d", **BOB)] == ["f", "sub"]


BAD_REQUESTS: list[tuple[Any, Any, Any]] = [
    ("nosuchop", {**ROOT}, 1),
    (None, {**ROOT}, 1),
    ("mkdir", [("path", "/x")], 1),
    ("mkdir", {"path": "/x", **ROOT}, 1),  # missing mode
    ("mkdir", {"path": "/x", "mode": 0o755}, 1),  # missing caller
    ("mkdir", {"path": "/x", "mode": 0o755, "bogus": 1, **ROOT}, 1),
    ("mkdir", {"path": "/x", "mode": "0755", **ROOT}, 1),
    ("mkdir", {"path": "/x", "mode": True, **ROOT}, 1),
    ("mkdir", {"path": b"/x", "mode": 0o755, **ROOT}, 1),
    ("mkdir", {"path": None, "mode": 0o755, **ROOT}, 1),
    ("mkdir", {"path": "/x", "mode": 0o755, "uid": -1, "gid": 0}, 1),
    ("mkdir", {"path": "/x", "mode": 0o755, "uid": 2**40, "gid": 0}, 1),
    ("mkdir", {"path": "/x", "mode": 0o755, **ROOT}, "1"),
    ("mkdir", {"path": "/x", "mode": 0o755, **ROOT}, -1),
    ("mkdir", {"path": "/x", "mode": 0o755, "ts": 1, **ROOT}, 1),
    ("create", {"path": "/x", "mode": 0o644, "exclusive": 1, **ROOT}, 1),
    ("setattr", {"path": "/x", "mode": 1.5, **ROOT}, 1),
    (
        "write",
        {
            "path": "/d/f",
            "chunk_index": 0,
            "pos": 0,
            "slice_id": 90,
            "size": 1,
            "checksums": [1],
            **ROOT,
        },
        1,
    ),
    (
        "write",
        {
            "path": "/d/f",
            "chunk_index": 0,
            "pos": 0,
            "slice_id": 90,
            "size": 1,
            "checksums": ["\udcff"],
            **ROOT,
        },
        1,
    ),
    (
        "write",
        {
            "path": "/d/f",
            "chunk_index": 0,
            "pos": 0,
            "slice_id": 90,
            "size": 1,
            "checksums": "c",
            **ROOT,
        },
        1,
    ),
    ("alloc_slices", {"count": 1.0, **ROOT}, 1),
]


@pytest.mark.parametrize(("op", "args", "ts"), BAD_REQUESTS, ids=lambda v: repr(v)[:30])
def test_bad_requests_are_einval(op: Any, args: Any, ts: Any) -> None:
    ns = tree()
    ns.apply("alloc_slices", {"count": 100, **ROOT}, 700)
    before = state(ns)
    with pytest.raises(FsError) as exc:
        ns.apply(op, args, ts)
    assert exc.value.errno == errno.EINVAL
    assert state(ns) == before
