"""The on-disk shape of changelog segments: names, frame scanning and the sparse index sidecar.

A segment `seg-<first_version:020d>.log` holds the frames (`records.encode_frame`) of consecutive
versions from `first_version` on. Its sidecar `seg-<first_version:020d>.idx` holds the file offset
of every INDEX_STRIDE-th record, so opening a large log does not rescan it. The sidecar is a
cache: it carries its own checksum, every entry is checked against the frame it points at before
it is used, and a sidecar that disagrees with the data is ignored (the data is rescanned).
"""

from __future__ import annotations

import os
import re
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from volume.errors import FrameError
from volume.records import HEADER, MAX_FRAME_BYTES, decode_payload

log = structlog.get_logger(__name__)

INDEX_STRIDE = 256
READ_CHUNK_BYTES = 1024 * 1024
TMP_MARK = ".tmp-"

_NAME = re.compile(r"^seg-(\d{20})\.log$")
_IDX_MAGIC = b"MFSIDX01"
_IDX_HEAD = struct.Struct(">8sQQQI")  # magic, first_version, covered_bytes, records, stride
_CRC = struct.Struct(">I")
# encode_payload packs {"version", "ts", "op", "effect", "ends_request"} in that order:
# fixmap(5), fixstr(7). A payload laid out otherwise (e.g. the 4-key maps written before
# request boundaries) is decoded in full instead.
_VERSION_KEY = b"\x85\xa7version"
_VERSION_AT = len(_VERSION_KEY)
_UINT = {0xCC: struct.Struct(">B"), 0xCD: struct.Struct(">H"), 0xCE: struct.Struct(">I")}
_UINT[0xCF] = struct.Struct(">Q")
_PROBE_BYTES = HEADER.size + len(_VERSION_KEY) + 9


def segment_path(directory: Path, first_version: int) -> Path:
    return directory / f"seg-{first_version:020d}.log"


def index_path(segment: Path) -> Path:
    return segment.with_suffix(".idx")


def parse_segment_name(name: str) -> int | None:
    """The first version a segment file name stands for, or None if it is not a segment."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def list_segments(directory: Path) -> list[int]:
    """First versions of the segments in `directory`, in order; removes the leftovers of a
    crash (temporary sidecars, sidecars of deleted segments)."""
    firsts: list[int] = []
    for entry in os.scandir(directory):
        if TMP_MARK in entry.name:
            Path(entry.path).unlink(missing_ok=True)
        elif (first := parse_segment_name(entry.name)) is not None:
            firsts.append(first)
    for entry in os.scandir(directory):
        if entry.name.endswith(".idx") and not Path(entry.path).with_suffix(".log").exists():
            Path(entry.path).unlink(missing_ok=True)
    return sorted(firsts)


def index_entries(records: int) -> int:
    """How many index entries cover `records` records (one per started stride)."""
    return (records + INDEX_STRIDE - 1) // INDEX_STRIDE


def _fast_version(buf: bytes, start: int, end: int) -> int | None:
    """The version field read straight from the msgpack bytes, or None if it is not laid out
    the way encode_payload lays it out (then the payload must be decoded)."""
    p = start + _VERSION_AT
    if p >= end or not buf.startswith(_VERSION_KEY, start):
        return None
    tag = buf[p]
    if tag < 0x80:
        return tag
    uint = _UINT.get(tag)
    if uint is None or p + 1 + uint.size > end:
        return None
    value: int = uint.unpack_from(buf, p + 1)[0]
    return value


def payload_version(buf: bytes, start: int, end: int) -> int:
    """The version of the record whose payload is buf[start:end], decoding only what it must."""
    version = _fast_version(buf, start, end)
    if version is None:
        version = decode_payload(buf[start:end]).version
    return version


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        data = os.pread(fd, size, offset)
        if not data:
            break
        parts.append(data)
        size -= len(data)
        offset += len(data)
    return b"".join(parts)


def iter_frame_runs(fd: int, start: int, limit: int) -> Iterator[tuple[bytes, int, list[int]]]:
    """The whole frames in the file range [start, limit), a read buffer at a time.

    Yields (buffer, base, bounds): frame i is buffer[bounds[i]:bounds[i + 1]] (header included),
    at file offset base + bounds[i], its checksum verified; each run continues where the last
    ended. A bad length or checksum, or a frame cut by `limit`, raises FrameError naming the
    file offset, after the good frames before it were yielded.
    """
    base = start  # file offset of buf[0]
    buf = b""
    p = 0
    head = HEADER.size
    need = head
    unpack = HEADER.unpack_from
    crc32 = zlib.crc32
    while base + p < limit:
        if len(buf) - p < need:
            buf, base, p = _refill(fd, buf, base, p, limit, need)
        view = memoryview(buf)
        size = len(buf)
        bounds = [p]
        need = head
        error: str | None = None
        while p + head <= size:
            length, crc = unpack(buf, p)
            if length > MAX_FRAME_BYTES:
                error = f"frame at offset {base + p} claims {length} bytes"
                break
            end = p + head + length
            if end > size:
                need = head + length
                break
            if crc32(view[p + head : end]) != crc:
                error = f"frame at offset {base + p} fails its checksum"
                break
            p = end
            bounds.append(p)
        if len(bounds) > 1:
            yield buf, base, bounds
        if error is not None:
            raise FrameError(error)


def _refill(
    fd: int, buf: bytes, base: int, p: int, limit: int, need: int
) -> tuple[bytes, int, int]:
    """Keep buf[p:] and read on, so at least `need` bytes from p are buffered (or FrameError)."""
    have = len(buf) - p
    file_pos = base + len(buf)
    want = min(max(need - have, READ_CHUNK_BYTES), limit - file_pos)
    data = _pread_exact(fd, want, file_pos) if want > 0 else b""
    new = buf[p:] + data
    if len(new) < need:
        raise FrameError(f"frame at offset {base + p} is cut short ({len(new)} of {need} bytes)")
    return new, base + p, 0


def version_at(fd: int, offset: int) -> int | None:
    """The version of the frame at `offset`, or None if no intact frame starts there."""
    probe = os.pread(fd, _PROBE_BYTES, offset)
    if len(probe) < HEADER.size:
        return None
    length, crc = HEADER.unpack_from(probe)
    if length > MAX_FRAME_BYTES:
        return None
    version = _fast_version(probe, HEADER.size, min(len(probe), HEADER.size + length))
    if version is not None:
        return version
    frame = _pread_exact(fd, HEADER.size + length, offset)
    payload = frame[HEADER.size :]
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    try:
        return decode_payload(payload).version
    except FrameError:
        return None


@dataclass(frozen=True, slots=True)
class SegmentIndex:
    """Offsets of records 0, STRIDE, 2*STRIDE, ... of the first `records` records of a segment,
    which end at byte `covered_bytes`."""

    covered_bytes: int
    records: int
    offsets: array[int]


def write_index(segment: Path, first_version: int, index: SegmentIndex) -> None:
    """Replace the sidecar atomically. Not fsynced: a lost or stale sidecar only costs a scan."""
    count = index_entries(index.records)
    entries = array("Q", index.offsets[:count])
    if sys.byteorder == "little":
        entries.byteswap()
    body = (
        _IDX_HEAD.pack(_IDX_MAGIC, first_version, index.covered_bytes, index.records, INDEX_STRIDE)
        + entries.tobytes()
    )
    target = index_path(segment)
    tmp = target.with_name(f"{target.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")
    tmp.write_bytes(body + _CRC.pack(zlib.crc32(body)))
    os.replace(tmp, target)


def read_index(segment: Path, first_version: int) -> SegmentIndex | None:
    """The sidecar of `segment` if it is present and well-formed (not yet checked against data)."""
    try:
        data = index_path(segment).read_bytes()
    except OSError:
        return None
    if len(data) < _IDX_HEAD.size + _CRC.size:
        return None
    body, (crc,) = data[: -_CRC.size], _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(body) != crc:
        return None
    magic, first, covered, records, stride = _IDX_HEAD.unpack_from(body)
    entries = body[_IDX_HEAD.size :]
    if magic != _IDX_MAGIC or first != first_version or stride != INDEX_STRIDE:
        return None
    if len(entries) != 8 * index_entries(records):
        return None
    offsets = array("Q")
    offsets.frombytes(entries)
    if sys.byteorder == "little":
        offsets.byteswap()
    return SegmentIndex(covered, records, offsets)


def check_index(fd: int, first_version: int, index: SegmentIndex, file_size: int) -> bool:
    """True if every entry points at an intact-looking frame of the version it claims."""
    if index.covered_bytes > file_size or (index.records == 0) != (index.covered_bytes == 0):
        return False
    previous = -1
    for i, offset in enumerate(index.offsets):
        if offset <= previous or offset >= index.covered_bytes or (i == 0 and offset != 0):
            return False
        if version_at(fd, offset) != first_version + i * INDEX_STRIDE:
            return False
        previous = offset
    return True


@dataclass(slots=True)
class SegmentScan:
    """What a scan of one segment found: its index, where its last good frame ends, and why
    the scan stopped early (`problem`), if it did."""

    index: SegmentIndex
    last_payload: bytes | None
    problem: str | None


def scan_segment(
    fd: int, first_version: int, file_size: int, resume: SegmentIndex | None, *, strict: bool
) -> SegmentScan:
    """Walk a segment's frames, checking checksums and that versions run on from first_version.

    With `resume` (a checked index), start at its last entry instead of byte 0. With `strict`, a
    bad frame raises FrameError; otherwise the scan stops there and reports it in `problem`.
    """
    offsets: array[int] = array("Q")
    records = 0
    start = 0
    if resume is not None and len(resume.offsets):
        offsets = array("Q", resume.offsets[: index_entries(resume.records)])
        records = (len(offsets) - 1) * INDEX_STRIDE
        start = offsets[-1]
    end_offset = start
    last: tuple[bytes, int, int] | None = None
    problem: str | None = None
    try:
        for buf, base, bounds in iter_frame_runs(fd, start, file_size):
            for k in range(len(bounds) - 1):
                frame_start, frame_end = bounds[k], bounds[k + 1]
                version = payload_version(buf, frame_start + HEADER.size, frame_end)
                if version != first_version + records:
                    raise FrameError(
                        f"frame at offset {base + frame_start} holds version {version}, "
                        f"expected {first_version + records}"
                    )
                if records % INDEX_STRIDE == 0 and records // INDEX_STRIDE == len(offsets):
                    offsets.append(base + frame_start)
                records += 1
                end_offset = base + frame_end
                last = (buf, frame_start, frame_end)
    except FrameError as exc:
        if strict:
            raise
        problem = exc.message
    payload = last[0][last[1] + HEADER.size : last[2]] if last is not None else None
    return SegmentScan(SegmentIndex(end_offset, records, offsets), payload, problem)


def recover_tail(path: Path, first_version: int, *, fsync: bool) -> tuple[SegmentScan, int]:
    """Scan the last segment of a log (from its sidecar checkpoint on) and cut off a torn tail:
    a cut frame, a bad checksum or a version out of sequence, and everything after it.

    Returns the scan and how many bytes the sidecar covered (0 if none was usable).
    """
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        resume = read_index(path, first_version)
        if resume is not None and not check_index(fd, first_version, resume, size):
            log.info("changelog.segment_index_ignored", path=str(path))
            resume = None
        scan = scan_segment(fd, first_version, size, resume, strict=False)
        good = scan.index.covered_bytes
        if good < size:
            log.warning(
                "changelog.torn_tail_truncated",
                path=str(path),
                offset=good,
                dropped_bytes=size - good,
                reason=scan.problem,
                last_version=first_version + scan.index.records - 1,
            )
            os.ftruncate(fd, good)
            if fsync:
                os.fsync(fd)
    finally:
        os.close(fd)
    return scan, resume.covered_bytes if resume is not None else 0


def first_frame(fd: int, file_size: int) -> bytes | None:
    """The payload of a segment's first frame, or None if there is no intact one."""
    try:
        for buf, _base, bounds in iter_frame_runs(fd, 0, file_size):
            return buf[bounds[0] + HEADER.size : bounds[1]]
    except FrameError:
        return None
    return None


def unlink_segment(segment: Path) -> None:
    """Remove a segment and its sidecar; either being gone already is fine."""
    segment.unlink(missing_ok=True)
    index_path(segment).unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_all(segments: Sequence[Path]) -> None:
    """Oldest first, so a crash part-way leaves a contiguous suffix of the log."""
    for segment in segments:
        unlink_segment(segment)
