"""Changelog records and the frame format they travel and rest in.

A record is the *effect* of one applied mutation, so a mirror applies it without re-deriving
anything. The same frame is used on disk (segment files) and on the wire (`/v1/changelog`):

    frame   = length:u32be | crc32:u32be | payload
    payload = msgpack map {"version", "ts", "op", "effect", "ends_request"}, in that order

The checksum covers the payload; a frame that is short, too long or fails its checksum raises
FrameError and is never handed to an applier.

Request boundaries. A client request (a `put` is create + truncate + writes) commits all or
nothing at the source and yields one record per op, with contiguous versions and one `ts`.
`ends_request` is true on a request's last record only (a single-op request, a tick and a
mirror registry record end their own), so the changelog is a sequence of whole requests and
every consumer can tell where one ends: a mirror applies only whole requests in a transaction
(its watermark always stands at a boundary, and a snapshot is always taken at one), and the
source answers a retried request from its records. A payload without the key (written before
boundaries existed) ends its request. A request holds at most MAX_RECORDS_PER_REQUEST records,
so a reader holding back a partial request needs bounded room.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from volume.errors import FrameError

HEADER = struct.Struct(">II")
MAX_FRAME_BYTES = 64 * 1024 * 1024  # a record bigger than this is a corrupt length field
# The most ops (so records) one request may carry: the source's API refuses more, and a mirror
# holding back an incomplete request never needs room for more.
MAX_RECORDS_PER_REQUEST = 10_000

# Op names of records with no namespace effect (see volume/effects.py).
TICK = "tick"
MIRROR_REGISTER = "mirror_register"
MIRROR_ACK = "mirror_ack"
MIRROR_REMOVE = "mirror_remove"
MIRROR_OPS = (MIRROR_REGISTER, MIRROR_ACK, MIRROR_REMOVE)


@dataclass(frozen=True, slots=True)
class Record:
    """One changelog entry. `version` is contiguous from 1; `ts` is source ms, non-decreasing;
    `ends_request` marks the last record of a request (see the module docstring)."""

    version: int
    ts: int
    op: str
    effect: dict[str, Any] = field(default_factory=dict)
    ends_request: bool = True

    @property
    def is_tick(self) -> bool:
        return self.op == TICK

    def to_dict(self) -> dict[str, Any]:
        # Key order is the frame layout (changelog/log/files.py reads "version" in place).
        return {
            "version": self.version,
            "ts": self.ts,
            "op": self.op,
            "effect": self.effect,
            "ends_request": self.ends_request,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        ends = data.get("ends_request", True)
        if not isinstance(ends, bool):
            raise FrameError(f"record has a bad shape: ends_request is {ends!r}, not a bool")
        try:
            return cls(
                int(data["version"]), int(data["ts"]), str(data["op"]), dict(data["effect"]), ends
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FrameError(f"record has a bad shape: {exc!r}") from exc


def request_end(records: Sequence[Record]) -> int:
    """How many of `records` (consecutive) form whole requests: the index just after the last
    record that ends its request, 0 if none does. The rest is an incomplete request."""
    for i in range(len(records) - 1, -1, -1):
        if records[i].ends_request:
            return i + 1
    return 0


def encode_payload(record: Record) -> bytes:
    data: bytes = msgpack.packb(record.to_dict(), use_bin_type=True)
    return data


def encode_frame(record: Record) -> bytes:
    payload = encode_payload(record)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> Record:
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FrameError(f"record payload is not msgpack: {exc}") from exc
    if not isinstance(data, dict):
        raise FrameError("record payload is not a map")
    return Record.from_dict(data)


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, take whole verified records out.

    Raises FrameError on a bad length or checksum; after that the stream must be dropped
    (the bytes that follow cannot be trusted to start on a frame boundary).
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Record]:
        self._buf += data
        pos = 0
        buf = self._buf
        try:
            while len(buf) - pos >= HEADER.size:
                length, crc = HEADER.unpack_from(buf, pos)
                if length > MAX_FRAME_BYTES:
                    raise FrameError(f"frame length {length} exceeds {MAX_FRAME_BYTES}")
                end = pos + HEADER.size + length
                if end > len(buf):
                    break
                payload = bytes(buf[pos + HEADER.size : end])
                if zlib.crc32(payload) != crc:
                    raise FrameError("frame checksum mismatch")
                pos = end
                yield decode_payload(payload)
        finally:
            del buf[:pos]

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame; non-zero at end of stream means a truncated frame."""
        return len(self._buf)

    def finish(self) -> None:
        """Call at end of stream: raises FrameError if a frame was cut short."""
        if self._buf:
            raise FrameError(f"stream ended inside a frame ({len(self._buf)} bytes left)")
