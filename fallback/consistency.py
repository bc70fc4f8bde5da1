"""Consistency windows: how stale a read may be, and what happens when the replica is staler.

A read carries a `ReadBound`; a `ReadGate` runs the metadata call against a view fresh enough
for it (the region's replica, or the source under the `source` policy) and says whether the
answer is stale (`serve` policy). The client without a gate (the source region) reads the
source and is never stale.

`ConsistencyGate` is the mirror region's gate. A read that starts at local time `now` with
window `W` must reflect every record the source stamped at or before `now - W` (source clock):
the replica serves it when it has applied a record stamped after that, and the session's
`min_version` (what it already saw or wrote: reads never go back in time). Otherwise the gate
waits for the replica (`ReplicaProgress.wait`, at most `wait_s`), then applies the
policy: `source` runs the call on the source view (with the same `min_version`, so still
monotonic), `error` raises StaleMirrorError, `serve` answers from the replica flagged stale
(when the replica is behind the session itself, serving it would go back in time: that is a
StaleMirrorError too).

Time. Staleness rests on the source's clock (records carry the leader's ms timestamp); the
gate knows only its local clock and the region's skew estimate (`source_clock_skew_ms`, a
lower bound of how far the source's clock runs ahead: see mirror/watermark.py). It measures
staleness as `local now + max(0, skew) - applied_ts`: a proven-ahead source clock is added, a
behind one never subtracted. The assumption is NTP-level skew: the staleness measured is never
below the true one by more than the smaller of the source clock's lead and the one-way delay
(milliseconds); everything else errs on the safe side (waits, not stale reads).

The source commits a tick every `tick_interval_s` (0.2 s by default) and ticks move the
watermark, so a quiet replica that follows shows a staleness of about one tick interval plus
the stream's lag, never 0: a window below that makes every read wait for the next tick
(correct, one tick slower). The default window (volume/config.py DEFAULT_WINDOW_S, 5 s) and
wait (DEFAULT_STALE_WAIT_S) are well above it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

import structlog

from fallback.errors import ReplicaBehindError, StaleMirrorError
from fallback.view import MetadataView
from volume.errors import FsError

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_POLICY = "source"
# How long a read over its window waits for the replica before its policy: five default tick
# intervals. A following replica catches up within one tick plus the stream's lag; one that
# has not by then is not following, and waiting longer only delays the answer.
DEFAULT_STALE_WAIT_S = 1.0
# How long a write from this region waits for the local replica to show it before returning
# anyway (with a warning): the write is committed either way.
DEFAULT_SETTLE_TIMEOUT_S = 10.0


class StalePolicy(StrEnum):
    SOURCE = "source"  # resolve against the source region
    ERROR = "error"  # raise StaleMirrorError
    SERVE = "serve"  # serve the replica anyway, flagged stale


class StaleCounters(Protocol):
    """The gate's outcome counters (the region's status and /metrics names). The client's
    read counters (fallback/fetch.py ReadCounters) carry them too, so they reach the region
    with the rest."""

    stale_waits: int  # reads that waited for the replica
    stale_served: int  # answered from the replica, flagged stale (`serve`)
    stale_errors: int  # StaleMirrorError raised (`error`, or `serve` behind the session)
    stale_source: int  # answered by the source (`source`)


@dataclass
class GateCounters:
    """StaleCounters of a gate on its own."""

    stale_waits: int = 0
    stale_served: int = 0
    stale_errors: int = 0
    stale_source: int = 0


@dataclass(frozen=True)
class ReadBound:
    """Per-call overrides; None takes the client's default (and that, the region's)."""

    window_s: float | None = None
    policy: StalePolicy | None = None


MetaCall = Callable[[MetadataView, int], Awaitable[T]]


class ReadGate(Protocol):
    async def run(
        self, call: MetaCall[T], *, min_version: int, bound: ReadBound | None
    ) -> tuple[T, bool]:
        """`call(view, min_version)` against a view fresh enough for `bound`; (answer, stale)."""
        ...

    async def settle(self, version: int) -> None:
        """Return once this region's readers see `version` (a write from here committed it)."""
        ...


class ReplicaState(Protocol):
    """Where a replica stands. `applied_ts_ms` is the source's timestamp of the last record
    applied (source clock); `source_clock_skew_ms` a lower bound of how far the source's clock
    runs ahead of this host's (None: not measured yet)."""

    @property
    def applied_version(self) -> int: ...

    @property
    def applied_ts_ms(self) -> int: ...

    @property
    def source_clock_skew_ms(self) -> int | None: ...


def source_now_ms(state: ReplicaState, local_now_ms: int) -> int:
    """The source's clock now, as far as it can be proven: never later than the truth by more
    than NTP-level skew (see the module docstring)."""
    return local_now_ms + max(0, state.source_clock_skew_ms or 0)


def staleness_s(state: ReplicaState, local_now_ms: int) -> float:
    return max(0, source_now_ms(state, local_now_ms) - state.applied_ts_ms) / 1000


def is_fresh(state: ReplicaState, *, version: int, ts_ms: int) -> bool:
    """Applied `version`, and every record the source stamped before `ts_ms` (ts is
    non-decreasing in version order: a record stamped at or after it is applied)."""
    return state.applied_version >= version and state.applied_ts_ms >= ts_ms


class ReplicaProgress(Protocol):
    """How far the region's replica has applied the changelog (implemented in mirror/)."""

    async def current(self) -> ReplicaState: ...

    async def wait(self, *, version: int = 0, ts_ms: int = 0, timeout_s: float) -> ReplicaState:
        """The state once `is_fresh(state, version=, ts_ms=)`, or the latest at the deadline (a
        timeout is an answer, not an error). Raises only if the replica cannot be read."""
        ...

    async def aclose(self) -> None: ...


def _replica_unavailable(exc: BaseException) -> bool:
    """A temporary failure to read the replica (its database), not an answer about the volume
    (an FsError) and not a replica merely behind (the gate waits for that itself)."""
    if isinstance(exc, FsError | ReplicaBehindError | StaleMirrorError):
        return False
    return bool(getattr(exc, "temporary", False)) or isinstance(exc, ConnectionError | OSError)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ConsistencyGate:
    """The ReadGate of a mirror region: replica within the window, else wait, else policy.

    `counters` holds the outcome counters; pass the client's read counters to have them
    reported to the region with the rest. Safe for concurrent reads of one client.
    """

    def __init__(
        self,
        region: str,
        replica_view: MetadataView,
        source_view: MetadataView,
        progress: ReplicaProgress,
        *,
        window_s: float,
        policy: StalePolicy | str = DEFAULT_POLICY,
        wait_s: float = DEFAULT_STALE_WAIT_S,
        settle_timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S,
        counters: StaleCounters | None = None,
    ) -> None:
        if window_s < 0 or wait_s < 0 or settle_timeout_s < 0:
            raise ValueError(
                f"window_s, wait_s and settle_timeout_s must be >= 0, not "
                f"{window_s}, {wait_s}, {settle_timeout_s}"
            )
        self.region = region
        self.replica = replica_view
        self.source = source_view
        self.progress = progress
        self.window_s = window_s
        self.policy = StalePolicy(policy)
        self.wait_s = wait_s
        self.settle_timeout_s = settle_timeout_s
        self.counters: StaleCounters = GateCounters() if counters is None else counters
        # The applied version of a replica that made no progress during a whole wait: while
        # it stays there (its follower stopped, or cut off), reads apply their policy at once
        # instead of each waiting wait_s. A following replica moves every tick.
        self._stuck_at: int | None = None
        self._gave_up_at = 0  # the highest version a settle waited for in vain (and warned)

    def _note_progress(self, before: int, state: ReplicaState) -> None:
        """After a wait: stuck if the replica did not move at all, else not."""
        self._stuck_at = before if state.applied_version == before else None

    def _bound(self, bound: ReadBound | None) -> tuple[float, StalePolicy]:
        window_s = self.window_s if bound is None or bound.window_s is None else bound.window_s
        policy = self.policy if bound is None or bound.policy is None else bound.policy
        if window_s < 0:
            raise ValueError(f"a read's window_s must be >= 0, not {window_s}")
        return window_s, StalePolicy(policy)

    async def run(
        self, call: MetaCall[T], *, min_version: int, bound: ReadBound | None
    ) -> tuple[T, bool]:
        window_s, policy = self._bound(bound)
        try:
            return await self._run(call, min_version, window_s, policy)
        except Exception as exc:
            # The replica's PostgreSQL does not answer (a temporary error of mirror/): under
            # `source` that is one more reason to ask the source; otherwise it is the error.
            if not _replica_unavailable(exc) or policy is not StalePolicy.SOURCE:
                raise
            log.warning("mirror.replica_unavailable", region=self.region, error=str(exc))
            self.counters.stale_source += 1
            return await call(self.source, min_version), False

    async def _run(
        self, call: MetaCall[T], min_version: int, window_s: float, policy: StalePolicy
    ) -> tuple[T, bool]:
        state = await self.progress.current()
        # +1: a record stamped exactly at now - W must be in too, and the replica is known to
        # hold every record stamped before its applied_ts, not all of those stamped at it.
        want_ts = source_now_ms(state, now_ms()) - round(window_s * 1000) + 1
        if is_fresh(state, version=min_version, ts_ms=want_ts):
            try:
                return await call(self.replica, min_version), False
            except ReplicaBehindError:
                pass  # a replica reloaded under us (resync): wait for it as for any other
        if self._stuck_at != state.applied_version:
            self.counters.stale_waits += 1
            before = state.applied_version
            state = await self.progress.wait(
                version=min_version, ts_ms=want_ts, timeout_s=self.wait_s
            )
            self._note_progress(before, state)
            if is_fresh(state, version=min_version, ts_ms=want_ts):
                try:
                    return await call(self.replica, min_version), False
                except ReplicaBehindError:
                    pass
        return await self._apply_policy(policy, call, min_version, state, window_s)

    async def _apply_policy(
        self,
        policy: StalePolicy,
        call: MetaCall[T],
        min_version: int,
        state: ReplicaState,
        window_s: float,
    ) -> tuple[T, bool]:
        if policy is StalePolicy.SOURCE:
            self.counters.stale_source += 1
            return await call(self.source, min_version), False
        if policy is StalePolicy.SERVE and state.applied_version >= min_version:
            try:
                answer = await call(self.replica, min_version)
            except ReplicaBehindError:
                pass  # only if the replica was reloaded meanwhile: an error, below
            else:
                self.counters.stale_served += 1
                return answer, True
        self.counters.stale_errors += 1
        raise StaleMirrorError(
            self.region,
            staleness_s=staleness_s(state, now_ms()),
            bound_s=window_s,
            applied=state.applied_version,
            wanted=min_version if state.applied_version < min_version else None,
        )

    async def settle(self, version: int) -> None:
        """Return once the replica shows `version`, or after `settle_timeout_s` with a warning
        (the write is committed; readers elsewhere in the region see it once the follower
        catches up, and this session's own reads wait for it in `run`). While the replica is
        stuck (no progress during a whole wait: its follower stopped), it waits only `wait_s`:
        a script of many writes is not held `settle_timeout_s` by each."""
        try:
            await self._settle(version)
        except Exception as exc:
            if not _replica_unavailable(exc):
                raise
            # The write is committed; only its visibility here cannot be checked now.
            log.warning(
                "mirror.write_not_confirmed",
                region=self.region,
                version=version,
                error=str(exc),
                hint="the write is committed at the source; the region's replica database "
                "does not answer, so whether readers here see it yet is unknown",
            )

    async def _settle(self, version: int) -> None:
        started = time.monotonic()
        timeout_s = self.settle_timeout_s
        before = (await self.progress.current()).applied_version
        if before >= version or version <= self._gave_up_at:
            return  # shown, or already waited for in vain (a put settles before its marks)
        if self._stuck_at == before:
            timeout_s = min(timeout_s, self.wait_s)  # its follower is stopped: say so sooner
        state = await self.progress.wait(version=version, timeout_s=timeout_s)
        self._note_progress(before, state)
        if state.applied_version < version:
            self._gave_up_at = max(self._gave_up_at, version)
            log.warning(
                "mirror.write_not_visible_yet",
                region=self.region,
                version=version,
                applied_version=state.applied_version,
                waited_s=round(time.monotonic() - started, 3),
                hint="the write is committed at the source; other readers in this region "
                "see it once the mirror's follower catches up (is its daemon running?)",
            )
