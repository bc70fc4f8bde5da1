"""The replicated state machine: namespace, changelog head, mirror registry, request results.

It is a pysyncobj consumer: attributes assigned after `SyncObjConsumer.__init__` are the
replicated state (snapshotted by pysyncobj's compaction); those assigned before are local
plumbing (locks, callbacks, this node's configured dedup window) and never leave the process.

Determinism: every input (ops, their arguments, the proposed `ts`, the dedup window) arrives
in the command, so every node derives identical records. `ts` is clamped to be non-decreasing
across the log.

Requests are transactions. A request's ops are planned and applied in order inside one
namespace transaction (op k sees what ops 1..k-1 did); if any op fails, everything is rolled
back: the namespace, the mirror registry, the version, the in-state tail, the emitted records.
A committed request yields one record per op, the last one marked `ends_request`
(volume/records.py), so a mirror can apply it whole.

Answers, per request (an `Outcome`):
- committed: per op {"ok": true, "version", "effect"};
- failed: per op {"ok": false, "error"}; the op that failed carries its own error, every other
  op carries "not_applied": true and an ECANCELED error naming the failed op;
- `Replayed(first_version, count)`: a retry of a request that committed; its answer is
  rebuilt from its records (`results_from_records`) by whoever holds them: the in-state tail,
  or the node's segment log once the tail has moved on. A retry of a failed request gets the
  failure answer again. Either way the retry applies nothing;
- `Refused(error)`: not applied, now or ever: a malformed request id, or one older than the
  dedup window (RequestExpiredError; see changelog/raft/dedup.py for the window's contract).
"""

from __future__ import annotations

import errno
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from pysyncobj import SyncObjConsumer, replicated

from changelog.namespace import Namespace
from changelog.raft.dedup import Committed, Failed, RequestMemory
from volume.config import DEFAULT_DEDUP_WINDOW_S
from volume.errors import (
    BadRequestError,
    ChangelogError,
    FsError,
    MirrorRemovedError,
    RequestExpiredError,
)
from volume.records import (
    MAX_RECORDS_PER_REQUEST,
    MIRROR_OPS,
    MIRROR_REGISTER,
    MIRROR_REMOVE,
    TICK,
    Record,
)
from volume.request_ids import MalformedRequestIdError, parse_request_id

log = structlog.get_logger(__name__)

RECENT_RECORDS = 20_000  # the in-state tail of the changelog, to refill lost segment bytes


@dataclass(frozen=True, slots=True)
class Replayed:
    """A retry of a committed request: its answer is records first_version.. (count of them)."""

    first_version: int
    count: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The request was not applied (and will not be under this id): `error` says why."""

    error: ChangelogError


Outcome = list[dict[str, Any]] | Replayed | Refused


def error_result(exc: FsError) -> dict[str, Any]:
    return {"ok": False, "error": exc.to_wire()}


def failure_results(failed: Failed) -> list[dict[str, Any]]:
    """The answer of a request whose op `failed.index` failed: nothing of it was applied."""
    skipped = FsError(
        errno.ECANCELED,
        f"not applied: op {failed.index} of this request failed, "
        f"so none of its {failed.count} ops was applied",
    ).to_wire()
    return [
        {"ok": False, "error": failed.error}
        if i == failed.index
        else {"ok": False, "not_applied": True, "error": skipped}
        for i in range(failed.count)
    ]


def results_from_records(records: Iterable[Record]) -> list[dict[str, Any]]:
    """The answer of a committed request, from its records (first answer and retries alike)."""
    return [{"ok": True, "version": r.version, "effect": r.effect} for r in records]


class MetaState(SyncObjConsumer):  # type: ignore[misc]
    """All replicated state of a source node. Mutated only by the Raft thread, under `lock`."""

    def __init__(
        self,
        on_records: Callable[[list[Record]], None],
        *,
        dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S,
    ) -> None:
        # Local plumbing first: SyncObjConsumer excludes attributes that exist before its init.
        self.lock = threading.RLock()
        self._on_records = on_records
        # This node's configured window; it reaches the state only through the commands this
        # node proposes, so a node with another setting cannot make the states diverge.
        self.dedup_window_ms = int(dedup_window_s * 1000)
        super().__init__()
        # Replicated state from here on.
        self.ns = Namespace()
        self.version = 0
        self.last_ts = 0
        self.recent: deque[Record] = deque(maxlen=RECENT_RECORDS)
        self.mirrors: dict[str, dict[str, Any]] = {}
        self.requests = RequestMemory()

    @replicated  # type: ignore[misc,untyped-decorator]
    def apply_requests(
        self,
        requests: list[tuple[str | None, list[dict[str, Any]]]],
        ts: int,
        dedup_window_ms: int = int(DEFAULT_DEDUP_WINDOW_S * 1000),
    ) -> list[Outcome]:
        """Apply client requests in order (one Raft entry carries many: group commit), each
        all or nothing; returns one Outcome per request (module docstring). A request_id of
        None (ticks, internal callers) is not remembered. Never raises (an exception here would
        stop the Raft thread)."""
        emitted: list[Record] = []
        with self.lock:
            now = max(ts, self.last_ts)
            self.requests.prune(now)
            out = [
                self._apply_request(rid, ops, now, dedup_window_ms, emitted)
                for rid, ops in requests
            ]
        if emitted:
            self._on_records(emitted)
        return out

    @replicated  # type: ignore[misc,untyped-decorator]
    def read_barrier(self) -> int:
        """A command with no effect: when it commits, the leader that proposed it was the leader
        at that point of the log, and every write committed before the read began is applied
        (the read index of Raft's thesis, section 6.4). Returns the version at that point."""
        return int(self.version)

    def _apply_request(
        self,
        request_id: str | None,
        ops: list[dict[str, Any]],
        now: int,
        window_ms: int,
        emitted: list[Record],
    ) -> Outcome:
        try:
            key: int | None = None
            created = now
            if request_id is not None:
                try:
                    created, key = parse_request_id(request_id)
                except MalformedRequestIdError as exc:
                    return Refused(BadRequestError(str(exc)))
                known = self.requests.get(key)
                if isinstance(known, Committed):
                    return Replayed(known.first_version, known.count)
                if isinstance(known, Failed):
                    return failure_results(known)
                refusal = _too_old_or_new(request_id, created, now, window_ms)
                if refusal is not None:
                    return refusal
            if not isinstance(ops, list) or not 0 < len(ops) <= MAX_RECORDS_PER_REQUEST:
                return Refused(BadRequestError(f"a request holds 1..{MAX_RECORDS_PER_REQUEST} ops"))
            ran = self._run(ops, now)
            memo: Committed | Failed
            if isinstance(ran, Failed):
                memo, results = ran, failure_results(ran)
            else:
                emitted.extend(ran)
                memo, results = Committed(ran[0].version, len(ran)), results_from_records(ran)
            if key is not None:
                self.requests.remember(key, memo, max(now, created) + window_ms)
            return results
        except Exception as exc:  # a bug must not take the node down
            log.exception("state.request_failed", request_id=request_id)
            return Refused(ChangelogError(f"internal error applying a request: {exc!r}"))

    def _run(self, ops: list[dict[str, Any]], now: int) -> list[Record] | Failed:
        """Plan and apply `ops` in one transaction; their records, or which op failed."""
        mirrors = None
        if any(isinstance(op, dict) and op.get("op") in MIRROR_OPS for op in ops):
            # The registry is not in the namespace's transaction: keep a copy (it is small).
            mirrors = {name: dict(entry) for name, entry in self.mirrors.items()}
        effects: list[tuple[str, dict[str, Any]]] = []
        index = 0
        try:
            with self.ns.transaction():
                for index, op in enumerate(ops):  # noqa: B007 - `index` names the failed op
                    name, args = _parse_op(op)
                    if name == TICK:
                        effect: dict[str, Any] = {}
                    elif name in MIRROR_OPS:
                        if len(ops) > 1:  # _mirror_op takes its record to be the next version
                            raise FsError(errno.EINVAL, f"{name} must be a request of its own")
                        effect = self._mirror_op(name, args)
                    else:
                        effect = self.ns.apply(name, args, now)
                    effects.append((name, effect))
        except Exception as exc:  # every failure is an answer, never a crash
            if mirrors is not None:
                self.mirrors = mirrors
            if not isinstance(exc, FsError):
                shown = repr(ops[index])[:200]
                log.exception("state.op_failed", op=shown)
                exc = FsError(errno.EINVAL, f"internal error applying {shown}: {exc!r}")
            return Failed(len(ops), index, exc.to_wire())
        last = len(effects) - 1
        return [
            self._emit(name, effect, now, ends_request=i == last)
            for i, (name, effect) in enumerate(effects)
        ]

    def _emit(self, op: str, effect: dict[str, Any], ts: int, *, ends_request: bool) -> Record:
        self.version += 1
        self.last_ts = max(ts, self.last_ts)
        record = Record(self.version, self.last_ts, op, effect, ends_request)
        self.recent.append(record)
        return record

    def _mirror_op(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Register, ack or remove a mirror. An entry records when it was registered and last
        acked (`registered_ms`, `acked_ms`: the source clock of the record before, `last_ts`,
        since the op itself carries no time; ticks keep it within a tick interval), so a
        registration that never acked (a `mirror create` that died) can be told and aged.
        Raises MirrorRemovedError for an ack or remove of a name that is not registered."""
        mirror = args.get("name")
        if not isinstance(mirror, str) or not mirror:
            raise FsError(22, "mirror op needs a non-empty 'name'")
        if name == MIRROR_REGISTER:
            existed = mirror in self.mirrors
            if not existed:
                # The mirror needs everything after the snapshot it is about to load.
                self.mirrors[mirror] = {
                    "registered": self.version + 1,
                    "acked": self.version,
                    "registered_ms": self.last_ts,
                    "acked_ms": None,
                }
            return {"name": mirror, "existed": existed, **self.mirrors[mirror]}
        if mirror not in self.mirrors:
            raise MirrorRemovedError(mirror)
        if name == MIRROR_REMOVE:
            del self.mirrors[mirror]
            return {"name": mirror}
        version = args.get("version")
        if not isinstance(version, int) or not 0 <= version <= self.version:
            raise FsError(22, f"ack version must be 0..{self.version}, got {version!r}")
        entry = self.mirrors[mirror]
        entry["acked"] = max(entry["acked"], version)
        entry["acked_ms"] = self.last_ts
        return {"name": mirror, "acked": entry["acked"]}

    # --- reads (any thread, under the lock) ---

    def retention_floor(self) -> int | None:
        """The lowest version some registered mirror still needs; None if no mirror."""
        with self.lock:
            if not self.mirrors:
                return None
            return min(int(m["acked"]) + 1 for m in self.mirrors.values())

    def mirror_table(self) -> dict[str, dict[str, Any]]:
        """Every registration; `never_acked` marks one that has not acked since it registered
        (a mirror whose `create` did not finish, or whose daemon never ran)."""
        with self.lock:
            table = {k: dict(v) for k, v in self.mirrors.items()}
        for entry in table.values():
            entry.setdefault("registered_ms", None)  # registered before entries had times
            entry.setdefault("acked_ms", None)
            acked_since = entry["acked_ms"] is not None or entry["acked"] >= entry["registered"]
            entry["never_acked"] = not acked_since
        return table


def _too_old_or_new(request_id: str, created: int, now: int, window_ms: int) -> Refused | None:
    if created < now - window_ms:
        return Refused(
            RequestExpiredError(
                f"request {request_id} was created {(now - created) / 1000:.0f} s ago, longer "
                f"than the dedup window ({window_ms / 1000:.0f} s): it may have been applied "
                "already and forgotten, so it is not applied again",
                request_id=request_id,
            )
        )
    if created > now + window_ms:
        return Refused(
            BadRequestError(
                f"request {request_id} was created {(created - now) / 1000:.0f} s after the "
                f"source's clock, beyond the dedup window ({window_ms / 1000:.0f} s)",
                hint="the client's clock is wrong: fix it (NTP) and send a new request",
            )
        )
    return None


def _parse_op(op: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(op, dict) or not isinstance(op.get("op"), str):
        raise FsError(22, "each op must be an object with a string 'op'")
    args = op.get("args", {})
    if not isinstance(args, dict):
        raise FsError(22, f"op {op['op']!r}: 'args' must be an object")
    return op["op"], args
