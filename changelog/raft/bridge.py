"""The bridge between pysyncobj's thread and the node's event loop.

pysyncobj runs Raft on its own thread and calls back from it; here commands become awaitables
(resolved with `call_soon_threadsafe`, with our own timeout, since pysyncobj's async commands
have none) and its fail reasons become our error types. Nothing else touches SyncObj.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pysyncobj import FAIL_REASON, SyncObjConf

from changelog.raft.conf import DurableSyncObj
from changelog.raft.state import MetaState, Outcome
from volume.errors import NotLeaderError, QuorumUnavailableError

DEFAULT_COMMAND_TIMEOUT_S = 10.0
MAX_INFLIGHT = 2  # Raft entries in flight at once; more requests wait and share the next one
MAX_OPS_PER_ENTRY = 5_000
_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_Waiting = tuple[str | None, list[dict[str, Any]], "asyncio.Future[Outcome]"]


class RaftNode:
    """One Raft member holding a MetaState. Thread-safe to submit from the event loop."""

    def __init__(
        self,
        self_addr: str,
        partners: list[str],
        conf: SyncObjConf,
        state: MetaState,
        *,
        api_by_raft: dict[str, str],
    ) -> None:
        self.state = state
        self.self_addr = self_addr
        self.api_by_raft = api_by_raft
        self.sync = DurableSyncObj(self_addr, partners, conf, consumers=[state])
        self._waiting: list[_Waiting] = []
        self._inflight = 0
        self._barrier_waiting: list[asyncio.Future[int]] = []
        self._barrier_inflight = False

    async def submit(
        self,
        request_id: str | None,
        ops: list[dict[str, Any]],
        *,
        timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
    ) -> Outcome:
        """Commit a request (all its ops or none) and return its Outcome (changelog/raft/state.py:
        per-op results, or a retry's Replayed/Refused).

        Group commit: while MAX_INFLIGHT Raft entries are in flight, new requests wait and then
        go together in one entry, so a loaded node sends a few large entries instead of one
        pickled, encrypted message per request and follower (measured: the Raft thread was the
        bottleneck at ~650 requests/s with one entry each). An idle node sends at once.

        Raises QuorumUnavailableError (temporary) when no leader committed it in time; the batch
        may still commit later, which is why callers retry with the same request_id.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        self._waiting.append((request_id, ops, fut))
        self._flush(loop)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            raise QuorumUnavailableError(
                f"no commit within {timeout_s:.0f}s (no quorum or no leader); "
                "the batch may still commit: retry with the same request_id"
            ) from None

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._waiting and self._inflight < MAX_INFLIGHT:
            take, size = 0, 0
            while take < len(self._waiting) and size < MAX_OPS_PER_ENTRY:
                size += len(self._waiting[take][1])
                take += 1
            items, self._waiting = self._waiting[:take], self._waiting[take:]
            self._inflight += 1

            def done(result: Any, error: int, items: list[_Waiting] = items) -> None:
                loop.call_soon_threadsafe(self._done, loop, items, result, error)

            # The window travels in the command: every node prunes and refuses alike.
            self.state.apply_requests(
                [(rid, ops) for rid, ops, _ in items],
                now_ms(),
                self.state.dedup_window_ms,
                callback=done,
            )

    def _done(
        self, loop: asyncio.AbstractEventLoop, items: list[_Waiting], result: Any, error: int
    ) -> None:
        self._inflight -= 1
        leader = self.leader_api()
        for i, (_, _, fut) in enumerate(items):
            if fut.done():
                continue
            if error == FAIL_REASON.SUCCESS:
                fut.set_result(result[i])
            elif error in (FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED):
                fut.set_exception(
                    NotLeaderError("leader changed before commit", leader_hint=leader)
                )
            else:
                fut.set_exception(
                    QuorumUnavailableError(f"command not committed (pysyncobj fail reason {error})")
                )
        self._flush(loop)

    async def read_barrier(self, *, timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S) -> int:
        """Wait until a read on this node may answer as the leader's: a barrier command proposed
        after this call began has committed, so the local state holds every write acknowledged
        before the call. Returns the version the barrier saw.

        Checking leadership locally is not enough: a leader cut off from its peers keeps
        believing it leads until leaderFallbackTimeout, while the others elect a new leader
        and commit writes (tests/changelog/test_leader_reads.py). Concurrent reads share one
        barrier, but never one proposed before they arrived.

        Raises NotLeaderError (with the leader's API if known) or QuorumUnavailableError.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._barrier_waiting.append(fut)
        self._propose_barrier(loop)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            raise QuorumUnavailableError(
                f"no quorum confirmed this node's leadership within {timeout_s:.0f}s"
            ) from None

    def _propose_barrier(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._barrier_inflight or not self._barrier_waiting:
            return
        waiters, self._barrier_waiting = self._barrier_waiting, []
        self._barrier_inflight = True

        def done(result: Any, error: int) -> None:
            loop.call_soon_threadsafe(self._barrier_done, loop, waiters, result, error)

        self.state.read_barrier(callback=done)

    def _barrier_done(
        self,
        loop: asyncio.AbstractEventLoop,
        waiters: list[asyncio.Future[int]],
        result: Any,
        error: int,
    ) -> None:
        self._barrier_inflight = False
        exc: Exception | None = None
        if error in (FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED):
            exc = NotLeaderError("this node is not the leader", leader_hint=self.leader_api())
        elif error != FAIL_REASON.SUCCESS:
            exc = QuorumUnavailableError(f"leadership not confirmed (pysyncobj fail {error})")
        elif not self.is_leader:
            # Committed through the real leader (pysyncobj forwards commands): this node was not
            # it, and a leader read must come from the leader.
            exc = NotLeaderError("this node is not the leader", leader_hint=self.leader_api())
        for fut in waiters:
            if fut.done():
                continue
            if exc is None:
                fut.set_result(int(result))
            else:
                fut.set_exception(exc)
        self._propose_barrier(loop)

    @property
    def role(self) -> str:
        return _ROLES.get(int(self.sync.getStatus()["state"]), "unknown")

    @property
    def is_leader(self) -> bool:
        return bool(self.sync._isLeader())

    def leader_api(self) -> str | None:
        leader = self.sync._getLeader()
        return self.api_by_raft.get(str(leader)) if leader is not None else None

    def status(self) -> dict[str, Any]:
        raw = self.sync.getStatus()
        partners = {
            k.removeprefix("partner_node_status_server_"): v == 2
            for k, v in raw.items()
            if k.startswith("partner_node_status_server_")
        }
        return {
            "role": _ROLES.get(int(raw["state"]), "unknown"),
            "term": raw["raft_term"],
            "leader": self.leader_api(),
            "has_quorum": bool(raw["has_quorum"]),
            "raft_commit_index": raw["commit_idx"],
            "raft_last_applied": raw["last_applied"],
            "raft_log_len": raw["log_len"],
            "peers": {self.api_by_raft.get(k, k): ok for k, ok in partners.items()},
        }

    def require_leader(self) -> None:
        if not self.is_leader:
            raise NotLeaderError("this node is not the leader", leader_hint=self.leader_api())

    def close(self) -> None:
        self.sync.destroy()
