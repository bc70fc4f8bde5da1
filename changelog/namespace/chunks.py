"""The namespace's compact tables: pending (and expired) slice ids and each file's chunk refs.

Both are sized for millions of files in one Raft state (see the memory notes on each class);
they are internals of the source's namespace, never shipped: effects and snapshots carry
plain lists instead.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

from volume.inode import SliceRef


class IdRanges:
    """A set of slice ids as sorted, disjoint, non-adjacent half-open ranges."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[Sequence[int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(int(start), int(end))

    def add(self, start: int, end: int) -> None:
        """Add [start, end), merging with what it touches."""
        if start >= end:
            return
        i = bisect_left(self._ends, start)  # first range ending at or after start
        j = bisect_right(self._starts, end)  # ranges before j start at or before end
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def discard(self, start: int, end: int) -> None:
        """Remove [start, end) from the set (ids not in it are ignored)."""
        if start >= end:
            return
        i = bisect_right(self._ends, start)  # first range ending after start
        j = bisect_left(self._starts, end)  # ranges before j start before end
        if i >= j:
            return
        keep = [(s, e) for s, e in ((self._starts[i], start), (end, self._ends[j - 1])) if s < e]
        self._starts[i:j] = [s for s, _ in keep]
        self._ends[i:j] = [e for _, e in keep]

    def overlap(self, start: int, end: int) -> list[list[int]]:
        """The parts of [start, end) in the set, ascending."""
        i = bisect_right(self._ends, start)
        out: list[list[int]] = []
        while i < len(self._starts) and self._starts[i] < end:
            out.append([max(start, self._starts[i]), min(end, self._ends[i])])
            i += 1
        return out

    def __contains__(self, slice_id: object) -> bool:
        if not isinstance(slice_id, int):
            return False
        i = bisect_right(self._starts, slice_id) - 1
        return i >= 0 and slice_id < self._ends[i]

    def ranges(self) -> list[list[int]]:
        return [[s, e] for s, e in zip(self._starts, self._ends, strict=True)]

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))


class PendingIds:
    """Slice ids allocated to clients and not committed yet, as sorted half-open ranges, each
    with the ts (ms) of the allocation that reserved it; and the ids expired from them.

    A write may commit only a pending id, once: a replayed or duplicated write finds its id gone
    and fails instead of committing twice. Allocations are consecutive, so ranges reserved at
    one ts merge; commits split ranges (the pieces keep their ts). Memory is bounded by
    outstanding ids' ranges, not by every id ever committed.

    Expiry (the upload sweeper's `expire_slices`, changelog/sweeper.py) moves ranges reserved
    long ago out of the pending set, so no later write can commit them, into `expired`: ids
    whose blocks the sweeper may delete. It forgets them (a second `expire_slices`) once a
    listing of the bucket that began after their expiry found every one of their blocks deleted,
    so `expired` holds about one sweep's worth. State lives here only: an undo of reserve,
    remove, expire or forget touches nothing else.
    """

    __slots__ = ("_ends", "_expired", "_starts", "_times")

    def __init__(self, ranges: Sequence[Sequence[int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._times: list[int] = []
        self._expired = IdRanges()
        for r in ranges:
            self.add(int(r[0]), int(r[1]), int(r[2]) if len(r) > 2 else 0)

    def __setstate__(self, state: object) -> None:
        # A pickled state from before reservation times and expiry (pysyncobj's dump of an
        # older version): its ranges count as reserved at ts 0, long ago.
        slots = state[1] if isinstance(state, tuple) else state
        assert isinstance(slots, dict), f"unexpected PendingIds state {state!r}"
        for key, value in slots.items():
            object.__setattr__(self, key, value)
        if not hasattr(self, "_times"):
            self._times = [0] * len(self._starts)
        if not hasattr(self, "_expired"):
            self._expired = IdRanges()

    def add(self, start: int, end: int, ts: int = 0) -> None:
        """Add [start, end) reserved at `ts`; must lie above every range already held (ids
        only grow)."""
        if start >= end:
            return
        if self._ends and start < self._ends[-1]:
            raise ValueError(f"pending ids must grow: [{start}, {end}) below {self._ends[-1]}")
        if self._ends and self._ends[-1] == start and self._times[-1] == ts:
            self._ends[-1] = end
        else:
            self._starts.append(start)
            self._ends.append(end)
            self._times.append(ts)

    def __contains__(self, slice_id: object) -> bool:
        if not isinstance(slice_id, int):
            return False
        i = bisect_right(self._starts, slice_id) - 1
        return i >= 0 and slice_id < self._ends[i]

    def remove(self, slice_id: int) -> None:
        """Take one id out; KeyError if it is not pending."""
        i = bisect_right(self._starts, slice_id) - 1
        if i < 0 or slice_id >= self._ends[i]:
            raise KeyError(slice_id)
        self._cut(i, slice_id, slice_id + 1)

    def _cut(self, i: int, start: int, end: int) -> None:
        """Remove [start, end), which lies inside range i."""
        s, e, ts = self._starts[i], self._ends[i], self._times[i]
        pieces = [(a, b) for a, b in ((s, start), (end, e)) if a < b]
        self._starts[i : i + 1] = [a for a, _ in pieces]
        self._ends[i : i + 1] = [b for _, b in pieces]
        self._times[i : i + 1] = [ts] * len(pieces)

    def reserved_at(self, slice_id: int) -> int | None:
        """The ts of the allocation that reserved a pending id; None if it is not pending."""
        i = bisect_right(self._starts, slice_id) - 1
        return self._times[i] if i >= 0 and slice_id < self._ends[i] else None

    def expirable(self, before_ts: int, limit: int) -> list[list[int]]:
        """The first `limit` pending ranges reserved at or before `before_ts`, ascending."""
        out: list[list[int]] = []
        for s, e, ts in zip(self._starts, self._ends, self._times, strict=True):
            if len(out) >= limit:
                break
            if ts <= before_ts:
                out.append([s, e])
        return out

    def expire(self, ranges: Iterable[Sequence[int]]) -> None:
        """Move whole pending ranges (as `expirable` gave them) to `expired`; ValueError if one
        is not exactly a pending range."""
        for start, end in ranges:
            i = bisect_right(self._starts, start) - 1
            if i < 0 or self._starts[i] != start or self._ends[i] != end:
                raise ValueError(f"[{start}, {end}) is not a pending range")
            self._cut(i, start, end)
            self._expired.add(start, end)

    def add_expired(self, start: int, end: int) -> None:
        """Mark [start, end) expired directly (loading a snapshot)."""
        self._expired.add(start, end)

    def is_expired(self, slice_id: int) -> bool:
        return slice_id in self._expired

    def expired_overlap(self, ranges: Iterable[Sequence[int]]) -> list[list[int]]:
        """The parts of `ranges` that are expired ids, ascending and disjoint."""
        parts = IdRanges()
        for start, end in ranges:
            for s, e in self._expired.overlap(int(start), int(end)):
                parts.add(s, e)
        return parts.ranges()

    def forget(self, ranges: Iterable[Sequence[int]]) -> None:
        """Drop expired ids whose blocks are known gone."""
        for start, end in ranges:
            self._expired.discard(int(start), int(end))

    def put_back(self, slice_id: int, ts: int) -> None:
        """Undo `remove(slice_id)` of an id reserved at `ts`: pending again, merged with the
        neighbours it was split from.

        Only touching ranges of the same ts merge (add merges those, remove leaves a gap and
        both pieces keep the ts), so merging rebuilds exactly the ranges held before."""
        i = bisect_right(self._starts, slice_id)
        if i > 0 and slice_id < self._ends[i - 1]:
            raise ValueError(f"slice id {slice_id} is already pending")
        joins_left = i > 0 and self._ends[i - 1] == slice_id and self._times[i - 1] == ts
        joins_right = (
            i < len(self._starts) and self._starts[i] == slice_id + 1 and self._times[i] == ts
        )
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i], self._ends[i], self._times[i]
        elif joins_left:
            self._ends[i - 1] = slice_id + 1
        elif joins_right:
            self._starts[i] = slice_id
        else:
            self._starts.insert(i, slice_id)
            self._ends.insert(i, slice_id + 1)
            self._times.insert(i, ts)

    def withdraw(self, start: int, end: int) -> None:
        """Undo `add(start, end)`, which must be the last change made to the top range."""
        if start >= end:
            return
        if not self._ends or self._ends[-1] != end or self._starts[-1] > start:
            raise ValueError(f"[{start}, {end}) is not the top of the pending ranges")
        if self._starts[-1] == start:
            del self._starts[-1], self._ends[-1], self._times[-1]
        else:
            self._ends[-1] = start

    def snapshot(self) -> tuple[list[int], list[int], list[int], list[list[int]]]:
        """Everything this holds, copied (the before-image of a rare bulk change)."""
        return ([*self._starts], [*self._ends], [*self._times], self._expired.ranges())

    def restore(self, image: tuple[list[int], list[int], list[int], list[list[int]]]) -> None:
        """Back to a `snapshot()`."""
        starts, ends, times, expired = image
        self._starts, self._ends, self._times = [*starts], [*ends], [*times]
        self._expired = IdRanges()
        for start, end in expired:
            self._expired.add(start, end)

    def ranges(self) -> list[list[int]]:
        """[[start, end, reserved ts], ...] ascending."""
        return [[s, e, ts] for s, e, ts in zip(self._starts, self._ends, self._times, strict=True)]

    def expired_ranges(self) -> list[list[int]]:
        return self._expired.ranges()

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))


class ChunkTable:
    """(ino, chunk index) -> the chunk's refs in write order; empty chunks are not kept.

    Most files of a model or dataset tree fit in chunk 0, so those live in a flat dict and
    only files with other chunks pay for a per-file dict (a small dict costs ~200 bytes, a
    fifth of a file's whole footprint). Lists handed out belong to the table: do not mutate.
    """

    __slots__ = ("_many", "_zero")

    def __init__(self) -> None:
        self._zero: dict[int, list[SliceRef]] = {}
        self._many: dict[int, dict[int, list[SliceRef]]] = {}

    def get(self, ino: int, index: int) -> list[SliceRef]:
        if index == 0:
            refs = self._zero.get(ino)
            if refs is not None:
                return refs
        many = self._many.get(ino)
        return [] if many is None else many.get(index, [])

    def of_file(self, ino: int) -> list[tuple[int, list[SliceRef]]]:
        """(index, refs) of every non-empty chunk of `ino`, ascending by index."""
        refs = self._zero.get(ino)
        if refs is not None:
            return [(0, refs)]
        many = self._many.get(ino)
        return [] if many is None else sorted(many.items())

    def put(self, ino: int, index: int, refs: list[SliceRef]) -> None:
        """Set a chunk's refs (the table keeps the list); an empty list removes the chunk."""
        many = self._many.get(ino)
        if many is None:
            zero = self._zero.get(ino)
            if index == 0:
                if refs:
                    self._zero[ino] = refs
                else:
                    self._zero.pop(ino, None)
                return
            if not refs:
                return
            many = self._many[ino] = {} if zero is None else {0: self._zero.pop(ino)}
        if refs:
            many[index] = refs
        else:
            many.pop(index, None)
        if not many:
            del self._many[ino]
        elif len(many) == 1 and 0 in many:
            self._zero[ino] = self._many.pop(ino)[0]

    def pop_file(self, ino: int) -> list[tuple[int, list[SliceRef]]]:
        """Remove and return every chunk of `ino` (ascending by index)."""
        chunks = self.of_file(ino)
        self._zero.pop(ino, None)
        self._many.pop(ino, None)
        return chunks
