from __future__ import annotations

import pytest

from objstore.checksum import checksum, matches
from objstore.keys import BLOCK_SIZE, block_key, block_sizes, parse_block_key, slice_block_keys


def test_block_key_roundtrip() -> None:
    for slice_id, index, size in [(1, 0, 1), (123456789, 15, BLOCK_SIZE), (2**40, 3, 77)]:
        assert parse_block_key(block_key(slice_id, index, size)) == (slice_id, index, size)


def test_consecutive_slices_spread_across_prefixes() -> None:
    prefixes = {block_key(i, 0, 10).split("/")[1] for i in range(1000)}
    assert len(prefixes) > 200


@pytest.mark.parametrize(
    "key",
    ["blocks/00/00/1_0_1", "chunks/1_0_1", "blocks/zz/00/1_0_1", "blocks/aa/bb/x_0_1", "a"],
)
def test_foreign_or_tampered_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        parse_block_key(key)


@pytest.mark.parametrize(("size", "index"), [(0, 0), (BLOCK_SIZE + 1, 0), (10, -1)])
def test_bad_block_ids_are_refused(size: int, index: int) -> None:
    with pytest.raises(ValueError):
        block_key(1, index, size)


def test_slices_cut_into_blocks() -> None:
    assert block_sizes(0) == []
    assert block_sizes(BLOCK_SIZE) == [BLOCK_SIZE]
    assert block_sizes(2 * BLOCK_SIZE + 5) == [BLOCK_SIZE, BLOCK_SIZE, 5]
    keys = slice_block_keys(9, BLOCK_SIZE + 1)
    assert [parse_block_key(k) for k in keys] == [(9, 0, BLOCK_SIZE), (9, 1, 1)]


def test_checksum_detects_a_flipped_bit() -> None:
    data = bytearray(b"x" * 4096)
    good = checksum(data)
    assert matches(data, good)
    data[100] ^= 1
    assert not matches(data, good)
    assert good.startswith("xxh3:")
