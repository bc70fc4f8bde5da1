"""The disk tier of the block cache: one directory shared by the processes of one host.

- A file is written under a temporary name beside its final one and renamed into place, so a
  reader sees a whole file or none. Its header holds the key, the length and the xxh3
  checksum of the content, so a read-back is verified without the caller's help. Nothing is
  fsync'd: a file torn by a power loss fails its check when read and is fetched again, which
  costs less than an fsync per block on every cold read.
- The bytes of the directory are kept in a ledger (`.ledger`, eight bytes) that every process
  updates under `flock` on that file when it adds or removes a file. Room is reserved before
  a file is written, and the temporary file is made that long at once (so a scan by another
  process counts the room as taken): the directory never holds more than its bound, temporary
  files included, whatever the number of processes. The ledger may over-count (a crash
  between reserving and writing, two processes writing one key); when it says a file does
  not fit, the process holding the lock scans the directory, which sets the ledger to the
  truth, and evicts the least recently used files (oldest mtime; a hit touches its file) down
  to `LOW_WATER` of the bound, so a full cache scans once per tenth of its size, not per
  insert.

Every method blocks (file I/O): the cache runs them in threads. OSError is the caller's to
handle; a file that is not what its header says raises CorruptFileError (and is removed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import xxhash

from objstore.checksum import checksum as checksum_of
from objstore.keys import parse_block_key

LOW_WATER = 0.9  # eviction frees down to this share of the bound
STALE_TMP_S = 3600.0  # a temporary file this old was left by a process that died mid-write
LEDGER = ".ledger"
HEADER_MAX = 512
_TMP_PREFIX = ".tmp-"
_MAGIC = b"mirrorfs-block 1"
_HEX2 = re.compile(r"^[0-9a-f]{2}$")


class CorruptFileError(Exception):
    """A cache file that is not the whole, right block (it has been removed)."""


class DiskTier:
    """Files of blocks under `root`, at most `bound_bytes` in all (see the module docstring)."""

    def __init__(self, root: Path, bound_bytes: int) -> None:
        self.root = root
        self.bound_bytes = bound_bytes
        self.ledger_bytes = 0  # the ledger when this process last read it
        self._lock = threading.Lock()  # flock does not exclude threads sharing one fd
        self._fd = -1
        self._pid = os.getpid()

    def path(self, key: str) -> Path:
        """Where `key` lives: a block key under its own two hash levels, another key under
        two levels of a hash of it (the header holds the key itself)."""
        try:
            parse_block_key(key)
        except ValueError:
            name = xxhash.xxh3_128_hexdigest(key.encode())
            return self.root / name[:2] / name[2:4] / name
        _, h1, h2, name = key.split("/")
        return self.root / h1 / h2 / name

    @staticmethod
    def fits(key: str, length: int, bound_bytes: int) -> bool:
        """Whether a file for `key` of `length` content bytes could be kept at all."""
        return "\n" not in key and len(key) < HEADER_MAX // 2 and length + HEADER_MAX <= bound_bytes

    def read(self, key: str, checksum: str | None) -> tuple[bytes, str] | None:
        """(content, its checksum) of `key`'s file, checked against the header and against
        `checksum` (the block's record) when given; None if there is no file."""
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            # The content is read straight into the bytes returned (no slice of a bigger
            # buffer): a disk hit is one 4 MiB read, one checksum, no copy.
            header = os.pread(fd, HEADER_MAX, 0)
            try:
                start, length, recorded = _header(header, key, checksum)
                if os.fstat(fd).st_size != start + length:
                    raise CorruptFileError(
                        f"{os.fstat(fd).st_size - start} bytes, its header says {length}"
                    )
                data = os.pread(fd, length, start)
                if len(data) != length or checksum_of(data) != recorded:
                    raise CorruptFileError(f"content does not match its checksum {recorded}")
            except CorruptFileError:
                self._remove(path)
                raise
            with contextlib.suppress(OSError):  # LRU by mtime; a missed touch only ages it
                os.utime(fd)
        finally:
            os.close(fd)
        return data, recorded

    def write(self, key: str, data: bytes, recorded: str) -> int:
        """Store `data` (whose checksum is `recorded`) under `key`; the files evicted to make
        room. The room is given back if the write fails."""
        path = self.path(key)
        header = b"%s %d %s %s\n" % (_MAGIC, len(data), recorded.encode(), key.encode())
        size = len(header) + len(data)
        tmp, evicted = self._reserve(path, size)
        if tmp is None:
            return evicted  # another process wrote it first, or no room: not kept this time
        try:
            with open(tmp, "r+b") as f:
                f.write(header)
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with contextlib.suppress(OSError), self._locked() as fd:
                _ledger_write(fd, max(0, _ledger_read(fd) - size))
            raise
        return evicted

    def remove(self, key: str) -> None:
        self._remove(self.path(key))

    def prepare(self) -> None:
        """Make the directory and the ledger (scanning the directory if the ledger is new)."""
        with self._lock:
            self._open()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # -- under the lock ------------------------------------------------------------------------

    def _reserve(self, path: Path, size: int) -> tuple[Path | None, int]:
        """Room for `size` bytes in the ledger (scanning and evicting if it is short) and a
        temporary file already that long; (it, files evicted). No file if `path` exists or
        there is no room to be had (other writers' temporary files hold it)."""
        with self._locked() as fd:
            if path.exists():
                return None, 0
            total = _ledger_read(fd)
            evicted = 0
            if total + size > self.bound_bytes:
                total, evicted = self._evict(int(self.bound_bytes * LOW_WATER) - size)
                if total + size > self.bound_bytes:  # the room is other writers' right now
                    _ledger_write(fd, total)
                    self.ledger_bytes = total
                    return None, evicted
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f"{_TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
            with open(tmp, "xb") as f:
                f.truncate(size)
            _ledger_write(fd, total + size)
            self.ledger_bytes = total + size
            return tmp, evicted

    def _evict(self, target: int) -> tuple[int, int]:
        """Remove the least recently used files until the total is at most `target`; (the
        total left, files removed). Temporary files are counted, never removed: their writers
        hold that room."""
        files = list(self._scan())
        total = sum(size for _, size, _ in files)
        removed = 0
        for _mtime, size, path in sorted(files):
            if total <= target:
                break
            if path.name.startswith(_TMP_PREFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
            total -= size
        return total, removed

    def _scan(self) -> Iterator[tuple[float, int, Path]]:
        """(mtime, size, path) of every file, temporary files of live writers included;
        those of dead writers are removed."""
        now = time.time()
        for d1 in _subdirs(self.root):
            for d2 in _subdirs(d1):
                with os.scandir(d2) as it:
                    for entry in it:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if entry.name.startswith(_TMP_PREFIX) and now - st.st_mtime > STALE_TMP_S:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(entry.path)
                            continue
                        yield st.st_mtime, st.st_size, Path(entry.path)

    def _remove(self, path: Path) -> None:
        with self._locked() as fd:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return
            self.ledger_bytes = max(0, _ledger_read(fd) - size)
            _ledger_write(fd, self.ledger_bytes)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        with self._lock:
            fd = self._open()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int:
        if self._fd >= 0 and self._pid != os.getpid():
            # A forked child shares the parent's open file, so their flocks would not
            # exclude each other: the child opens its own (the inherited one is left alone).
            self._fd, self._pid = -1, os.getpid()
        if self._fd < 0:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LEDGER, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_size < 8:  # new, or torn: the truth is a scan away
                    _ledger_write(fd, sum(size for _, size, _ in self._scan()))
                self.ledger_bytes = _ledger_read(fd)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return [Path(e.path) for e in it if _HEX2.match(e.name) and e.is_dir()]
    except FileNotFoundError:
        return []


def _ledger_read(fd: int) -> int:
    raw = os.pread(fd, 8, 0)
    return int.from_bytes(raw, "little") if len(raw) == 8 else 0


def _ledger_write(fd: int, total: int) -> None:
    if os.pwrite(fd, total.to_bytes(8, "little"), 0) != 8:
        raise OSError(errno.EIO, "short write to the cache ledger")


def _header(head: bytes, key: str, checksum: str | None) -> tuple[int, int, str]:
    """(where the content starts, its length, its checksum) from the first bytes of a cache
    file, checked against `key` and `checksum` (the block's record) when given;
    CorruptFileError says why not."""
    end = head.find(b"\n")
    parts = head[:end].split(b" ", 4) if end > 0 else []
    if len(parts) != 5 or b" ".join(parts[:2]) != _MAGIC or not parts[2].isdigit():
        raise CorruptFileError("no valid header")
    length, recorded = int(parts[2]), parts[3].decode(errors="replace")
    stored_key = parts[4].decode(errors="replace")
    if stored_key != key:
        raise CorruptFileError(f"holds {stored_key!r}")
    if checksum is not None and recorded != checksum:
        raise CorruptFileError(f"header checksum {recorded}, the block's record says {checksum}")
    return end + 1, length, recorded
