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
  each write is recorded once it is known to have committed); bytes that are one version's
  up to some offset and another's after it are named a mix of versions.

And, at the end of a scenario run (scenarios/runner.py): every acknowledged write is visible
in every mirror (`check_visible`), every mirror's metadata equals the source's
(`check_metadata`), and no block was deleted before every mirror acknowledged the version
that made it garbage (`check_gc`, over a record of deletions and acknowledgements).

Times are `time.time()` on the host that runs the workload; the source and the readers are
assumed to share its clock to NTP level (as the client assumes: fallback/consistency.py).
`tolerance_s` allows for a known skew on top.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

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
        expected = writes[i - 1]
        if _digest(expected.data) == _digest(r.data or b""):
            continue
        mix = _mix(r.data or b"", writes)
        if mix is not None:
            a, b, at = mix
            out.append(
                f"mixed versions: {r.session} read {r.path} at version {r.version}: bytes "
                f"0..{at} are version {a.version}'s, the rest version {b.version}'s"
            )
        else:
            out.append(
                f"wrong bytes: {r.session} read {r.path} at version {r.version}, expected "
                f"{expected.session}'s write of version {expected.version}"
            )
    return out


@functools.lru_cache(maxsize=1024)
def _digest(data: bytes) -> bytes:
    """Cached: reads of one version share its bytes object (the runner dedupes them), and a
    bytes object caches its own hash, so a large file is hashed once, not once per read."""
    return hashlib.sha256(data).digest()


def _mix(data: bytes, writes: list[Write]) -> tuple[Write, Write, int] | None:
    """(a, b, n) when `data` is the first n bytes of version a and the rest of version b."""
    for a in writes:
        n = _common_prefix(data, a.data)
        if n == 0 or n == len(data):
            continue
        for b in writes:
            if b is not a and len(b.data) == len(data) and b.data[n:] == data[n:]:
                return a, b, n
    return None


def _common_prefix(x: bytes, y: bytes) -> int:
    n = min(len(x), len(y))
    lo, hi = 0, n  # the largest k with x[:k] == y[:k], by bisection on slices
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if x[:mid] == y[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


# -- end-of-run claims: every mirror caught up, equal to the source, blocks in place ------


def check_visible(history: History, finals: dict[str, dict[str, bytes | None]]) -> list[str]:
    """Every acknowledged write is eventually visible in every mirror: `finals[mirror][path]`
    is what a read of `path` in `mirror` returned after the run (None: no such file); it must
    be the last acknowledged write's bytes."""
    last: dict[str, Write] = {}
    for w in history.writes:
        if w.path not in last or w.version > last[w.path].version:
            last[w.path] = w
    out: list[str] = []
    for mirror, seen in sorted(finals.items()):
        for path, w in sorted(last.items()):
            got = seen.get(path)
            if got is None or _digest(got) != _digest(w.data):
                what = "no such file" if got is None else f"{len(got)} other bytes"
                out.append(
                    f"write not visible: {w.session}'s write of {path} (version {w.version}, "
                    f"acknowledged at {w.returned:.3f}) never reached mirror {mirror}: {what}"
                )
    return out


def check_metadata(source: dict[str, Any], mirrors: dict[str, dict[str, Any]]) -> list[str]:
    """Every mirror's namespace dump (mirror/audit.py) equals the source's."""
    out: list[str] = []
    for mirror, dump in sorted(mirrors.items()):
        missing = sorted(set(source) - set(dump))
        extra = sorted(set(dump) - set(source))
        differ = sorted(p for p in set(source) & set(dump) if source[p] != dump[p])
        for path in missing[:5]:
            out.append(f"metadata differs: mirror {mirror} lacks {path}")
        for path in extra[:5]:
            out.append(f"metadata differs: mirror {mirror} has {path}, the source does not")
        for path in differ[:5]:
            keys = sorted(k for k in source[path] if source[path].get(k) != dump[path].get(k))
            out.append(f"metadata differs: mirror {mirror}'s {path} ({', '.join(keys)})")
    return out


@dataclass(frozen=True)
class Deletion:
    """The source's GC deleted `key` at `at`; the block became garbage at `garbage_version`."""

    key: str
    garbage_version: int
    at: float


@dataclass(frozen=True)
class Ack:
    """At `at`, mirror `region` had acknowledged the source up to `version`."""

    region: str
    version: int
    at: float


def check_gc(deletions: list[Deletion], acks: list[Ack]) -> list[str]:
    """No block was deleted while a reader could still need it: a block that became garbage
    at version V may go only once every mirror acknowledged V (its replica no longer refers to
    the block, so no reader resolves to it)."""
    regions = sorted({a.region for a in acks})
    by_region: dict[str, list[Ack]] = {
        r: sorted((a for a in acks if a.region == r), key=lambda a: a.at) for r in regions
    }
    out: list[str] = []
    for d in deletions:
        for region in regions:
            before = [a.version for a in by_region[region] if a.at <= d.at]
            acked = max(before, default=0)
            if acked < d.garbage_version:
                out.append(
                    f"block deleted before a mirror's ack: {d.key} (garbage at version "
                    f"{d.garbage_version}) deleted at {d.at:.3f}, when mirror {region} had "
                    f"acknowledged only version {acked}"
                )
    return out
