"""The segment log keeps a contiguous, verified prefix of the changelog through replays, resets,
retention, torn tails, corruption, concurrent readers and kill -9."""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from changelog.log import files as segment_files
from changelog.log.files import SegmentIndex, read_index, write_index
from changelog.log.segments import SegmentGapError, SegmentLog
from volume.errors import ChangelogError, FrameError, VersionGoneError
from volume.records import FrameDecoder, Record, encode_frame

REPO = Path(__file__).resolve().parents[2]


def rec(v: int) -> Record:
    """A record whose content is a function of its version, of varying size."""
    if v % 11 == 0:
        return Record(v, 1_000_000 + v, "tick")
    return Record(
        v, 1_000_000 + v, "create", {"name": f"f{v}", "ino": v + 1, "pad": "x" * (v % 37)}
    )


def recs(first: int, last: int) -> list[Record]:
    return [rec(v) for v in range(first, last + 1)]


def seg_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def build(directory: Path, last: int, *, segment_bytes: int = 2048) -> SegmentLog:
    log = SegmentLog.open(directory, segment_bytes=segment_bytes, fsync=False)
    for start in range(1, last + 1, 100):
        log.append(recs(start, min(start + 99, last)))
    log.sync()
    return log


def reopen(directory: Path, *, segment_bytes: int = 2048) -> SegmentLog:
    return SegmentLog.open(directory, segment_bytes=segment_bytes, fsync=False)


def decode_frames(chunks: Iterator[bytes]) -> list[Record]:
    decoder = FrameDecoder()
    out: list[Record] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
        assert decoder.pending_bytes == 0, "a chunk ended inside a frame"
    return out


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


# --- append and read ---


def test_round_trip_across_segments(tmp_path: Path) -> None:
    log = build(tmp_path, 2000)
    assert len(seg_files(tmp_path)) > 10
    assert (log.first_version, log.last_version, log.readable_version) == (1, 2000, 2000)
    assert log.last_ts == rec(2000).ts
    assert log.records_bytes == sum(p.stat().st_size for p in seg_files(tmp_path))
    assert list(log.read_from(1)) == recs(1, 2000)
    assert decode_frames(log.read_frames_from(1)) == recs(1, 2000)
    log.close()
    log = reopen(tmp_path)
    assert (log.first_version, log.last_version, log.last_ts) == (1, 2000, rec(2000).ts)
    assert list(log.read_from(1)) == recs(1, 2000)
    log.close()


def test_fsync_mode_round_trip(tmp_path: Path) -> None:
    log = SegmentLog.open(tmp_path, segment_bytes=4096, fsync=True)
    for start in range(1, 1001, 250):
        log.append(recs(start, start + 249))
        log.sync()
    log.close()
    log = SegmentLog.open(tmp_path, segment_bytes=4096, fsync=True)
    assert list(log.read_from(1)) == recs(1, 1000)
    log.close()


def test_failed_write_leaves_no_partial_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = build(tmp_path, 100, segment_bytes=1 << 20)
    path = seg_files(tmp_path)[-1]
    size = path.stat().st_size
    log.append(recs(101, 200))
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(OSError):
        log.flush()
    monkeypatch.undo()
    assert path.stat().st_size == size
    assert list(log.read_from(1)) == recs(1, 100)
    log.flush()  # the disk has room again: the buffered records go out whole
    assert list(log.read_from(1)) == recs(1, 200)
    log.close()
    log = reopen(tmp_path, segment_bytes=1 << 20)
    assert list(log.read_from(1)) == recs(1, 200)
    log.close()


def test_failed_fsync_fails_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentLog.open(tmp_path, fsync=True)
    log.append(recs(1, 10))

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError):
        log.sync()
    monkeypatch.undo()
    with pytest.raises(ChangelogError, match="fsync failed"):
        log.append(recs(11, 12))
    assert list(log.read_from(1)) == recs(1, 10)  # what reached the OS is still readable
    log.close()


def test_records_are_readable_after_flush_not_before(tmp_path: Path) -> None:
    log = SegmentLog.open(tmp_path, fsync=False)
    log.append(recs(1, 10))
    assert log.last_version == 10
    assert log.readable_version == 0
    assert list(log.read_from(1)) == []
    log.flush()
    assert list(log.read_from(1)) == recs(1, 10)
    log.close()


def test_idempotent_reappend_of_overlapping_range(tmp_path: Path) -> None:
    log = build(tmp_path, 100)
    assert log.append(recs(50, 150)) == 50
    assert log.append(recs(1, 150)) == 0
    assert log.append([]) == 0
    log.close()
    log = reopen(tmp_path)  # a journal replay after restart re-applies old entries
    assert log.append(recs(1, 160)) == 10
    log.sync()
    assert list(log.read_from(1)) == recs(1, 160)
    log.close()


def test_gap_raises_and_writes_nothing(tmp_path: Path) -> None:
    log = build(tmp_path, 10)
    with pytest.raises(SegmentGapError) as info:
        log.append([rec(12)])
    assert (info.value.expected, info.value.got) == (11, 12)
    with pytest.raises(SegmentGapError):
        log.append([rec(11), rec(13)])
    assert log.last_version == 10
    log.append([rec(11)])
    log.sync()
    assert list(log.read_from(1)) == recs(1, 11)
    log.close()


def test_fresh_log_is_empty_and_may_start_anywhere(tmp_path: Path) -> None:
    log = SegmentLog.open(tmp_path / "new", fsync=False)
    assert (log.first_version, log.last_version, log.last_ts) == (0, 0, 0)
    assert list(log.read_from(1)) == []
    log.append(recs(100, 120))
    log.sync()
    assert (log.first_version, log.last_version) == (100, 120)
    with pytest.raises(VersionGoneError) as info:
        log.read_from(99)
    assert (info.value.requested, info.value.first_available) == (99, 100)
    assert list(log.read_from(100)) == recs(100, 120)
    log.close()


def test_closed_log_refuses_writes(tmp_path: Path) -> None:
    log = build(tmp_path, 5)
    log.close()
    log.close()
    with pytest.raises(ChangelogError):
        log.append([rec(6)])
    assert list(log.read_from(1)) == recs(1, 5)


@pytest.mark.parametrize(
    "where",
    [
        "first",
        "middle",
        "last_of_first_segment",
        "first_of_second_segment",
        "in_second_segment",
        "last",
        "stride_boundary",
    ],
)
def test_read_from_every_boundary(tmp_path: Path, where: str) -> None:
    log = build(tmp_path, 3000, segment_bytes=64 * 1024)
    second = int(seg_files(tmp_path)[1].name[4:24])
    version = {
        "first": 1,
        "middle": 1500,
        "last_of_first_segment": second - 1,
        "first_of_second_segment": second,
        "in_second_segment": second + 300,
        "last": 3000,
        "stride_boundary": second + 256,
    }[where]
    assert list(log.read_from(version)) == recs(version, 3000)
    assert list(log.read_from(version, max_records=3)) == recs(version, min(version + 2, 3000))
    assert decode_frames(log.read_frames_from(version)) == recs(version, 3000)
    small = decode_frames(log.read_frames_from(version, max_bytes=200))
    assert small == recs(version, version + len(small) - 1)
    assert len(small) >= 1 and sum(len(encode_frame(r)) for r in small) <= max(
        200, len(encode_frame(rec(version)))
    )
    log.close()


def test_read_beyond_last_yields_nothing(tmp_path: Path) -> None:
    log = build(tmp_path, 100)
    assert list(log.read_from(101)) == []
    assert list(log.read_frames_from(10_000)) == []
    assert list(log.read_from(5, max_records=0)) == []
    log.close()


# --- reset and retention ---


def test_reset_drops_everything_and_restarts_at_start_version(tmp_path: Path) -> None:
    log = build(tmp_path, 500)
    log.reset(1000)
    assert (log.first_version, log.last_version) == (1000, 999)
    with pytest.raises(VersionGoneError) as info:
        log.read_from(500)
    assert info.value.first_available == 1000
    assert list(log.read_from(1000)) == []
    log.close()
    log = reopen(tmp_path)  # the restart point survives a restart with nothing appended yet
    assert (log.first_version, log.last_version) == (1000, 999)
    with pytest.raises(SegmentGapError):
        log.append([rec(1001)])
    assert log.append(recs(990, 1010)) == 11
    log.sync()
    assert list(log.read_from(1000)) == recs(1000, 1010)
    assert [p.name for p in seg_files(tmp_path)] == [f"seg-{1000:020d}.log"]
    log.close()


def test_reset_stops_a_reader_in_flight(tmp_path: Path) -> None:
    log = build(tmp_path, 60_000, segment_bytes=64 * 1024 * 1024)  # one segment, many buffers
    reader = log.read_from(1)
    assert next(reader) == rec(1)
    log.reset(100_000)
    rest: list[Record] = []
    with pytest.raises(VersionGoneError):
        rest.extend(reader)
    assert rest == recs(2, 1 + len(rest))  # only what was already in its read buffer
    assert len(rest) < 30_000
    log.close()


def test_truncate_before_deletes_whole_old_segments(tmp_path: Path) -> None:
    log = build(tmp_path, 2000)
    files = seg_files(tmp_path)
    firsts = [int(p.name[4:24]) for p in files]
    assert log.truncate_before(firsts[3]) == 3
    assert log.first_version == firsts[3]
    assert log.truncate_before(firsts[3]) == 0
    assert seg_files(tmp_path) == files[3:]
    assert not list(tmp_path.glob(f"seg-{firsts[0]:020d}.*"))
    with pytest.raises(VersionGoneError) as info:
        log.read_from(firsts[3] - 1)
    assert info.value.first_available == firsts[3]
    assert list(log.read_from(firsts[3])) == recs(firsts[3], 2000)
    assert log.truncate_before(10**9) == len(files) - 4  # never the active segment
    assert log.first_version == firsts[-1]
    assert list(log.read_from(firsts[-1])) == recs(firsts[-1], 2000)
    log.append([rec(2001)])
    log.close()
    log = reopen(tmp_path)
    assert (log.first_version, log.last_version) == (firsts[-1], 2001)
    log.close()


def test_truncate_before_keeps_segments_younger_than_min_age(tmp_path: Path) -> None:
    now_ms = time.time_ns() // 1_000_000
    old = [Record(v, now_ms - 3_600_000, "tick") for v in range(1, 301)]
    new = [Record(v, now_ms, "tick") for v in range(301, 601)]
    log = SegmentLog.open(tmp_path, segment_bytes=1024, fsync=False)
    log.append(old)
    log.append(new)
    log.sync()
    firsts = [int(p.name[4:24]) for p in seg_files(tmp_path)]
    boundary = next(f for f in firsts if f > 300)  # first segment holding a young record
    dropped = log.truncate_before(600, min_age_s=600)
    assert log.first_version == firsts[firsts.index(boundary) - 1]
    assert dropped == firsts.index(boundary) - 1
    log.close()


# --- torn tails, corruption, sidecars ---


def _torn_tail(path: Path, kind: str, last: int) -> None:
    size = path.stat().st_size
    frame = encode_frame(rec(last))
    if kind == "cut_mid_frame":
        os.truncate(path, size - len(frame) // 2)
    elif kind == "cut_mid_header":
        os.truncate(path, size - len(frame) + 3)
    elif kind == "flipped_byte_in_last_frame":
        flip_byte(path, size - 2)
    elif kind == "garbage_appended":
        with path.open("ab") as f:
            f.write(b"\x00\x00\x00\x10" + b"junk" * 8)
    elif kind == "huge_length_appended":
        with path.open("ab") as f:
            f.write(b"\xff\xff\xff\xff\x00\x00\x00\x00rest")
    elif kind == "wrong_version_appended":
        with path.open("ab") as f:
            f.write(encode_frame(rec(last + 5)))
    elif kind == "zeros_appended":  # delayed allocation after a power loss
        with path.open("ab") as f:
            f.write(bytes(4096))
    elif kind == "duplicate_appended":
        with path.open("ab") as f:
            f.write(frame)


@pytest.mark.parametrize(
    ("kind", "lost"),
    [
        ("cut_mid_frame", 1),
        ("cut_mid_header", 1),
        ("flipped_byte_in_last_frame", 1),
        ("garbage_appended", 0),
        ("huge_length_appended", 0),
        ("wrong_version_appended", 0),
        ("duplicate_appended", 0),
        ("zeros_appended", 0),
    ],
)
def test_torn_tail_is_cut_off_on_open(tmp_path: Path, kind: str, lost: int) -> None:
    build(tmp_path, 3000, segment_bytes=64 * 1024).close()
    _torn_tail(seg_files(tmp_path)[-1], kind, 3000)
    log = reopen(tmp_path, segment_bytes=64 * 1024)
    kept = 3000 - lost
    assert log.last_version == kept
    assert list(log.read_from(1)) == recs(1, kept)
    last_file = seg_files(tmp_path)[-1]
    frames = recs(int(last_file.name[4:24]), kept)
    assert last_file.stat().st_size == sum(len(encode_frame(r)) for r in frames)
    log.append(recs(kept + 1, kept + 20))  # appending continues contiguously
    log.close()
    log = reopen(tmp_path, segment_bytes=64 * 1024)
    assert list(log.read_from(1)) == recs(1, kept + 20)
    log.close()


def test_empty_last_segment_after_crash_at_roll_is_removed(tmp_path: Path) -> None:
    build(tmp_path, 300).close()
    stray = tmp_path / f"seg-{301:020d}.log"
    stray.touch()
    log = reopen(tmp_path)
    assert not stray.exists()
    assert log.last_version == 300
    log.append(recs(301, 320))
    log.sync()
    assert list(log.read_from(1)) == recs(1, 320)
    log.close()


@pytest.mark.parametrize("sidecars", [True, False])
def test_corruption_inside_an_older_segment_is_a_frame_error(
    tmp_path: Path, sidecars: bool
) -> None:
    build(tmp_path, 3000, segment_bytes=16 * 1024).close()
    files = seg_files(tmp_path)
    victim = files[1]
    victim_last = int(files[2].name[4:24]) - 1
    flip_byte(victim, victim.stat().st_size // 2)
    if not sidecars:
        for idx in tmp_path.glob("*.idx"):
            idx.unlink()
    log = reopen(tmp_path, segment_bytes=16 * 1024)
    assert log.last_version == 3000  # open does not pay for scanning old segments
    got: list[Record] = []
    with pytest.raises(FrameError):
        for r in log.read_from(1):
            got.append(r)
    assert got == recs(1, len(got))
    assert len(got) < victim_last
    with pytest.raises(FrameError):
        list(log.read_frames_from(1))
    with pytest.raises(FrameError):
        list(log.read_from(len(got) + 1))
    assert list(log.read_from(victim_last + 1)) == recs(victim_last + 1, 3000)
    log.close()


def test_sidecar_is_never_trusted_over_the_data(tmp_path: Path) -> None:
    log = build(tmp_path, 3000, segment_bytes=64 * 1024)
    while log.last_version - int(seg_files(tmp_path)[-1].name[4:24]) < 600:
        log.append(recs(log.last_version + 1, log.last_version + 100))
    last = log.last_version
    log.close()
    files = seg_files(tmp_path)
    for path in (files[0], files[-1]):  # an old segment and the last one
        first = int(path.name[4:24])
        index = read_index(path, first)
        assert index is not None and len(index.offsets) >= 3
        offsets = index.offsets[:]
        # a well-formed sidecar that lies: entry 1 points at the frame after the right one
        offsets[1] += len(encode_frame(rec(first + 256)))
        write_index(path, first, SegmentIndex(index.covered_bytes, index.records, offsets))
    (tmp_path / f"seg-{int(files[1].name[4:24]):020d}.idx").write_bytes(b"not an index")
    log = reopen(tmp_path, segment_bytes=64 * 1024)
    assert log.last_version == last
    second, final = int(files[1].name[4:24]), int(files[-1].name[4:24])
    for version in (1, 257, 300, 600, second + 300, final + 256, final + 300, last):
        assert list(log.read_from(version, max_records=50)) == recs(
            version, min(last, version + 49)
        )
    log.close()


def test_open_scans_only_the_last_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path, 6000, segment_bytes=16 * 1024).close()
    scanned: list[int] = []
    real = segment_files.scan_segment

    def counting(fd: int, first: int, *args: object, **kwargs: object) -> object:
        scanned.append(first)
        return real(fd, first, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(segment_files, "scan_segment", counting)
    log = reopen(tmp_path, segment_bytes=16 * 1024)
    assert scanned == [int(seg_files(tmp_path)[-1].name[4:24])]
    log.close()


def test_missing_sidecars_are_rebuilt_on_read(tmp_path: Path) -> None:
    build(tmp_path, 3000, segment_bytes=16 * 1024).close()
    for idx in tmp_path.glob("*.idx"):
        idx.unlink()
    log = reopen(tmp_path, segment_bytes=16 * 1024)
    assert list(log.read_from(1)) == recs(1, 3000)
    sealed = seg_files(tmp_path)[:-1]
    assert all(p.with_suffix(".idx").exists() for p in sealed)
    log.close()
    assert seg_files(tmp_path)[-1].with_suffix(".idx").exists()


# --- concurrency and crashes ---


def test_concurrent_readers_see_a_contiguous_stream(tmp_path: Path) -> None:
    total = 50_000
    log = SegmentLog.open(tmp_path, segment_bytes=256 * 1024, fsync=False)
    problems: list[str] = []
    reached: dict[str, int] = {}
    deadline = time.monotonic() + 120

    def record_reader() -> None:
        nxt = 1
        while nxt <= total and time.monotonic() < deadline:
            for r in log.read_from(nxt):
                if r != rec(nxt):
                    problems.append(f"records: got {r.version}, expected {nxt}")
                    return
                nxt += 1
        reached["records"] = nxt - 1

    def frame_reader() -> None:
        nxt = 1
        while nxt <= total and time.monotonic() < deadline:
            for chunk in log.read_frames_from(nxt, max_bytes=64 * 1024):
                decoder = FrameDecoder()
                for r in decoder.feed(chunk):
                    if r != rec(nxt):
                        problems.append(f"frames: got {r.version}, expected {nxt}")
                        return
                    nxt += 1
                if decoder.pending_bytes:
                    problems.append(f"frames: partial frame after {nxt - 1}")
                    return
        reached["frames"] = nxt - 1

    readers = [threading.Thread(target=record_reader), threading.Thread(target=frame_reader)]
    for t in readers:
        t.start()
    for start in range(1, total + 1, 97):
        log.append(recs(start, min(start + 96, total)))
        log.flush()
    for t in readers:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not problems
    assert reached == {"records": total, "frames": total}
    log.close()


CHILD = """
import sys
from pathlib import Path
from changelog.log.segments import SegmentLog
from tests.changelog.test_segments import recs
log = SegmentLog.open(Path(sys.argv[1]), segment_bytes=64 * 1024, fsync=False)
v = log.last_version
n = 0
while True:
    n += 1
    size = 1 + (n * 7919) % 3000
    log.append(recs(v + 1, v + size))
    v += size
    if n % 3 == 0:
        log.flush()
        print(log.readable_version, flush=True)
"""


def test_kill_9_mid_stream_leaves_a_contiguous_prefix(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory)], cwd=REPO, env=env, stdout=subprocess.PIPE
    )
    reported = 0
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + 60
        while reported < 60_000 and time.monotonic() < deadline:
            if not sel.select(timeout=deadline - time.monotonic()):
                break
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            if lines:
                reported = int(lines[-1])
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert reported >= 60_000, "the writer did not get far enough before the deadline"
    log = SegmentLog.open(directory, segment_bytes=64 * 1024, fsync=False)
    last = log.last_version
    assert last >= reported  # flushed before the kill: handed to the OS, so it survives
    assert list(log.read_from(1)) == recs(1, last)
    log.append(recs(last + 1, last + 10))
    log.close()


@pytest.mark.skipif(not os.environ.get("MIRRORFS_BENCH"), reason="set MIRRORFS_BENCH=1")
def test_throughput_report(tmp_path: Path) -> None:
    """Prints throughput (run with -s); asserts only that everything came back."""
    total = 300_000
    log = SegmentLog.open(tmp_path, segment_bytes=64 * 1024 * 1024, fsync=True)
    t0 = time.perf_counter()
    for start in range(1, total + 1, 1000):
        log.append(recs(start, min(start + 999, total)))
        log.sync()
    t1 = time.perf_counter()
    n = sum(1 for _ in log.read_from(1))
    t2 = time.perf_counter()
    size = sum(len(c) for c in log.read_frames_from(1))
    t3 = time.perf_counter()
    print(
        f"\nappend+fsync/1000: {total / (t1 - t0):,.0f} rec/s; "
        f"read_from: {n / (t2 - t1):,.0f} rec/s; "
        f"read_frames_from: {total / (t3 - t2):,.0f} rec/s ({size / (t3 - t2) / 1e6:.0f} MB/s)"
    )
    assert n == total and size == log.records_bytes
    log.close()
