"""The namespace's two compact tables: pending slice ids and each file's chunk refs.

Both are sized for millions of files in one Raft state (see the memory notes on each class);
they are internals of the source's namespace, never shipped: effects and snapshots carry
plain lists instead.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from volume.inode import SliceRef


class PendingIds:
    """Slice ids allocated to clients and not committed yet, as sorted half-open ranges.

    A write may commit only a pending id, once: a replayed or duplicated write finds its id gone
    and fails instead of committing twice. Allocations are consecutive, so abandoned ones merge
    into one range; only commits split ranges. Memory is bounded by outstanding ids' ranges,
    not by every id ever committed.
    """

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Sequence[Sequence[int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(int(start), int(end))

    def add(self, start: int, end: int) -> None:
        """Add [start, end); must lie above every range already held (ids only grow)."""
        if start >= end:
            return
        if self._ends and start < self._ends[-1]:
            raise ValueError(f"pending ids must grow: [{start}, {end}) below {self._ends[-1]}")
        if self._ends and self._ends[-1] == start:
            self._ends[-1] = end
        else:
            self._starts.append(start)
            self._ends.append(end)

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
        start, end = self._starts[i], self._ends[i]
        pieces = [(s, e) for s, e in ((start, slice_id), (slice_id + 1, end)) if s < e]
        self._starts[i : i + 1] = [s for s, _ in pieces]
        self._ends[i : i + 1] = [e for _, e in pieces]

    def put_back(self, slice_id: int) -> None:
        """Undo `remove(slice_id)`: the id is pending again, merged with its neighbours.

        Ranges never touch (add merges, remove leaves a gap), so merging rebuilds exactly the
        ranges held before the remove."""
        i = bisect_right(self._starts, slice_id)
        if i > 0 and slice_id < self._ends[i - 1]:
            raise ValueError(f"slice id {slice_id} is already pending")
        joins_left = i > 0 and self._ends[i - 1] == slice_id
        joins_right = i < len(self._starts) and self._starts[i] == slice_id + 1
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i], self._ends[i]
        elif joins_left:
            self._ends[i - 1] = slice_id + 1
        elif joins_right:
            self._starts[i] = slice_id
        else:
            self._starts.insert(i, slice_id)
            self._ends.insert(i, slice_id + 1)

    def withdraw(self, start: int, end: int) -> None:
        """Undo `add(start, end)`, which must be the last change made to the top range."""
        if start >= end:
            return
        if not self._ends or self._ends[-1] != end or self._starts[-1] > start:
            raise ValueError(f"[{start}, {end}) is not the top of the pending ranges")
        if self._starts[-1] == start:
            del self._starts[-1], self._ends[-1]
        else:
            self._ends[-1] = start

    def ranges(self) -> list[list[int]]:
        return [[s, e] for s, e in zip(self._starts, self._ends, strict=True)]

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
