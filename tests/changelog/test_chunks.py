"""The namespace's compact tables: pending slice ids and the chunk table's two layouts."""

from __future__ import annotations

import pytest

from changelog.namespace.chunks import ChunkTable, PendingIds
from volume.inode import SliceRef


def test_pending_ids() -> None:
    p = PendingIds()
    p.add(1, 4)
    p.add(4, 6)  # consecutive allocations merge
    assert p.ranges() == [[1, 6]]
    p.remove(3)
    assert p.ranges() == [[1, 3], [4, 6]]
    assert 3 not in p and 4 in p and 0 not in p and 6 not in p
    for i in (1, 2, 4, 5):
        p.remove(i)
    assert p.ranges() == [] and len(p) == 0
    with pytest.raises(KeyError):
        p.remove(1)
    with pytest.raises(ValueError):
        PendingIds([[10, 20]]).add(5, 8)
    assert PendingIds([[10, 20], [30, 31]]).ranges() == [[10, 20], [30, 31]]


def test_pending_ids_undo_restores_the_exact_ranges() -> None:
    """put_back undoes remove and withdraw undoes add: what a rolled-back request needs."""
    p = PendingIds([[1, 4], [6, 10]])
    for sid in (1, 3, 2, 7, 9, 8, 6):  # ends, middles, and emptying a range
        before = p.ranges()
        p.remove(sid)
        p.put_back(sid)
        assert p.ranges() == before, sid
        p.remove(sid)
    assert p.ranges() == [] and len(p) == 0
    with pytest.raises(ValueError):
        PendingIds([[1, 4]]).put_back(2)
    p = PendingIds([[1, 4]])
    p.add(4, 6)  # merged into the top range
    p.withdraw(4, 6)
    assert p.ranges() == [[1, 4]]
    p.add(8, 9)  # a range of its own
    p.withdraw(8, 9)
    assert p.ranges() == [[1, 4]]
    with pytest.raises(ValueError):
        p.withdraw(2, 3)


def test_chunk_table_moves_files_between_layouts() -> None:
    t = ChunkTable()
    r0, r1, r2 = (SliceRef(i, 1, 0, 1, 0) for i in range(3))
    assert t.get(5, 0) == [] and t.of_file(5) == []
    t.put(5, 0, [r0])
    assert t.of_file(5) == [(0, [r0])]
    t.put(5, 3, [r1])  # a second chunk
    t.put(5, 1, [r2])
    assert t.of_file(5) == [(0, [r0]), (1, [r2]), (3, [r1])]
    assert t.get(5, 3) == [r1] and t.get(5, 2) == []
    t.put(5, 3, [])
    t.put(5, 1, [])  # back to chunk 0 only
    assert t.of_file(5) == [(0, [r0])]
    t.put(5, 0, [])
    assert t.of_file(5) == []
    t.put(6, 2, [r1])  # a file with no chunk 0
    t.put(6, 0, [])
    assert t.of_file(6) == [(2, [r1])]
    t.put(6, 0, [r0])
    assert t.pop_file(6) == [(0, [r0]), (2, [r1])]
    assert t.of_file(6) == [] and t.get(6, 2) == []
