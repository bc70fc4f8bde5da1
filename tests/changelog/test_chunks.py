"""The namespace's compact tables: pending slice ids and the chunk table's two layouts."""

from __future__ import annotations

import pickle

import pytest

from changelog.namespace.chunks import ChunkTable, IdRanges, PendingIds
from volume.inode import SliceRef


def test_pending_ids() -> None:
    p = PendingIds()
    p.add(1, 4, 7)
    p.add(4, 6, 7)  # consecutive allocations at one ts merge
    assert p.ranges() == [[1, 6, 7]]
    p.remove(3)
    assert p.ranges() == [[1, 3, 7], [4, 6, 7]]
    assert 3 not in p and 4 in p and 0 not in p and 6 not in p
    for i in (1, 2, 4, 5):
        p.remove(i)
    assert p.ranges() == [] and len(p) == 0
    with pytest.raises(KeyError):
        p.remove(1)
    with pytest.raises(ValueError):
        PendingIds([[10, 20]]).add(5, 8)
    assert PendingIds([[10, 20], [30, 31, 5]]).ranges() == [[10, 20, 0], [30, 31, 5]]


def test_pending_ids_keep_their_reservation_time_and_expire() -> None:
    p = PendingIds()
    p.add(1, 4, 100)
    p.add(4, 6, 200)  # a later allocation: its own range, its own time
    p.add(6, 9, 300)
    assert p.ranges() == [[1, 4, 100], [4, 6, 200], [6, 9, 300]]
    p.remove(2)
    assert (p.reserved_at(3), p.reserved_at(5), p.reserved_at(2)) == (100, 200, None)
    assert p.expirable(200, limit=10) == [[1, 2], [3, 4], [4, 6]]
    assert p.expirable(200, limit=2) == [[1, 2], [3, 4]]
    p.expire([[1, 2], [3, 4], [4, 6]])
    assert p.ranges() == [[6, 9, 300]] and len(p) == 3
    assert p.expired_ranges() == [[1, 2], [3, 6]]
    assert p.is_expired(5) and not p.is_expired(2) and 5 not in p
    with pytest.raises(ValueError):
        p.expire([[6, 8]])  # not a whole pending range
    assert p.expired_overlap([[0, 4], [5, 100]]) == [[1, 2], [3, 4], [5, 6]]
    p.forget([[3, 5]])
    assert p.expired_ranges() == [[1, 2], [5, 6]]
    p.forget([[0, 100]])
    assert p.expired_ranges() == []


def test_id_ranges_merge_split_and_overlap() -> None:
    r = IdRanges([[10, 20], [30, 40]])
    r.add(20, 25)  # touching merges
    r.add(5, 8)
    r.add(24, 31)  # bridges two
    assert r.ranges() == [[5, 8], [10, 40]]
    r.discard(12, 15)
    r.discard(0, 6)
    r.discard(50, 60)  # nothing there
    assert r.ranges() == [[6, 8], [10, 12], [15, 40]]
    assert r.overlap(7, 16) == [[7, 8], [10, 12], [15, 16]]
    assert 11 in r and 12 not in r and len(r) == 2 + 2 + 25


def test_pending_ids_pickled_before_times_and_expiry_still_load() -> None:
    """pysyncobj dumps the state by pickle: a dump from before this change must load."""
    old = PendingIds()
    old.add(1, 5)
    state = (None, {"_starts": [1], "_ends": [5]})  # what the older class pickled
    p = PendingIds.__new__(PendingIds)
    p.__setstate__(state)
    assert p.ranges() == [[1, 5, 0]] and p.expired_ranges() == []
    p.remove(2)
    again = pickle.loads(pickle.dumps(p))
    assert again.ranges() == [[1, 2, 0], [3, 5, 0]]


def test_pending_ids_undo_restores_the_exact_ranges() -> None:
    """put_back undoes remove and withdraw undoes add: what a rolled-back request needs."""
    p = PendingIds([[1, 4, 10], [4, 6, 20], [6, 10, 20]])  # touching ranges of two times
    for sid in (1, 3, 4, 5, 2, 7, 9, 8, 6):  # ends, middles, and emptying a range
        before = p.ranges()
        ts = p.reserved_at(sid)
        assert ts is not None
        p.remove(sid)
        p.put_back(sid, ts)
        assert p.ranges() == before, sid
        p.remove(sid)
    assert p.ranges() == [] and len(p) == 0
    with pytest.raises(ValueError):
        PendingIds([[1, 4]]).put_back(2, 0)
    p = PendingIds([[1, 4]])
    p.add(4, 6)  # merged into the top range (same ts)
    p.withdraw(4, 6)
    assert p.ranges() == [[1, 4, 0]]
    p.add(4, 6, ts=5)  # touching but another ts: a range of its own
    p.withdraw(4, 6)
    assert p.ranges() == [[1, 4, 0]]
    p.add(8, 9)  # a range of its own
    p.withdraw(8, 9)
    assert p.ranges() == [[1, 4, 0]]
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
