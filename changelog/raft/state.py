"""The replicated state machine: namespace, changelog head, mirror registry, request results.

It is a pysyncobj consumer: attributes assigned after `SyncObjConsumer.__init__` are the
replicated state (snapshotted by pysyncobj's compaction); those assigned before are local
plumbing (locks, callbacks) and never leave the process.

Determinism: every input (ops, their arguments, the proposed `ts`) arrives in the command, so
every node derives identical records. `ts` is clamped to be non-decreasing across the log.

Exactly-once for clients: a batch carries a `request_id`; its results are remembered, so a client
that retries after a lost answer (a leader crash between commit and reply) gets the first
answer back instead of applying the batch twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from pysyncobj import SyncObjConsumer, replicated

from changelog.namespace import Namespace
from volume.errors import FsError
from volume.records import MIRROR_OPS, MIRROR_REGISTER, MIRROR_REMOVE, TICK, Record

RECENT_RECORDS = 20_000  # the in-state tail of the changelog, to refill lost segment bytes
REMEMBERED_REQUESTS = 20_000


def error_result(exc: FsError) -> dict[str, Any]:
    return {"ok": False, "error": exc.to_wire()}


class MetaState(SyncObjConsumer):  # type: ignore[misc]
    """All replicated state of a source node. Mutated only by the Raft thread, under `lock`."""

    def __init__(self, on_records: Callable[[list[Record]], None]) -> None:
        # Local plumbing first: SyncObjConsumer excludes attributes that exist before its init.
        self.lock = threading.RLock()
        self._on_records = on_records
        super().__init__()
        # Replicated state from here on.
        self.ns = Namespace()
        self.version = 0
        self.last_ts = 0
        self.recent: deque[Record] = deque(maxlen=RECENT_RECORDS)
        self.mirrors: dict[str, dict[str, Any]] = {}
        self.results: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    @replicated  # type: ignore[misc,untyped-decorator]
    def apply_requests(
        self, requests: list[tuple[str | None, list[dict[str, Any]]]], ts: int
    ) -> list[list[dict[str, Any]]]:
        """Apply client requests in order (one Raft entry carries many: group commit); each
        successful op is one record. Returns per request its per-op results. Never raises
        (an exception here would stop the Raft thread)."""
        emitted: list[Record] = []
        with self.lock:
            out = [self._apply_request(rid, ops, ts, emitted) for rid, ops in requests]
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
        self, request_id: str | None, ops: list[dict[str, Any]], ts: int, emitted: list[Record]
    ) -> list[dict[str, Any]]:
        if request_id and request_id in self.results:
            return self.results[request_id]
        results: list[dict[str, Any]] = []
        for op in ops:
            try:
                name, args = _parse_op(op)
                if name == TICK:
                    effect: dict[str, Any] = {}
                elif name in MIRROR_OPS:
                    effect = self._mirror_op(name, args)
                else:
                    effect = self.ns.apply(name, args, max(ts, self.last_ts))
            except FsError as exc:
                results.append(error_result(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must not take the node down
                results.append(
                    error_result(FsError(22, f"internal error applying {op!r}: {exc!r}"))
                )
                continue
            record = self._emit(name, effect, ts)
            emitted.append(record)
            results.append({"ok": True, "version": record.version, "effect": effect})
        if request_id:
            self.results[request_id] = results
            while len(self.results) > REMEMBERED_REQUESTS:
                self.results.popitem(last=False)
        return results

    def _emit(self, op: str, effect: dict[str, Any], ts: int) -> Record:
        self.version += 1
        self.last_ts = max(ts, self.last_ts)
        record = Record(self.version, self.last_ts, op, effect)
        self.recent.append(record)
        return record

    def _mirror_op(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        mirror = args.get("name")
        if not isinstance(mirror, str) or not mirror:
            raise FsError(22, "mirror op needs a non-empty 'name'")
        if name == MIRROR_REGISTER:
            existed = mirror in self.mirrors
            if not existed:
                # The mirror needs everything after the snapshot it is about to load.
                self.mirrors[mirror] = {"registered": self.version + 1, "acked": self.version}
            return {"name": mirror, "existed": existed, **self.mirrors[mirror]}
        if mirror not in self.mirrors:
            raise FsError(2, f"no mirror named {mirror!r} is registered")
        if name == MIRROR_REMOVE:
            del self.mirrors[mirror]
            return {"name": mirror}
        version = args.get("version")
        if not isinstance(version, int) or not 0 <= version <= self.version:
            raise FsError(22, f"ack version must be 0..{self.version}, got {version!r}")
        entry = self.mirrors[mirror]
        entry["acked"] = max(entry["acked"], version)
        return {"name": mirror, "acked": entry["acked"]}

    # --- reads (any thread, under the lock) ---

    def retention_floor(self) -> int | None:
        """The lowest version some registered mirror still needs; None if no mirror."""
        with self.lock:
            if not self.mirrors:
                return None
            return min(int(m["acked"]) + 1 for m in self.mirrors.values())

    def mirror_table(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {k: dict(v) for k, v in self.mirrors.items()}


def _parse_op(op: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(op, dict) or not isinstance(op.get("op"), str):
        raise FsError(22, "each op must be an object with a string 'op'")
    args = op.get("args", {})
    if not isinstance(args, dict):
        raise FsError(22, f"op {op['op']!r}: 'args' must be an object")
    return op["op"], args
