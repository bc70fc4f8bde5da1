"""The consistency claims of reads through a region (issue 10), checked on a recorded history.

A randomised workload (writers at the source and in mirror regions, readers with windows and
policies) records every call with its wall-clock start and return; `check` then says which
claims a history breaks, each violation one readable line:

- **Bounded staleness**: a read that started at `t` with window `W` and is not flagged stale
  reflects every write that returned before `t - W` (its version is at least theirs).
- **Monotonic sessions**: within a session, a read's version is never below a version the
  session saw (read or wrote) before the read started.
- **Writes from a region are visible there**: a write from a mirror region that returned with
  the local replica showing it (`settled`) is seen by every read in that region started after.
- **One version's bytes**: a read of a path at version `v` returns exactly the bytes of the
  last write to that path at or below `v` (only the workload's writers write those paths, and
  each write is recorded once it is known to have committed).

Times are `time.time()` on the host that runs the workload; the source and the readers are
assumed to share its clock to NTP level (as the client assumes: fallback/consistency.py).
`tolerance_s` allows for a known skew on top.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

SOURCE = "source"


@dataclass(frozen=True)
class Write:
    session: str
    region: str
    path: str
    version: int
    data: bytes
    started: float
    returned: float
    settled: bool = False  # a mirror region's replica showed `version` when the call returned


@dataclass(frozen=True)
class Read:
    session: str
    region: str
    path: str
    window_s: float
    policy: str
    started: float
    returned: float
    version: int | None = None  # None: the read failed (`error`)
    data: bytes | None = None
    stale: bool = False
    error: str | None = None


@dataclass
class History:
    """Calls in the order each session made them (sessions are sequential)."""

    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    order: list[Write | Read] = field(default_factory=list)

    def wrote(self, write: Write) -> None:
        self.writes.append(write)
        self.order.append(write)

    def read(self, read: Read) -> None:
        self.reads.append(read)
        self.order.append(read)


def check(history: History, *, tolerance_s: float = 0.0) -> list[str]:
    """Every violation of the claims above, one line each; [] for a consistent history."""
    return [
        *_bounded(history, tolerance_s),
        *_monotonic(history),
        *_region_writes_visible(history, tolerance_s),
        *_bytes(history),
    ]


def _bounded(history: History, tolerance_s: float) -> list[str]:
    by_return = sorted(history.writes, key=lambda w: w.returned)
    returns = [w.returned for w in by_return]
    best: list[Write] = []  # best[i]: the highest-versioned write among by_return[: i + 1]
    for w in by_return:
        best.append(w if not best or w.version > best[-1].version else best[-1])
    out: list[str] = []
    for r in history.reads:
        if r.version is None or r.stale:
            continue
        n = bisect.bisect_left(returns, r.started - r.window_s - tolerance_s)
        if n and best[n - 1].version > r.version:
            w = best[n - 1]
            out.append(
                f"stale read: {r.session} read {r.path} at version {r.version} "
                f"(window {r.window_s} s, policy {r.policy}, started {r.started:.3f}), but "
                f"{w.session} wrote version {w.version} at {w.returned:.3f}, "
                f"{r.started - w.returned:.3f} s before"
            )
    return out


def _monotonic(history: History) -> list[str]:
    seen: dict[str, tuple[int, str]] = {}
    out: list[str] = []
    for event in history.order:
        version = event.version
        if version is None:
            continue
        before, what = seen.get(event.session, (0, "nothing"))
        if isinstance(event, Read) and version < before:
            out.append(
                f"back in time: {event.session} read {event.path} at version {version} "
                f"(policy {event.policy}, stale={event.stale}) after {what} (version {before})"
            )
        if version > before:
            kind = "reading" if isinstance(event, Read) else "writing"
            seen[event.session] = (version, f"{kind} {event.path}")
    return out


def _region_writes_visible(history: History, tolerance_s: float) -> list[str]:
    out: list[str] = []
    settled = [w for w in history.writes if w.region != SOURCE and w.settled]
    for r in history.reads:
        if r.version is None:
            continue
        for w in settled:
            seen_by_then = w.region == r.region and w.returned < r.started - tolerance_s
            if seen_by_then and w.version > r.version:
                out.append(
                    f"region write not visible: {w.session} wrote {w.path} version "
                    f"{w.version} in {w.region} at {w.returned:.3f}; {r.session} read "
                    f"version {r.version} there, started {r.started:.3f}"
                )
                break
    return out


def _bytes(history: History) -> list[str]:
    per_path: dict[str, list[Write]] = defaultdict(list)
    for w in history.writes:
        per_path[w.path].append(w)
    for writes in per_path.values():
        writes.sort(key=lambda w: w.version)
    out: list[str] = []
    for r in history.reads:
        if r.version is None:
            continue
        writes = per_path.get(r.path, [])
        i = bisect.bisect_right([w.version for w in writes], r.version)
        if i == 0:
            out.append(f"read of nothing: {r.session} read {r.path} at version {r.version}")
            continue
        if writes[i - 1].data != r.data:
            out.append(
                f"wrong bytes: {r.session} read {r.path} at version {r.version}, expected "
                f"{writes[i - 1].session}'s write of version {writes[i - 1].version}"
            )
    return out
