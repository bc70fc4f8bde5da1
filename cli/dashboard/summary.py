"""What the dashboard shows, built from what each node and region daemon answered (sans I/O).

The collector (collector.py) fetches; this module decides: which node leads, how each region
stands against its consistency window, and what is wrong, worded for an operator. Everything
here is a pure function of the answers and the time, so the page never reasons about health
itself: it renders `level` and `problems` as given.

Levels, worst last: `ok`, `warn` (needs a look: catching up, paused, GC held back, a node
down while the quorum stands), `bad` (needs action: a region unreachable or over its window,
blocks failed, no leader, a replica's PostgreSQL away). Fields a status document does not carry
(an older daemon, or counters not built yet, such as `fallback_reads`) are passed on as null,
never invented: the page shows them as "—".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

OK, WARN, BAD = "ok", "warn", "bad"
_RANK = {OK: 0, WARN: 1, BAD: 2}
GC_HOLD_WARN_S = 60.0  # a following mirror acks within seconds: a hold past this is real

# Passed through from a region's /v1/status when present (README "Mirror status"; the
# fallback counters come with the client issue), null when absent.
MIRROR_FIELDS = (
    "state",
    "applied_version",
    "applied_ts",
    "source_version",
    "lag_versions",
    "lag_seconds",
    "records_per_s",
    "window_s",
    "blocks_pending",
    "bytes_pending",
    "blocks_failed",
    "blocks_in_flight",
    "blocks_retrying",
    "oldest_pending_s",
    "failed_reasons",
    "retrying_reasons",
    "paused",
    "replicator_state",
    "replicator_hold_reason",
    "copy_blocks_per_s",
    "copy_bytes_per_s",
    "fallback_reads",
    "fallback_bytes",
    "mirror_hits",
    "mirror_bytes",
    "cache_hits",
    "cache_hit_bytes",
    "cache_misses",
    "cache_miss_bytes",
    "cache_corrupt",
    "gc_held_back",
    "gc",
    "resyncs",
    "last_error",
    "last_error_at",
    "degraded_reason",
)


@dataclass(frozen=True)
class Answer:
    """One GET /v1/status: the document if one came (200, or 503 from a degraded region),
    else why not. `reachable` is false only when nothing answered (refused, timed out)."""

    at_ms: int
    document: dict[str, Any] | None = None
    http_status: int | None = None
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.http_status is not None


def worst(levels: Iterable[str]) -> str:
    return max(levels, key=_RANK.__getitem__, default=OK)


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- the source region ------------------------------------------------------------------------


def node_view(node_id: int, api: str, answer: Answer) -> dict[str, Any]:
    doc = answer.document or {}
    return {
        "node": node_id,
        "api": api,
        "reachable": answer.reachable,
        "answered": answer.document is not None,
        "http_status": answer.http_status,
        "error": answer.error,
        "role": doc.get("role"),
        "term": doc.get("term"),
        "leader": doc.get("leader"),
        "has_quorum": doc.get("has_quorum"),
        "applied_version": doc.get("applied_version"),
        "head_ts": doc.get("head_ts"),
        "uptime_s": doc.get("uptime_s"),
        "segment_error": doc.get("segment_error"),
    }


def pick_leader(nodes: list[dict[str, Any]]) -> int | None:
    """The node that says it leads, in the highest term (a deposed leader that has not heard
    of the new term yet may still say so for a moment)."""
    leaders = [n for n in nodes if n["role"] == "leader"]
    if not leaders:
        return None
    best = max(leaders, key=lambda n: (n["term"] or 0, n["applied_version"] or 0))
    return int(best["node"])


def source_view(
    nodes: list[dict[str, Any]], docs: Mapping[int, dict[str, Any]], now_ms: int
) -> dict[str, Any]:
    """The source region: leader, term, head, each node's health, GC and the upload sweeper.

    `docs` are the raw status documents by node id; GC and sweeper figures are the leader's
    (only the leader deletes), else those of any node that answered."""
    leader = pick_leader(nodes)
    answered = [n for n in nodes if n["answered"]]
    lead_doc = docs.get(leader) if leader is not None else None
    basis = lead_doc or (docs[answered[0]["node"]] if answered else {})
    head_version = (
        lead_doc.get("applied_version")
        if lead_doc
        else max((n["applied_version"] or 0 for n in answered), default=None)
    )
    head_ts = basis.get("head_ts")
    problems: list[tuple[str, str]] = []
    for n in nodes:
        n["behind"] = (
            head_version - n["applied_version"]
            if head_version is not None and n["applied_version"] is not None
            else None
        )
        if not n["reachable"]:
            n["level"] = WARN
            problems.append((WARN, f"source node {n['node']} unreachable"))
        elif not n["answered"]:
            n["level"] = BAD
            problems.append((BAD, f"source node {n['node']}: {n['error']}"))
        elif n["segment_error"]:
            n["level"] = BAD
            problems.append((BAD, f"source node {n['node']}: {n['segment_error']}"))
        else:
            n["level"] = OK
    if not [n for n in nodes if n["reachable"]]:  # one line, not one per node
        problems = [(BAD, f"no source node answers ({len(nodes)} of {len(nodes)} unreachable)")]
    elif not answered:
        problems.append((BAD, "no source node answers"))
    elif leader is None:
        problems.append((BAD, "the source has no leader (an election, or no quorum)"))
    elif lead_doc is not None and lead_doc.get("has_quorum") is False:
        problems.append((BAD, f"leader node {leader} has no quorum"))
    gc = basis.get("gc")
    held_by = (gc or {}).get("held_by") or {}
    for name, hold in sorted(held_by.items()):
        age = float(hold.get("age_s") or 0)
        if age >= GC_HOLD_WARN_S:
            problems.append((WARN, f"mirror {name} holds the source's GC back ({_age(age)})"))
    for reg in basis.get("registrations_never_acked") or []:
        problems.append((WARN, f"registration {reg['name']} never acked"))
    sweeper = basis.get("sweeper")
    if sweeper and sweeper.get("last_error"):
        problems.append((WARN, f"upload sweeper: {sweeper['last_error']}"))
    return {
        "leader": leader,
        "term": lead_doc.get("term")
        if lead_doc
        else max((n["term"] or 0 for n in answered), default=None),
        "has_quorum": lead_doc.get("has_quorum") if lead_doc else None,
        "head_version": head_version,
        "head_ts": head_ts,
        "head_age_s": round(max(0, now_ms - head_ts) / 1000, 3) if head_ts else None,
        "nodes": nodes,
        "gc": gc,
        "sweeper": sweeper,
        "registrations_never_acked": basis.get("registrations_never_acked") or [],
        "level": worst(level for level, _ in problems),
        "problems": [text for _, text in problems],
    }


# --- a mirror region --------------------------------------------------------------------------


def mirror_view(
    name: str,
    api: str,
    window_s: float,
    answer: Answer,
    last_seen: Answer | None,
) -> dict[str, Any]:
    """One mirror region: its document's fields (null when absent), reachability, level and
    problems. `last_seen` is the last answer that carried a document (for "unreachable since,
    last at version N")."""
    doc = answer.document
    fields = {k: (doc or {}).get(k) for k in MIRROR_FIELDS}
    if doc is not None and fields["window_s"] is None:
        fields["window_s"] = window_s
    view: dict[str, Any] = {
        "name": name,
        "api": api,
        "reachable": answer.reachable,
        "answered": doc is not None,
        "http_status": answer.http_status,
        "error": answer.error,
        "config_window_s": window_s,
        "last_seen_ms": last_seen.at_ms if last_seen else None,
        "last_seen_version": (last_seen.document or {}).get("applied_version")
        if last_seen
        else None,
        **fields,
    }
    problems = mirror_problems(view)
    view["level"] = worst(level for level, _ in problems)
    view["problems"] = [text for _, text in problems]
    view["over_window"] = _over_window(view)
    return view


def _over_window(view: Mapping[str, Any]) -> bool:
    lag, window = view.get("lag_seconds"), view.get("window_s")
    return lag is not None and window is not None and lag > window


def mirror_problems(view: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with one region, worst first within its kind."""
    name = view["name"]
    if not view["reachable"]:
        return [(BAD, f"{name} unreachable: {view['error']}")]
    if not view["answered"]:
        return [(BAD, f"{name}: {view['error']}")]
    out: list[tuple[str, str]] = []
    state = view["state"]
    if state == "degraded":
        out.append((BAD, f"{name} degraded: {view['degraded_reason'] or 'replica unavailable'}"))
    elif state == "disconnected":
        out.append((BAD, f"{name} cannot reach any source node"))
    if _over_window(view):
        out.append(
            (
                BAD,
                f"{name} is {view['lag_seconds']:.1f} s behind, over its {view['window_s']:g} s"
                " window",
            )
        )
    elif state in ("syncing", "resyncing", "starting"):
        out.append((WARN, f"{name} is {state}"))
    if view["blocks_failed"]:
        out.append((BAD, f"{name}: {view['blocks_failed']} blocks failed"))
    if view["paused"]:
        out.append((WARN, f"{name}: replication paused"))
    elif view["replicator_state"] == "holding":
        why = view["replicator_hold_reason"] or "store or database trouble"
        out.append((WARN, f"{name}: replicator holding ({why})"))
    hold = view["gc_held_back"]
    if hold and float(hold.get("age_s") or 0) >= GC_HOLD_WARN_S:
        out.append((WARN, f"{name} holds the source's GC back ({_age(float(hold['age_s']))})"))
    return out


def overall(source: Mapping[str, Any], mirrors: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict at the top of the page: the worst level and every problem, source first."""
    problems = list(source["problems"])
    for m in mirrors:
        problems += m["problems"]
    level = worst([source["level"], *(m["level"] for m in mirrors)])
    if problems:
        headline = problems[0] if len(problems) == 1 else f"{len(problems)} problems"
    elif not mirrors:
        headline = "source healthy; no mirror regions"
    else:
        headline = (
            "the mirror region is following within its window"
            if len(mirrors) == 1
            else f"all {len(mirrors)} mirror regions following within their windows"
        )
    return {"level": level, "headline": headline, "problems": problems}
