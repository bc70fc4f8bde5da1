"""Records and frames: the request boundary travels with each record, old frames still decode."""

from __future__ import annotations

import msgpack
import pytest

from volume.errors import FrameError
from volume.records import FrameDecoder, Record, decode_payload, encode_frame, request_end


def test_ends_request_round_trips_and_defaults_to_true() -> None:
    records = [
        Record(1, 10, "create", {"ino": 2}, ends_request=False),
        Record(2, 10, "write", {"ino": 2}, ends_request=False),
        Record(3, 10, "truncate", {"ino": 2}),
        Record(4, 11, "tick"),
    ]
    stream = b"".join(encode_frame(r) for r in records)
    assert list(FrameDecoder().feed(stream)) == records
    assert Record(5, 1, "tick").ends_request is True
    assert records[0].to_dict()["ends_request"] is False


def test_a_payload_without_the_field_ends_its_request() -> None:
    """Frames written before request boundaries existed hold a 4-key map."""
    old = msgpack.packb({"version": 7, "ts": 1, "op": "mkdir", "effect": {}}, use_bin_type=True)
    assert decode_payload(old) == Record(7, 1, "mkdir", {}, ends_request=True)


def test_a_non_bool_boundary_is_a_frame_error() -> None:
    bad = msgpack.packb(
        {"version": 7, "ts": 1, "op": "mkdir", "effect": {}, "ends_request": 1},
        use_bin_type=True,
    )
    with pytest.raises(FrameError, match="ends_request"):
        decode_payload(bad)


def test_request_end_finds_the_last_boundary() -> None:
    def recs(*ends: bool) -> list[Record]:
        return [Record(i + 1, 1, "mkdir", {}, ends_request=e) for i, e in enumerate(ends)]

    assert request_end([]) == 0
    assert request_end(recs(False, False)) == 0
    assert request_end(recs(True, False, False)) == 1
    assert request_end(recs(False, True, True, False)) == 3
    assert request_end(recs(True)) == 1
