"""Requests are transactions: the state machine in process, without Raft.

A request's ops commit all or nothing: a failing op leaves the namespace, the counters, the
version, the in-state tail and the emitted records exactly as they were, and the answer says
which op failed and that the others were not applied. The property test runs random multi-op
requests (some with an op made to fail) and checks the state equals the one built from only
the successful requests.
"""

from __future__ import annotations

import errno
import random
from typing import Any

import pytest

from changelog.raft.state import MetaState
from tests.changelog.test_namespace import ROOT, sums
from tests.changelog.test_namespace_replay import random_request
from volume.records import Record

TS = 1_000_000


def new_state() -> tuple[MetaState, list[Record]]:
    emitted: list[Record] = []
    return MetaState(on_records=emitted.extend), emitted


def submit(
    state: MetaState, ops: list[dict[str, Any]], *, rid: str | None = None, ts: int = TS
) -> Any:
    (answer,) = state.apply_requests([(rid, ops)], ts, _doApply=True)
    return answer


def op(name: str, **args: Any) -> dict[str, Any]:
    return {"op": name, "args": {**args, **ROOT}}


def put_ops(path: str, slice_id: int, size: int) -> list[dict[str, Any]]:
    """What `mirrorfs put` sends: create (not exclusive), truncate to 0, the writes."""
    return [
        op("create", path=path, mode=0o644, exclusive=False),
        op("truncate", path=path, size=0),
        op(
            "write",
            path=path,
            chunk_index=0,
            pos=0,
            slice_id=slice_id,
            size=size,
            checksums=sums(slice_id, size),
        ),
    ]


def snapshot_rows(state: MetaState) -> list[Any]:
    """The snapshot rows (counters and pending ids included), in a canonical order: a
    rollback may change dicts' iteration order, which the snapshot's row order follows."""
    header, *rows = state.ns.iter_snapshot()
    return [header, *sorted(rows, key=lambda r: (r["row"], r.get("id", 0), r.get("ino", 0)))]


def full_state(state: MetaState) -> tuple[Any, ...]:
    """Everything a request could change, down to the counters and the tail."""
    return (
        state.ns.dump_tree(),
        snapshot_rows(state),
        state.version,
        state.last_ts,
        list(state.recent),
        state.mirrors,
    )


def alloc(state: MetaState, count: int = 1) -> int:
    [result] = submit(state, [op("alloc_slices", count=count)])
    assert result["ok"], result
    return int(result["effect"]["first"])


def test_put_whose_write_is_refused_changes_nothing_and_frees_nothing() -> None:
    state, emitted = new_state()
    sid = alloc(state)
    assert all(r["ok"] for r in submit(state, put_ops("/f", sid, 100)))
    before = full_state(state)
    emitted.clear()

    # Slice 999999 was never allocated: the write is refused, so the whole put must be.
    answer = submit(state, put_ops("/f", 999_999, 100), ts=TS + 5)

    assert [r["ok"] for r in answer] == [False, False, False]
    assert answer[2]["error"]["errno"] == errno.EINVAL, answer[2]
    assert "never allocated" in answer[2]["error"]["detail"]
    for r in answer[:2]:
        assert r["not_applied"] is True
        assert r["error"]["errno"] == errno.ECANCELED
        assert "op 2" in r["error"]["message"], r
    assert "not_applied" not in answer[2]
    assert full_state(state) == before
    assert emitted == [], "a failed request emits no record"
    assert state.ns.slice_info(sid).size == 100, "the old slice was freed"


def test_failure_in_the_middle_of_a_replay_is_rolled_back_too() -> None:
    """An effect that breaks half-way through its steps (a bug, not a user error) leaves
    nothing behind either: the transaction undoes the steps already taken."""
    state, _ = new_state()
    sid = alloc(state)
    assert all(r["ok"] for r in submit(state, put_ops("/f", sid, 100)))
    before = full_state(state)
    tables = state.ns.tables
    with pytest.raises(Exception), state.ns.transaction():  # noqa: B017 - whatever the bug
        state.ns.apply("mkdir", {"path": "/d", "mode": 0o755, **ROOT}, TS)
        # add_slice and edit_refs run, then the effect lacks "freed": MalformedEffectError.
        tables.replay(
            "write",
            {
                "ino": state.ns.resolve("/f").ino,
                "chunk_index": 0,
                "slice": {"id": sid + 1, "size": 5, "off": 0, "len": 5, "pos": 0},
                "checksums": ["x"],
                "attr": {},
                "dropped": [],
            },
        )
    assert full_state(state) == before


def test_rollback_restores_readdir_caches_and_dropped_directories() -> None:
    state, _ = new_state()
    for path in ["/d", "/d/empty", "/e"]:
        submit(state, [op("mkdir", path=path, mode=0o755)])
    sid = alloc(state, 2)
    for i, name in enumerate(["y", "z"]):
        submit(state, put_ops(f"/d/{name}", sid + i, 10))
    for path in ["/", "/d", "/d/empty", "/e"]:  # fill the readdir caches
        state.ns.readdir(path, 0, 0)
    tables = state.ns.tables
    caches = {ino: list(names) for ino, names in tables.sorted_names.items()}
    before = full_state(state)

    answer = submit(
        state,
        [
            op("create", path="/d/x", mode=0o644),
            op("unlink", path="/d/y"),
            op("rename", src="/d/z", dst="/e/z"),
            op("rmdir", path="/d/empty"),
            op("mkdir", path="/d/new", mode=0o755),
            op("rename", src="/d", dst="/e/d2"),
            op("rmdir", path="/nope"),
        ],
    )

    assert [r.get("not_applied", False) for r in answer] == [True] * 6 + [False]
    assert full_state(state) == before
    assert tables.sorted_names == caches
    assert tables.sorted_names[state.ns.resolve("/d/empty").ino] == []
    assert [name for name, _ in state.ns.readdir("/d", 0, 0)] == ["empty", "y", "z"]


@pytest.mark.parametrize("seed", range(8))
def test_random_requests_with_a_failing_op_equal_only_the_successful_ones(seed: int) -> None:
    rng = random.Random(seed)
    a, a_records = new_state()
    b, b_records = new_state()
    unused: list[int] = []
    used: list[int] = []
    ok = failed = 0
    ts = TS
    for _ in range(600):
        ts += rng.randint(0, 3)
        ops: list[dict[str, Any]] = []
        for _ in range(rng.choice([1, 2, 2, 3, 4])):
            name, args = random_request(rng, a.ns, unused, used)
            ops.append({"op": name, "args": args})
        if rng.random() < 0.25:  # an op that always fails, anywhere in the request
            bad = rng.choice(
                [
                    op("unlink", path="/no/such/file"),
                    op(
                        "write",
                        path="/x",
                        chunk_index=0,
                        pos=0,
                        slice_id=10**9,
                        size=1,
                        checksums=["x"],
                    ),
                    {"op": "explode", "args": {}},
                ]
            )
            ops.insert(rng.randint(0, len(ops)), bad)
        before = full_state(a)
        answer = submit(a, ops, ts=ts)
        if all(r["ok"] for r in answer):
            ok += 1
            assert submit(b, ops, ts=ts) == answer
            for r, o in zip(answer, ops, strict=True):
                if o["op"] == "write":
                    unused.remove(r["effect"]["slice"]["id"])
                    used.append(r["effect"]["slice"]["id"])
                elif o["op"] == "alloc_slices":
                    first, count = r["effect"]["first"], r["effect"]["count"]
                    unused.extend(range(first, first + count))
        else:
            failed += 1
            assert full_state(a) == before, ops
            [culprit] = [i for i, r in enumerate(answer) if not r.get("not_applied")]
            assert not answer[culprit]["ok"]
            assert all(r.get("not_applied") for i, r in enumerate(answer) if i != culprit)
        # Fill readdir caches now and then: rollback must keep them right as well.
        dirs = [p for p, v in a.ns.dump_tree().items() if v["kind"] == "dir"]
        a.ns.readdir(rng.choice(dirs), 0, 0)
    assert ok >= 40 and failed >= 40, (ok, failed)
    assert full_state(a)[:3] == full_state(b)[:3]
    assert [(r.version, r.op, r.effect) for r in a_records] == [
        (r.version, r.op, r.effect) for r in b_records
    ]
    t = a.ns.tables
    for ino, names in t.sorted_names.items():
        assert names == sorted(t.entries[ino]), f"readdir cache of {ino} is stale"
