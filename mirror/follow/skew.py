"""How far the source's clock runs ahead of this host's, from the records the follower receives.

Staleness is measured on the source's clock (a record's `ts` is the leader's ms timestamp), but
a reader in the region has only its own. Every record was stamped before it was received, so
`ts - local receipt time` is, for each record, a lower bound of `source clock - local clock`
(the truth minus that record's one-way delay); the largest over the last minute is the
tightest. Ticks (every `tick_interval_s`) keep samples coming while the volume is quiet; old
records of a catch-up give very low samples, which a maximum ignores. The window lets the
estimate follow a clock step or a new leader whose clock differs.

The estimate is an upper bound of the delay-blurred truth, not the truth: with symmetric NTP
skew of a few ms and loopback or LAN delays it is within a few ms; across regions the one-way
delay hides in it. Readers (fallback/consistency.py) only ever add a positive estimate, so the
blur errs on the side of a reader waiting, never of a stale read.
"""

from __future__ import annotations

import time
from collections import deque

DEFAULT_BUCKET_S = 10.0
DEFAULT_BUCKETS = 6  # the estimate covers the last minute of records


class SkewEstimator:
    """Max of `ts - receipt` over a sliding window, kept as per-bucket maxima (O(1) memory)."""

    def __init__(self, *, bucket_s: float = DEFAULT_BUCKET_S, buckets: int = DEFAULT_BUCKETS):
        self.bucket_s = bucket_s
        self._buckets: deque[tuple[float, int]] = deque(maxlen=buckets)  # (start, max sample)

    def observe(
        self, ts_ms: int, *, received_ms: int | None = None, at: float | None = None
    ) -> None:
        """One record stamped `ts_ms` (source clock) received now (`received_ms`, local ms;
        `at`, monotonic s: for tests)."""
        received = time.time_ns() // 1_000_000 if received_ms is None else received_ms
        mono = time.monotonic() if at is None else at
        sample = ts_ms - received
        if self._buckets and mono - self._buckets[-1][0] < self.bucket_s:
            start, best = self._buckets[-1]
            self._buckets[-1] = (start, max(best, sample))
        else:
            self._buckets.append((mono, sample))

    def estimate_ms(self, *, at: float | None = None) -> int | None:
        """The lower bound of `source clock - local clock` in ms, None with no recent sample."""
        mono = time.monotonic() if at is None else at
        horizon = self.bucket_s * (self._buckets.maxlen or 1)
        recent = [best for start, best in self._buckets if mono - start < horizon]
        return max(recent) if recent else None
