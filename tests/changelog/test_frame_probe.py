"""The segment log reads a record's version straight from its bytes (the fast path), and falls
back to a full decode for a payload laid out otherwise (e.g. a 4-key map from before request
boundaries)."""

from __future__ import annotations

import msgpack
import pytest

from changelog.log import files
from volume.records import HEADER, Record, encode_frame


@pytest.mark.parametrize(
    "version", [1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**40]
)
def test_fast_path_reads_the_version_of_every_width(version: int) -> None:
    frame = encode_frame(Record(version, 5, "write", {"ino": 2}, ends_request=False))
    assert files._fast_version(frame, HEADER.size, len(frame)) == version
    assert files.payload_version(frame, HEADER.size, len(frame)) == version


def test_other_layouts_fall_back_to_a_full_decode() -> None:
    old = msgpack.packb({"version": 300, "ts": 1, "op": "tick", "effect": {}}, use_bin_type=True)
    assert files._fast_version(old, 0, len(old)) is None
    assert files.payload_version(old, 0, len(old)) == 300
    reordered = msgpack.packb(
        {"ts": 1, "version": 301, "op": "tick", "effect": {}, "ends_request": True},
        use_bin_type=True,
    )
    assert files._fast_version(reordered, 0, len(reordered)) is None
    assert files.payload_version(reordered, 0, len(reordered)) == 301
