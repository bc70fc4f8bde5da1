"""Chunk arithmetic: which slice bytes a reader sees, which blocks hold them, which refs are dead.

Pure functions over SliceRef lists (write order, newer later, newer covers older). The namespace
uses the same code to drop refs a write made invisible, so what a reader computes and what the
namespace keeps can never disagree.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from volume.inode import BLOCK_SIZE, BlockRange, Extent, SliceRef

_HOLE = -1


def _segments(slices: Sequence[SliceRef], chunk_len: int) -> tuple[list[int], list[int]]:
    """Tile [0, chunk_len) by the newest covering ref: (segment starts, owner index or -1).

    Each ref cuts its window into a sorted tiling; the list splice runs in C, so a chunk of
    thousands of small appends stays fast (no per-byte or all-pairs work).
    """
    starts = [0]
    owners = [_HOLE]
    if chunk_len <= 0:
        return [], []
    for idx, ref in enumerate(slices):
        a = max(ref.pos, 0)
        b = min(ref.pos + ref.len, chunk_len)
        if a >= b:
            continue
        i = bisect_right(starts, a) - 1  # segment holding a
        j = bisect_left(starts, b)  # first segment starting at or after b
        new_starts = [a]
        new_owners = [idx]
        if starts[i] < a:
            new_starts.insert(0, starts[i])
            new_owners.insert(0, owners[i])
        # the segment j-1 holds b-1; if it runs past b, its tail survives from b on
        seg_end = starts[j] if j < len(starts) else chunk_len
        if seg_end > b:
            new_starts.append(b)
            new_owners.append(owners[j - 1])
        starts[i:j] = new_starts
        owners[i:j] = new_owners
    return starts, owners


def visible_extents(slices: Sequence[SliceRef], chunk_len: int) -> list[Extent]:
    """The extents a reader of [0, chunk_len) of a chunk sees, in position order.

    `slices` is the chunk's ref list in write order. The result covers [0, chunk_len) exactly,
    without overlaps or empty extents; holes read as zeros. Parts of refs past chunk_len (the
    file is shorter than the chunk) are cut off. Empty for chunk_len <= 0.
    """
    starts, owners = _segments(slices, chunk_len)
    out: list[Extent] = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else chunk_len
        owner = owners[k]
        if owner == _HOLE:
            out.append(Extent(pos=start, length=end - start))
        else:
            ref = slices[owner]
            out.append(
                Extent(
                    pos=start,
                    length=end - start,
                    slice_id=ref.id,
                    slice_size=ref.size,
                    slice_off=ref.off + (start - ref.pos),
                )
            )
    return out


def block_ranges(extent: Extent, block_size: int = BLOCK_SIZE) -> list[BlockRange]:
    """Which blocks of the extent's slice object hold its bytes, in order; [] for a hole.

    Block i of a slice holds slice bytes [i*block_size, min(size, (i+1)*block_size)).
    `block_size` is a parameter only so tests can use tiny blocks.
    """
    if extent.slice_id is None or extent.length <= 0:
        return []
    start = extent.slice_off
    end = start + extent.length
    out: list[BlockRange] = []
    for index in range(start // block_size, (end - 1) // block_size + 1):
        lo = index * block_size
        hi = min(extent.slice_size, lo + block_size)
        a = max(start, lo)
        b = min(end, hi)
        out.append(BlockRange(index=index, offset=a - lo, length=b - a, block_size=hi - lo))
    return out


def invisible_indices(slices: Sequence[SliceRef], chunk_len: int) -> list[int]:
    """Indices (ascending) of refs that contribute no byte to [0, chunk_len)."""
    _, owners = _segments(slices, chunk_len)
    seen = set(owners)
    return [i for i in range(len(slices)) if i not in seen]


def covered_by_last(slices: Sequence[SliceRef], chunk_len: int) -> list[int]:
    """Indices of older refs the newest ref (the last one) made completely invisible.

    Cheap path first: refs disjoint from the newest one cannot have changed, refs inside it are
    gone. Only when some ref overlaps it partly does the full tiling run (an older ref may be
    covered by the newest one together with refs in between).
    """
    if not slices:
        return []
    new = slices[-1]
    a, b = new.pos, new.pos + new.len
    inside: list[int] = []
    partial = False
    for i in range(len(slices) - 1):
        ref = slices[i]
        if ref.pos >= b or ref.pos + ref.len <= a:
            continue
        if ref.pos >= a and ref.pos + ref.len <= b:
            inside.append(i)
        else:
            partial = True
    if partial:
        return invisible_indices(slices, chunk_len)
    return inside


def clip_chunk(
    slices: Sequence[SliceRef], boundary: int
) -> tuple[list[SliceRef], list[SliceRef], list[SliceRef]]:
    """Cut a chunk's refs at chunk position `boundary` (truncate): (kept, dropped, clipped).

    Refs starting at or past the boundary are dropped; refs crossing it get a shorter `len`
    (same id, same place in the order). `kept` is the new list in order, clipped refs included
    in their new form; `clipped` lists those new forms.
    """
    kept: list[SliceRef] = []
    dropped: list[SliceRef] = []
    clipped: list[SliceRef] = []
    for ref in slices:
        if ref.pos >= boundary:
            dropped.append(ref)
        elif ref.pos + ref.len > boundary:
            new = SliceRef(
                id=ref.id, size=ref.size, off=ref.off, len=boundary - ref.pos, pos=ref.pos
            )
            kept.append(new)
            clipped.append(new)
        else:
            kept.append(ref)
    return kept, dropped, clipped
