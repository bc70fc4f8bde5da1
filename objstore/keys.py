"""Where blocks live in a bucket.

A block key is derived from (slice id, block index, size) and never reused:

    blocks/<h1>/<h2>/<slice_id>_<index>_<size>

`h1/h2` are two hex bytes of a hash of the slice id. Consecutive slice ids land far apart, so
S3's key-range partitions share the load (sequential prefixes hot-spot one partition) and a
listing by prefix can be split 65,536 ways for a parallel scan.
"""

from __future__ import annotations

import re

import xxhash

BLOCK_SIZE = 4 * 1024 * 1024
BLOCK_PREFIX = "blocks/"
_KEY_RE = re.compile(r"^blocks/([0-9a-f]{2})/([0-9a-f]{2})/(\d+)_(\d+)_(\d+)$")


def _spread(slice_id: int) -> str:
    h = xxhash.xxh32_intdigest(slice_id.to_bytes(8, "little"))
    return f"{h & 0xFF:02x}/{(h >> 8) & 0xFF:02x}"


def block_key(slice_id: int, index: int, size: int) -> str:
    if slice_id < 0 or index < 0 or not 0 < size <= BLOCK_SIZE:
        raise ValueError(f"bad block id slice={slice_id} index={index} size={size}")
    return f"{BLOCK_PREFIX}{_spread(slice_id)}/{slice_id}_{index}_{size}"


def parse_block_key(key: str) -> tuple[int, int, int]:
    """(slice_id, index, size) of a block key; ValueError for anything else."""
    m = _KEY_RE.match(key)
    if not m or f"{m.group(1)}/{m.group(2)}" != _spread(int(m.group(3))):
        raise ValueError(f"not a block key: {key!r}")
    return int(m.group(3)), int(m.group(4)), int(m.group(5))


def block_sizes(slice_size: int) -> list[int]:
    """Sizes of the blocks a slice of `slice_size` bytes is cut into."""
    full, rest = divmod(slice_size, BLOCK_SIZE)
    return [BLOCK_SIZE] * full + ([rest] if rest else [])


def slice_block_keys(slice_id: int, slice_size: int) -> list[str]:
    return [block_key(slice_id, i, n) for i, n in enumerate(block_sizes(slice_size))]
