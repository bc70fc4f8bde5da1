"""What the dashboard concludes from the status documents (cli/dashboard/summary.py)."""

from __future__ import annotations

from typing import Any

from cli.dashboard.summary import (
    BAD,
    OK,
    WARN,
    Answer,
    mirror_view,
    node_view,
    overall,
    source_view,
)

NOW = 1_700_000_000_000


def node_doc(node: int, role: str, term: int, applied: int, **extra: Any) -> dict[str, Any]:
    return {
        "node": node,
        "role": role,
        "term": term,
        "leader": None,
        "has_quorum": True,
        "applied_version": applied,
        "head_ts": NOW - 200,
        "uptime_s": 10.0,
        "segment_error": None,
        "gc": {"garbage_blocks": 0, "garbage_bytes": 0, "held_by": {}},
        "sweeper": None,
        "registrations_never_acked": [],
        **extra,
    }


def source(*answers: tuple[int, Answer]) -> dict[str, Any]:
    rows = [node_view(i, f"http://n{i}", a) for i, a in answers]
    docs = {i: a.document for i, a in answers if a.document is not None}
    return source_view(rows, docs, NOW)


def ok(doc: dict[str, Any]) -> Answer:
    return Answer(NOW, document=doc, http_status=200)


DOWN = Answer(NOW, error="connection refused")


def test_leader_is_the_one_in_the_highest_term_and_a_down_node_is_a_warning() -> None:
    src = source(
        (1, ok(node_doc(1, "leader", 3, 90))),  # deposed, has not heard of term 4 yet
        (2, ok(node_doc(2, "leader", 4, 100))),
        (3, DOWN),
    )
    assert src["leader"] == 2 and src["term"] == 4 and src["head_version"] == 100
    assert src["head_age_s"] == 0.2
    assert [n["behind"] for n in src["nodes"]] == [10, 0, None]
    assert src["level"] == WARN
    assert src["problems"] == ["source node 3 unreachable"]


def test_no_leader_and_no_answer_are_bad() -> None:
    src = source((1, ok(node_doc(1, "follower", 5, 7))), (2, DOWN))
    assert src["leader"] is None and src["term"] == 5 and src["level"] == BAD
    assert "the source has no leader (an election, or no quorum)" in src["problems"]
    nothing = source((1, DOWN), (2, DOWN))
    assert nothing["level"] == BAD
    assert nothing["problems"] == ["no source node answers (2 of 2 unreachable)"]
    assert nothing["head_version"] is None and nothing["head_ts"] is None


def test_gc_held_back_long_enough_is_named() -> None:
    gc = {"garbage_blocks": 4, "held_by": {"eu": {"acked": 3, "version": 9, "age_s": 600}}}
    src = source((1, ok(node_doc(1, "leader", 1, 50, gc=gc))))
    assert src["gc"]["garbage_blocks"] == 4
    assert src["problems"] == ["mirror eu holds the source's GC back (10 min)"]
    assert src["level"] == WARN


def mirror_doc(**over: Any) -> dict[str, Any]:
    doc = {
        "mirror": "eu",
        "state": "following",
        "applied_version": 100,
        "source_version": 100,
        "lag_versions": 0,
        "lag_seconds": 0.2,
        "window_s": 5.0,
        "blocks_pending": 0,
        "bytes_pending": 0,
        "blocks_failed": 0,
        "paused": False,
        "replicator_state": "idle",
        "gc_held_back": None,
    }
    return {**doc, **over}


def test_a_following_mirror_is_ok_and_absent_fields_stay_null() -> None:
    view = mirror_view("eu", "http://eu", 5.0, ok(mirror_doc()), None)
    assert view["level"] == OK and view["problems"] == [] and not view["over_window"]
    assert view["fallback_reads"] is None and view["fallback_bytes"] is None  # not reported yet
    with_counters = mirror_view(
        "eu", "http://eu", 5.0, ok(mirror_doc(fallback_reads=3, fallback_bytes=12)), None
    )
    assert with_counters["fallback_reads"] == 3 and with_counters["fallback_bytes"] == 12


def test_over_the_window_failed_and_paused_are_each_said() -> None:
    doc = mirror_doc(state="syncing", lag_seconds=7.5, blocks_failed=2, paused=True)
    view = mirror_view("eu", "http://eu", 5.0, ok(doc), None)
    assert view["over_window"] and view["level"] == BAD
    assert view["problems"] == [
        "eu is 7.5 s behind, over its 5 s window",
        "eu: 2 blocks failed",
        "eu: replication paused",
    ]


def test_degraded_is_a_document_with_its_reason() -> None:
    doc = mirror_doc(state="degraded", degraded_reason="replica database unavailable: refused")
    view = mirror_view("eu", "http://eu", 5.0, Answer(NOW, document=doc, http_status=503), None)
    assert view["answered"] and view["level"] == BAD
    assert view["problems"] == ["eu degraded: replica database unavailable: refused"]


def test_unreachable_keeps_when_and_where_it_was_last_seen() -> None:
    seen = ok(mirror_doc(applied_version=77))
    view = mirror_view("eu", "http://eu", 5.0, DOWN, seen)
    assert not view["reachable"] and view["applied_version"] is None
    assert view["last_seen_ms"] == NOW and view["last_seen_version"] == 77
    assert view["problems"] == ["eu unreachable: connection refused"]
    refused = mirror_view("eu", "http://eu", 5.0, Answer(NOW, http_status=401, error="no"), None)
    assert refused["reachable"] and not refused["answered"] and refused["level"] == BAD


def test_the_verdict_is_the_worst_level_with_every_problem() -> None:
    src = source((1, ok(node_doc(1, "leader", 1, 10))))
    fine = mirror_view("ap", "http://ap", 5.0, ok(mirror_doc(mirror="ap")), None)
    assert overall(src, [fine]) == {
        "level": OK,
        "headline": "the mirror region is following within its window",
        "problems": [],
    }
    down = mirror_view("eu", "http://eu", 5.0, DOWN, None)
    verdict = overall(src, [fine, down])
    assert verdict["level"] == BAD and verdict["headline"] == "eu unreachable: connection refused"
