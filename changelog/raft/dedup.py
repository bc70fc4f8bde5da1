"""The remembered requests: what the state machine needs to answer a retry as it answered first.

Part of the replicated state (pickled into pysyncobj's dump with the rest), so it survives
leader changes and restarts. Deterministic: entries expire by the commands' `ts` (the source
clock carried in the Raft log), never by a node's local clock, so every node keeps and prunes
the same entries.

Contract (W = the dedup window of the command, `source.dedup_window_s`):
- A committed request is remembered until max(its commit ts, its id's creation time) + W.
  Taking the later of the two keeps the guarantee below when the client's clock runs ahead.
- A retry of a remembered request applies nothing and gets the first answer: for a request
  that committed, its records (first version, op count: the answer is rebuilt from them);
  for one that failed, which op failed and its error.
- A request whose id is not remembered and was created more than W before the command's ts
  is refused (its first attempt may have committed and since been forgotten): never
  re-applied. One created more than W after it is refused too (a client clock that far ahead
  would keep entries alive for longer than W, unbounded).
So any retry within W of its creation is answered exactly, and any later one is refused.

Memory is bounded by what an answer needs, never the effects: per request one integer key
(the id's 176 bits), one packed integer (first version, op count, expiry), a slot in the
pruning queue; for a failed request also its error. Measured (tests/changelog/test_dedup.py,
100k requests, 1% failed): ~150 bytes each in memory (99 B of tables + the 48 B key), 56 B in
the pickled dump; so 600k requests (1000/s over a 600 s window) cost ~90 MB.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

_EXPIRY_BITS = 48  # ms since the epoch: good until the year 10889
_COUNT_BITS = 20
MAX_COUNT = (1 << _COUNT_BITS) - 1
_EXPIRY_MASK = (1 << _EXPIRY_BITS) - 1
_COUNT_MASK = MAX_COUNT << _EXPIRY_BITS


@dataclass(frozen=True, slots=True)
class Committed:
    """The request committed as records first_version .. first_version + count - 1."""

    first_version: int
    count: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The request of `count` ops failed at op `index` with `error` (wire form); it changed
    nothing."""

    count: int
    index: int
    error: dict[str, Any]


class RequestMemory:
    """request key -> Committed | Failed, for the window; see the module docstring."""

    def __init__(self) -> None:
        # key -> first_version << 68 | count << 48 | expiry_ms; first_version 0: failed.
        self._packed: dict[int, int] = {}
        self._failed: dict[int, tuple[int, dict[str, Any]]] = {}  # key -> (index, error)
        self._order: deque[int] = deque()  # keys in commit order, for pruning

    def __len__(self) -> int:
        return len(self._packed)

    def get(self, key: int) -> Committed | Failed | None:
        packed = self._packed.get(key)
        if packed is None:
            return None
        count = (packed & _COUNT_MASK) >> _EXPIRY_BITS
        first = packed >> (_EXPIRY_BITS + _COUNT_BITS)
        if first:
            return Committed(first, count)
        index, error = self._failed[key]
        return Failed(count, index, error)

    def remember(self, key: int, answer: Committed | Failed, expiry_ms: int) -> None:
        """Keep `answer` until `expiry_ms` (a command ts). A key is remembered once."""
        if key in self._packed:
            raise ValueError("a request is remembered once")
        if not 0 < answer.count <= MAX_COUNT or not 0 <= expiry_ms <= _EXPIRY_MASK:
            raise ValueError(f"cannot remember {answer!r} until {expiry_ms}")
        first = answer.first_version if isinstance(answer, Committed) else 0
        if isinstance(answer, Failed):
            self._failed[key] = (answer.index, answer.error)
        elif first < 1:
            raise ValueError("versions start at 1")
        self._packed[key] = (
            (first << (_EXPIRY_BITS + _COUNT_BITS)) | (answer.count << _EXPIRY_BITS) | expiry_ms
        )
        self._order.append(key)

    def prune(self, now_ms: int) -> int:
        """Forget requests whose expiry is before `now_ms`, oldest commits first; returns how
        many. The queue is pruned from its front only, so an entry behind a longer-lived one
        (an id created up to W ahead) lingers at most W longer: memory stays bounded."""
        forgotten = 0
        order, packed = self._order, self._packed
        while order and packed[order[0]] & _EXPIRY_MASK < now_ms:
            key = order.popleft()
            del packed[key]
            self._failed.pop(key, None)
            forgotten += 1
        return forgotten
