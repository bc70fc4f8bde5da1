"""Chunk arithmetic against brute-force byte models: what a reader sees must be what was written."""

from __future__ import annotations

import itertools
import random

import pytest

from volume.extents import (
    block_ranges,
    clip_chunk,
    covered_by_last,
    invisible_indices,
    visible_extents,
)
from volume.inode import BLOCK_SIZE, CHUNK_SIZE, Extent, SliceRef, block_count, block_size_of

SEEDS = range(12)


def random_refs(rng: random.Random, n: int, chunk_len: int) -> list[SliceRef]:
    refs = []
    for i in range(n):
        size = rng.randint(1, chunk_len)
        off = rng.randint(0, size - 1)
        length = rng.randint(1, size - off)
        pos = rng.randint(0, chunk_len + 5)  # some start past the end of a short chunk
        refs.append(SliceRef(id=100 + i, size=size, off=off, len=length, pos=pos))
    return refs


def brute_force(refs: list[SliceRef], chunk_len: int) -> list[tuple[int, int] | None]:
    """Per chunk byte: (slice id, offset in the slice object) of the newest writer, or None."""
    out: list[tuple[int, int] | None] = [None] * chunk_len
    for ref in refs:
        for k in range(ref.len):
            if 0 <= ref.pos + k < chunk_len:
                out[ref.pos + k] = (ref.id, ref.off + k)
    return out


def expand(extents: list[Extent], chunk_len: int) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = [None] * chunk_len
    for e in extents:
        for k in range(e.length):
            out[e.pos + k] = None if e.slice_id is None else (e.slice_id, e.slice_off + k)
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_visible_extents_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        chunk_len = rng.randint(1, 40)
        refs = random_refs(rng, rng.randint(0, 8), chunk_len)
        extents = visible_extents(refs, chunk_len)
        assert expand(extents, chunk_len) == brute_force(refs, chunk_len)
        # a tiling in position order, no empty pieces, no two holes side by side
        assert extents[0].pos == 0
        assert sum(e.length for e in extents) == chunk_len
        for a, b in itertools.pairwise(extents):
            assert a.pos + a.length == b.pos
            assert not (a.is_hole and b.is_hole)
        sizes = {r.id: r.size for r in refs}
        for e in extents:
            assert e.length > 0
            if not e.is_hole:
                assert e.slice_size == sizes[e.slice_id]
                assert e.slice_off >= 0 and e.slice_off + e.length <= e.slice_size


def test_visible_extents_edges() -> None:
    assert visible_extents([], 0) == []
    assert visible_extents([], 10) == [Extent(pos=0, length=10)]
    full = SliceRef(id=1, size=CHUNK_SIZE, off=0, len=CHUNK_SIZE, pos=0)
    assert visible_extents([full], CHUNK_SIZE) == [Extent(0, CHUNK_SIZE, 1, CHUNK_SIZE, 0)]
    # a newer slice in the middle splits the older one; the tail reads the right offset
    mid = SliceRef(id=2, size=10, off=0, len=10, pos=100)
    assert visible_extents([full, mid], 200) == [
        Extent(0, 100, 1, CHUNK_SIZE, 0),
        Extent(100, 10, 2, 10, 0),
        Extent(110, 90, 1, CHUNK_SIZE, 110),
    ]


def test_many_small_appends_stay_fast() -> None:
    """16,384 x 4 KiB appends in one chunk: the tiling must not be quadratic in Python work."""
    refs = [SliceRef(id=i, size=4096, off=0, len=4096, pos=i * 4096) for i in range(16384)]
    extents = visible_extents(refs, CHUNK_SIZE)
    assert len(extents) == 16384
    assert covered_by_last(refs, CHUNK_SIZE) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_block_ranges_rebuild_the_extent_bytes(seed: int) -> None:
    rng = random.Random(seed)
    block = 8
    for _ in range(300):
        size = rng.randint(1, 60)
        obj = bytes(rng.randrange(256) for _ in range(size))
        blocks = [obj[i * block : (i + 1) * block] for i in range(block_count(size, block))]
        off = rng.randint(0, size - 1)
        length = rng.randint(1, size - off)
        extent = Extent(
            pos=rng.randint(0, 99), length=length, slice_id=7, slice_size=size, slice_off=off
        )
        ranges = block_ranges(extent, block)
        assert [r.index for r in ranges] == list(range(ranges[0].index, ranges[-1].index + 1))
        data = b""
        for r in ranges:
            assert r.length > 0
            assert r.block_size == len(blocks[r.index]) == block_size_of(size, r.index, block)
            data += blocks[r.index][r.offset : r.offset + r.length]
        assert data == obj[off : off + length]


def test_block_ranges_real_sizes() -> None:
    assert block_ranges(Extent(pos=0, length=5)) == []
    size = 2 * BLOCK_SIZE + 10
    extent = Extent(
        pos=0, length=BLOCK_SIZE + 20, slice_id=1, slice_size=size, slice_off=BLOCK_SIZE - 5
    )
    got = [(r.index, r.offset, r.length, r.block_size) for r in block_ranges(extent)]
    assert got == [
        (0, BLOCK_SIZE - 5, 5, BLOCK_SIZE),
        (1, 0, BLOCK_SIZE, BLOCK_SIZE),
        (2, 0, 10, 10),
    ]


@pytest.mark.parametrize("seed", SEEDS)
def test_covered_by_last_finds_exactly_the_dead_refs(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        chunk_len = 40
        refs = random_refs(rng, rng.randint(1, 7), chunk_len)
        refs = [r for r in refs if r.pos < chunk_len] or [SliceRef(1, 5, 0, 5, 0)]
        before = set(invisible_indices(refs[:-1], chunk_len))
        after = set(invisible_indices(refs, chunk_len))
        # the refs the newest one killed = invisible now, visible before
        assert set(covered_by_last(refs, chunk_len)) - before == after - before
        # dropping them never changes what a reader sees
        dead = set(covered_by_last(refs, chunk_len))
        assert dead <= after
        kept = [r for i, r in enumerate(refs) if i not in dead]
        assert expand(visible_extents(kept, chunk_len), chunk_len) == brute_force(refs, chunk_len)


def test_clip_chunk() -> None:
    a = SliceRef(id=1, size=100, off=10, len=50, pos=0)  # [0, 50)
    b = SliceRef(id=2, size=20, off=0, len=20, pos=40)  # [40, 60)
    c = SliceRef(id=3, size=5, off=0, len=5, pos=70)  # [70, 75)
    kept, dropped, clipped = clip_chunk([a, b, c], 45)
    assert dropped == [c]
    assert clipped == [SliceRef(id=1, size=100, off=10, len=45, pos=0), SliceRef(2, 20, 0, 5, 40)]
    assert kept == clipped
    kept, dropped, clipped = clip_chunk([a, b, c], 72)
    assert (kept, dropped, clipped) == ([a, b, SliceRef(3, 5, 0, 2, 70)], [], [kept[2]])
    assert clip_chunk([a], 0) == ([], [a], [])
