"""Retries are answered once: the remembered requests and the state machine, in process.

A retry of a committed request gets the first answer back (rebuilt from its records) and
applies nothing, however many requests came in between, within the window; a retry of a
failed one gets the failure again; a request older than the window, or from too far in the
future, is refused; the memory is deterministic (pruned by the commands' ts) and small.
"""

from __future__ import annotations

import errno
import pickle
import tracemalloc
from typing import Any

import pytest

from changelog.raft.dedup import Committed, Failed, RequestMemory
from changelog.raft.state import MetaState, Refused, Replayed, results_from_records
from tests.changelog.test_requests import TS, alloc, full_state, new_state, op, put_ops, submit
from volume.errors import BadRequestError, RequestExpiredError
from volume.records import Record
from volume.request_ids import (
    MalformedRequestIdError,
    new_request_id,
    parse_request_id,
)

WINDOW_MS = 600_000


def answer_of(state: MetaState, records: list[Record], outcome: Any) -> Any:
    """What the API answers: a Replayed outcome rebuilt from the records, as the node does."""
    if isinstance(outcome, Replayed):
        by_version = {r.version: r for r in records}
        first = outcome.first_version
        return results_from_records(by_version[v] for v in range(first, first + outcome.count))
    return outcome


def test_request_ids_carry_their_creation_time() -> None:
    rid = new_request_id(now_ms=1_700_000_000_123)
    created, key = parse_request_id(rid)
    assert created == 1_700_000_000_123
    assert parse_request_id(new_request_id())[1] != key
    for bad in ["", "abc", rid.upper(), rid + "0", rid.replace("-", "_"), "0" * 45, 5, None]:
        with pytest.raises(MalformedRequestIdError, match="12 hex digits"):
            parse_request_id(bad)


def test_retry_after_25000_others_gets_the_first_answer_and_applies_nothing() -> None:
    state, records = new_state()
    sid = alloc(state)
    rid = new_request_id(TS)
    ops = put_ops("/r", sid, 1234)
    first = submit(state, ops, rid=rid)
    assert all(r["ok"] for r in first)
    for i in range(25_000):
        submit(state, [op("mkdir", path=f"/d{i}", mode=0o755)], rid=new_request_id(TS + 1))
    before = full_state(state)

    again = submit(state, ops, rid=rid, ts=TS + 2)

    assert again == Replayed(first[0]["version"], 3)
    assert answer_of(state, records, again) == first
    assert full_state(state) == before, "the retry applied something"


def test_retry_of_a_failed_request_gets_the_same_failure() -> None:
    state, _ = new_state()
    rid = new_request_id(TS)
    ops = [op("mkdir", path="/a", mode=0o755), op("unlink", path="/missing")]
    first = submit(state, ops, rid=rid)
    assert [r.get("not_applied", False) for r in first] == [True, False]
    assert first[1]["error"]["errno"] == errno.ENOENT
    before = full_state(state)
    assert submit(state, ops, rid=rid, ts=TS + 1) == first
    assert full_state(state) == before


def test_two_copies_in_one_raft_entry_apply_once() -> None:
    """Group commit may carry a request and its retry in one entry."""
    state, _ = new_state()
    rid = new_request_id(TS)
    ops = [op("mkdir", path="/a", mode=0o755)]
    first, second = state.apply_requests([(rid, ops), (rid, ops)], TS, WINDOW_MS, _doApply=True)
    assert first[0]["ok"] and second == Replayed(first[0]["version"], 1)
    assert state.version == 1


def test_retry_after_the_window_is_refused_not_reapplied() -> None:
    state, _ = new_state()
    rid = new_request_id(TS)
    ops = [op("mkdir", path="/a", mode=0o755)]
    assert submit(state, ops, rid=rid)[0]["ok"]
    state.apply_requests([(None, [op("rmdir", path="/a")])], TS + 1, WINDOW_MS, _doApply=True)
    before = full_state(state)
    # Still remembered at the window's last ms; forgotten (and refused) one ms later.
    just = state.apply_requests([(rid, ops)], TS + WINDOW_MS, WINDOW_MS, _doApply=True)
    assert isinstance(just[0], Replayed)
    late = state.apply_requests([(rid, ops)], TS + WINDOW_MS + 1, WINDOW_MS, _doApply=True)
    [refused] = late
    assert isinstance(refused, Refused) and isinstance(refused.error, RequestExpiredError)
    assert "dedup window" in refused.error.message and rid in refused.error.message
    assert full_state(state)[:2] == before[:2], "the expired retry applied something"
    assert len(state.requests) == 0, "expired requests were not forgotten"


def test_an_id_created_long_ago_is_refused_even_if_never_seen() -> None:
    state, _ = new_state()
    old = new_request_id(TS - WINDOW_MS - 1)
    [refused] = state.apply_requests(
        [(old, [op("mkdir", path="/a", mode=0o755)])], TS, WINDOW_MS, _doApply=True
    )
    assert isinstance(refused, Refused) and isinstance(refused.error, RequestExpiredError)
    assert state.version == 0


def test_an_id_from_the_future_or_malformed_is_refused() -> None:
    state, _ = new_state()
    ahead = new_request_id(TS + WINDOW_MS + 1)
    [future, bad] = state.apply_requests(
        [(ahead, [op("mkdir", path="/a", mode=0o755)]), ("x" * 20, [op("mkdir", path="/b")])],
        TS,
        WINDOW_MS,
        _doApply=True,
    )
    assert isinstance(future, Refused) and isinstance(future.error, BadRequestError)
    assert "clock" in (future.error.hint or "")
    assert isinstance(bad, Refused) and isinstance(bad.error, BadRequestError)
    assert state.version == 0


def test_a_client_clock_running_ahead_keeps_the_guarantee() -> None:
    """Remembered until max(commit ts, creation) + W: a retry is answered until the id is
    older than W by the source's clock, and refused after, with no gap in between."""
    state, _ = new_state()
    ahead_ms = 100_000
    rid = new_request_id(TS + ahead_ms)
    ops = [op("mkdir", path="/a", mode=0o755)]
    assert submit(state, ops, rid=rid)[0]["ok"]
    for ts in (TS + WINDOW_MS, TS + ahead_ms + WINDOW_MS):
        [outcome] = state.apply_requests([(rid, ops)], ts, WINDOW_MS, _doApply=True)
        assert isinstance(outcome, Replayed), ts
    [outcome] = state.apply_requests(
        [(rid, ops)], TS + ahead_ms + WINDOW_MS + 1, WINDOW_MS, _doApply=True
    )
    assert isinstance(outcome, Refused) and isinstance(outcome.error, RequestExpiredError)
    assert state.version == 1


def test_memory_survives_a_pickle_like_the_dump() -> None:
    state, _ = new_state()
    rid = new_request_id(TS)
    first = submit(state, [op("mkdir", path="/a", mode=0o755)], rid=rid)
    copy = pickle.loads(pickle.dumps(state.requests))
    assert copy.get(parse_request_id(rid)[1]) == Committed(first[0]["version"], 1)


def test_remembered_requests_cost_little_memory() -> None:
    """100k remembered requests: measured bytes per entry (report them) stay small."""
    n = 100_000
    keys = [parse_request_id(new_request_id(TS + i))[1] for i in range(n)]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        memory = RequestMemory()
        for i, key in enumerate(keys):
            if i % 100:
                memory.remember(key, Committed(1_000_000 + 3 * i, 3), TS + WINDOW_MS + i)
            else:  # one in a hundred failed
                error = {"error": "FsError", "errno": 2, "message": "ENOENT: no such file (/x)"}
                memory.remember(key, Failed(3, 2, error), TS + WINDOW_MS + i)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_entry = (after - before) / n
    pickled = len(pickle.dumps(memory)) / n
    print(f"remembered requests: {per_entry:.0f} B/entry in memory, {pickled:.0f} B pickled")
    # The keys themselves were allocated before: add their cost (48 B each) to the measure.
    assert per_entry + 48 < 220, per_entry
    assert pickled < 80, pickled
    assert memory.prune(TS + WINDOW_MS + n // 2) == n // 2
    assert len(memory) == n - n // 2
