"""A durable Raft journal for pysyncobj 0.3.17 (the wiring into SyncObj is changelog.raft.conf).

Why: pysyncobj's FileJournal writes entries through mmap and never fsyncs them, nor its meta file
(`<journal>.meta`: currentTerm, votedFor, commit index; term and vote are rewritten on every
change, the commit index once a second, never fsync'd), and its dump is renamed into place
unsynced (upstream issue #84). After a power loss a node can have forgotten entries it already
acknowledged, or a vote it already gave: two nodes then disagree on what was committed.

Guarantees ("durable" = written and fdatasync'ed; the dump: fsync'ed file, rename, fsync'ed dir):
1. A node sends `next_node_idx` (its append_entries answer), `response_vote` or `request_vote`
   only after every journal change made before it is durable: an entry the leader counts toward
   a majority survives a power loss of the follower that acknowledged it.
2. currentTerm and votedFor are durable before `setCurrentTerm` returns, i.e. before the vote
   request or grant that reflects them is built.
3. No node acts on a commit index (applies, answers a client, tells followers) covering entries
   not yet durable in its own journal: `setRaftCommitIndex` syncs first. This is what makes the
   leader's own vote count: it may count itself before its fsync finished, but nothing
   observable happens until it has, and if it loses power first nobody ever saw the entry
   committed (Raft thesis 10.2.1: the leader may write its log in parallel with replication).
4. A torn tail (a crash mid-write) fails its CRC and is dropped on open. Only bytes after the
   last completed fsync can be torn, and by 1-3 none of them was acknowledged to anyone.
5. A dump is durable before pysyncobj truncates the journal behind it, and a crash between the
   two no longer throws away the journal entries after the dump (see `DurableJournal.clear`).
Raft's safety needs exactly this: persistent state (currentTerm, votedFor, log) on stable
storage before answering RPCs (Raft paper, Figure 2), and a leader counting only its own
durable entries.

Group commit: appends are buffered and written + fdatasync'ed once per Raft loop iteration, from
a tick callback that runs after the leader has sent that iteration's entries (so its fsync
overlaps the followers'); answers produced while the journal is dirty wait in an outbox flushed
right after that one fsync. N entries that arrive in one poll cost one fsync.

6. Damage in the middle of the file is not a torn tail: a bad record followed by a good one (at
   the bad record's own end, or found by scanning on) means bytes that were once durable were
   lost. Dropping everything after it could lose acknowledged entries or a vote, so opening
   refuses with JournalError naming the file and offset; the node does not start. The way out
   is rebuilding the node from its peers (README "Durability").

Not covered: a disk that acknowledges fsync without persisting (volatile write cache); a failed
write or fsync is not retried (the kernel may have dropped the pages): the process exits.

(1-3 and 5 need the wiring in changelog.raft.conf: DurableSyncObj and DurableTCPTransport.)

File: MAGIC, then records `length:u32be | crc32:u32be | kind:1 | body`, replayed in order:
E idx:u64 term:u64 command (append) · F pos:u64 (drop entries from pos) · P pos:u64 (drop entries
before pos) · C (clear) · T term:u64 pickle(votedFor) · K commitIndex:u64. The file is rewritten
(tmp, fsync, rename, fsync dir) when it is mostly dead records, e.g. after a compaction.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, overload

import structlog

from volume.errors import ChangelogError

__all__ = [
    "DurableJournal",
    "JournalError",
    "JournalState",
    "durable_replace",
    "fsync_dir",
    "read_journal",
]

log = structlog.get_logger(__name__)

Entry = tuple[bytes, int, int]  # (command, raft index, raft term), as pysyncobj stores them

MAGIC = b"MFSJRNL1"
FRAME = struct.Struct(">II")
IDX_TERM = struct.Struct(">QQ")
U64 = struct.Struct(">Q")
MAX_RECORD_BYTES = 1 << 30
RECORD_KINDS = (b"E", b"F", b"P", b"C", b"T", b"K")
WRITE_BEHIND_BYTES = 1 << 20  # buffered appends are written (not synced) past this
DEFAULT_REWRITE_MIN_BYTES = 8 << 20  # never rewrite a file smaller than this
EXIT_JOURNAL_FATAL = 74  # EX_IOERR


class JournalError(ChangelogError):
    """The journal cannot be opened or used (not ours, in use, failed I/O, closed)."""


@dataclass
class JournalState:
    """What a journal file holds, as `read_journal` finds it."""

    entries: list[Entry] = field(default_factory=list)
    term: int = 0
    voted_for: Any = None
    commit_index: int = 1
    valid_bytes: int = len(MAGIC)
    file_bytes: int = 0

    @property
    def torn_bytes(self) -> int:
        return self.file_bytes - self.valid_bytes


def _frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _entry_payload(entry: Entry) -> bytes:
    return b"E" + IDX_TERM.pack(entry[1], entry[2]) + entry[0]


def _record_at(data: bytes, pos: int) -> int | None:
    """The end of a whole, checksummed record of a known kind starting at `pos`, else None."""
    if pos + FRAME.size > len(data):
        return None
    length, crc = FRAME.unpack_from(data, pos)
    end = pos + FRAME.size + length
    if not 1 <= length <= MAX_RECORD_BYTES or end > len(data):
        return None
    if data[pos + FRAME.size : pos + FRAME.size + 1] not in RECORD_KINDS:
        return None
    return end if zlib.crc32(data[pos + FRAME.size : end]) == crc else None


def _good_record_after(data: bytes, bad: int) -> int | None:
    """Where a good record starts after the bad one at `bad`, if any: first where the bad
    record's own length says its successor starts (payload damage, framing intact), then by
    scanning on (damaged framing). A torn tail has none: only the last write can be torn."""
    length = FRAME.unpack_from(data, bad)[0] if bad + FRAME.size <= len(data) else 0
    successor = bad + FRAME.size + int(length)
    if length and successor < len(data) and _record_at(data, successor) is not None:
        return successor
    for pos in range(bad + 1, len(data) - FRAME.size + 1):
        if _record_at(data, pos) is not None:
            return pos
    return None


def _parse(data: bytes, path: str) -> JournalState:
    if data[: len(MAGIC)] != MAGIC:
        raise JournalError(f"{path} is not a mirrorfs journal (pysyncobj's own FileJournal?)")
    st = JournalState(file_bytes=len(data))
    pos = len(MAGIC)
    while pos + FRAME.size <= len(data):
        end = _record_at(data, pos)
        if end is None:
            good = _good_record_after(data, pos)
            if good is not None:
                raise JournalError(
                    f"{path} is damaged at offset {pos} (a good record follows at {good}):"
                    " not a torn tail, so acknowledged entries or a vote may be lost",
                    hint="rebuild this node from its peers: stop it, move its data directory"
                    " aside, start it again (README, Durability)",
                )
            break
        _replay(st, data[pos + FRAME.size : end], f"{path}@{pos}")
        pos = end
    st.valid_bytes = pos
    return st


def _replay(st: JournalState, payload: bytes, where: str) -> None:
    kind = payload[:1]
    if kind == b"E":
        idx, term = IDX_TERM.unpack_from(payload, 1)
        st.entries.append((payload[1 + IDX_TERM.size :], idx, term))
    elif kind in (b"F", b"P"):
        (n,) = U64.unpack_from(payload, 1)
        if n > len(st.entries):
            raise JournalError(f"{where}: truncation at {n} past {len(st.entries)} entries")
        if kind == b"F":
            del st.entries[n:]
        else:
            del st.entries[:n]
    elif kind == b"C":
        st.entries.clear()
    elif kind == b"T":
        (st.term,) = U64.unpack_from(payload, 1)
        st.voted_for = pickle.loads(payload[1 + U64.size :])
    elif kind == b"K":
        (st.commit_index,) = U64.unpack_from(payload, 1)
    else:
        raise JournalError(f"{where}: unknown record kind {kind!r} (newer format?)")


def read_journal(path: str | os.PathLike[str]) -> JournalState:
    """Read a journal without opening it for writing: no lock, no truncation of a torn tail.

    Safe while a node has it open (it sees what that node has written so far). Raises
    JournalError if the file is not a journal, FileNotFoundError if it does not exist.
    """
    p = os.fspath(path)
    with open(p, "rb") as f:
        return _parse(f.read(), p)


def fsync_dir(path: str) -> None:
    """Make a rename or a file creation in directory `path` durable."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_REPLACED_HERE: set[str] = set()  # files durable_replace wrote in this process


def durable_replace(src: str, dst: str) -> None:
    """os.replace(src, dst) that survives power loss: fsync src, rename, fsync the directory.

    Installed as pysyncobj's `atomicReplace` (dumps, in the forked child, and snapshots received
    from the leader). Raises OSError; pysyncobj reports that as a failed dump and retries.
    """
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))
    _REPLACED_HERE.add(os.path.abspath(dst))


def _atomic_write(path: str, data: bytes, fsync: Callable[[int], None]) -> None:
    tmp = path + ".rewrite"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


_OPEN_PATHS: set[str] = set()
_OPEN_LOCK = threading.Lock()


def _lock(path: str) -> int:
    # lockf (POSIX record lock), not flock: a forked dump child must not inherit the lock, or a
    # restart after kill -9 would find the journal "in use" until the orphan child exits.
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise JournalError(f"journal {path} is in use by another process") from exc
        raise
    return fd


# fdatasync: an append's data and the new file size, without the mtime update fsync adds.
_DEFAULT_FSYNC: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _exit_process(exc: OSError) -> None:
    os._exit(EXIT_JOURNAL_FATAL)


class DurableJournal:
    """pysyncobj's journal interface (see pysyncobj.journal.Journal), durable as the module says.

    Called by pysyncobj from its Raft thread only; not thread-safe. `fsync` and `on_fatal` are
    for fault-injection tests: on a failed write or fsync the journal refuses any further use and
    calls `on_fatal` (default: exit the process with EXIT_JOURNAL_FATAL).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dump_file: str | os.PathLike[str] | None = None,
        fsync: Callable[[int], None] | None = None,
        on_fatal: Callable[[OSError], None] | None = None,
        rewrite_min_bytes: int = DEFAULT_REWRITE_MIN_BYTES,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._dump_file = os.path.abspath(os.fspath(dump_file)) if dump_file else None
        self._fsync: Callable[[int], None] = fsync or _DEFAULT_FSYNC
        self._on_fatal = on_fatal or _exit_process
        self._rewrite_min_bytes = rewrite_min_bytes
        self._failed: OSError | None = None
        self._closed = False
        self.sync_count = 0
        with _OPEN_LOCK:  # lockf does not exclude a second open in the same process
            if self.path in _OPEN_PATHS:
                raise JournalError(f"journal {self.path} is already open in this process")
            self._lock_fd = _lock(self.path)
            _OPEN_PATHS.add(self.path)
        try:
            self._open()
        except BaseException:
            self._release()
            raise

    def _open(self) -> None:
        if not os.path.exists(self.path):
            _atomic_write(self.path, MAGIC, os.fsync)
        st = read_journal(self.path)
        if st.torn_bytes:
            log.warning("journal.torn_tail_dropped", path=self.path, torn_bytes=st.torn_bytes)
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, st.valid_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._entries: list[Entry] = st.entries
        self._term, self._voted_for, self._commit = st.term, st.voted_for, st.commit_index
        self._file_bytes = st.valid_bytes
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._buf = bytearray()
        self._unsynced = False  # any record not yet fsync'ed
        self._dirty_log = False  # ... and one of them changes the log, the term or the vote
        self._durable_index = self._entries[-1][1] if self._entries else 0
        self._mutations = 0
        self._pending_clear: list[Entry] | None = None
        self._pending_adds: list[Entry] = []
        # Entries the file still holds after self._entries (see deleteEntriesFrom), reversed.
        self._tail_rev: list[Entry] = []

    # --- pysyncobj's Journal interface (names are pysyncobj's) ---

    def add(self, command: bytes, idx: int, term: int) -> None:
        self._check()
        entry = (bytes(command), int(idx), int(term))
        self._entries.append(entry)
        if self._pending_clear is not None:
            self._pending_adds.append(entry)
            if len(self._pending_adds) == 2:
                self._resolve_pending_clear()
            return
        self._mutations += 1
        if self._tail_rev and self._tail_rev[-1] == entry:
            self._tail_rev.pop()  # a resend of an entry the file still holds: nothing to write
            return
        self._write_truncation(len(self._entries) - 1)
        self._record(_entry_payload(entry), log_change=True)

    def clear(self) -> None:
        """Drop every entry; at startup, keep the entries a crash left after the dump.

        pysyncobj loads the dump at startup with `clear(); add(dump[-2]); add(dump[-1])` whenever
        the journal does not start at the dump's two entries, i.e. when it crashed after the dump
        was renamed into place but before it truncated the journal behind it; a plain clear would
        then drop entries after the dump that this node had acknowledged (committed ones, if all
        nodes crash there). So the first clear() after open, unless this process has just
        received a snapshot file, waits for the two adds: if they are entries p, p+1 of the
        journal, only the entries before p are dropped.
        """
        self._check()
        self._finish_pending_clear()
        if self._mutations == 0 and self._entries and self._dump_file not in _REPLACED_HERE:
            self._pending_clear, self._entries, self._pending_adds = self._entries, [], []
            return
        self._mutations += 1
        self._entries, self._tail_rev = [], []
        self._durable_index = 0
        self._record(b"C", log_change=True)

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802, N803
        """Drop entries from position `entryFrom` on; on disk only once something differs.

        pysyncobj truncates whenever the follower's log is longer than the leader's resend,
        even when the resend carries the very same entries (a late ack lowers the leader's
        nextIndex). The dropped entries stay in the file as a pending tail: re-added identical
        entries consume it without a write, and the first different entry, or the sync before
        the next answer, writes one F record. So an identical resend costs no fsync, and a
        crash can never leave the truncation durable without the entries that replaced it.
        """
        self._check()
        self._finish_pending_clear()
        pos = _position(entryFrom)
        self._mutations += 1
        self._tail_rev.extend(reversed(self._entries[pos:]))
        del self._entries[pos:]

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802, N803
        self._check()
        self._finish_pending_clear()
        pos = _position(entryTo)
        self._mutations += 1
        del self._entries[:pos]
        self._record(b"P" + U64.pack(pos), log_change=True)
        self._maybe_rewrite()

    @overload
    def __getitem__(self, item: int) -> Entry: ...
    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...
    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802, N803
        self._check()
        self._finish_pending_clear()
        idx = int(raftCommitIndex)
        if idx != self._commit:
            self._commit = idx
            self._record(b"K" + U64.pack(idx), log_change=False)
        if self._dirty_log and idx > self._durable_index:
            self.sync()  # guarantee 3: never act on a commit beyond the local durable log

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self._commit

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:  # noqa: N802, N803
        self._check()
        self._finish_pending_clear()
        self._term, self._voted_for = int(term), votedForNodeId
        self._record(self._term_payload(), log_change=True)
        self.sync()  # guarantee 2

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self._term

    def getVotedForNodeId(self) -> Any:  # noqa: N802
        return self._voted_for

    def onOneSecondTimer(self) -> None:  # noqa: N802
        self._check()
        self.sync()  # persists the commit index, which alone never forces a sync
        self._maybe_rewrite()

    def flush(self) -> None:
        self.sync()

    def _destroy(self) -> None:
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._closed = True
            os.close(self._fd)
            self._release()

    # --- durability ---

    @property
    def is_dirty(self) -> bool:
        """True while a change to the log, term or vote is not yet durable."""
        return self._dirty_log or self._pending_clear is not None or bool(self._tail_rev)

    @property
    def durable_index(self) -> int:
        """Every entry of the log with a Raft index <= this is durable."""
        return self._durable_index

    def sync_log(self) -> None:
        """The hook run before answers are sent: sync if the log, term or vote changed."""
        if self.is_dirty:
            self.sync()

    def sync(self) -> None:
        """Write and fdatasync everything recorded so far. Idempotent; one fsync per call."""
        self._check()
        self._finish_pending_clear()
        self._write_truncation(len(self._entries))
        if not self._unsynced:
            return
        self._write_out()
        try:
            self._fsync(self._fd)
        except OSError as exc:
            self._fail("fsync", exc)
        self._unsynced = self._dirty_log = False
        self._durable_index = self._entries[-1][1] if self._entries else 0
        self.sync_count += 1

    def close(self) -> None:
        """Sync and close (what pysyncobj's `_destroy` does). Idempotent."""
        self._destroy()

    # --- internals ---

    def _check(self) -> None:
        if self._failed is not None:
            raise JournalError(f"journal {self.path} failed earlier: {self._failed}")
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")

    def _fail(self, what: str, exc: OSError) -> NoReturn:
        self._failed = exc
        log.critical("journal.io_failed", path=self.path, op=what, error=str(exc))
        self._on_fatal(exc)
        raise JournalError(f"journal {self.path}: {what} failed: {exc}") from exc

    def _release(self) -> None:
        os.close(self._lock_fd)
        with _OPEN_LOCK:
            _OPEN_PATHS.discard(self.path)

    def _term_payload(self) -> bytes:
        return b"T" + U64.pack(self._term) + pickle.dumps(self._voted_for, protocol=4)

    def _record(self, payload: bytes, *, log_change: bool) -> None:
        frame = _frame(payload)
        self._buf += frame
        self._file_bytes += len(frame)
        self._unsynced = True
        self._dirty_log = self._dirty_log or log_change
        if len(self._buf) >= WRITE_BEHIND_BYTES:
            self._write_out()

    def _write_out(self) -> None:
        try:
            while self._buf:
                del self._buf[: os.write(self._fd, self._buf)]
        except OSError as exc:
            self._fail("write", exc)

    def _write_truncation(self, pos: int) -> None:
        """Make the file drop its pending tail, which starts at entry position `pos`."""
        if not self._tail_rev:
            return
        self._tail_rev = []
        self._record(b"F" + U64.pack(pos), log_change=True)
        last = self._entries[pos - 1][1] if pos else 0
        self._durable_index = min(self._durable_index, last)

    def _resolve_pending_clear(self) -> None:
        old, adds = self._pending_clear or [], self._pending_adds
        self._pending_clear, self._pending_adds = None, []
        self._mutations += 1
        p = adds[0][1] - old[0][1]
        if 0 <= p < len(old) - 1 and old[p] == adds[0] and old[p + 1] == adds[1]:
            log.info("journal.kept_entries_after_dump", path=self.path, kept=len(old) - p)
            self._entries = old[p:]
            self._record(b"P" + U64.pack(p), log_change=True)
            return
        self._durable_index = 0
        self._record(b"C", log_change=True)
        for entry in adds:
            self._record(_entry_payload(entry), log_change=True)

    def _finish_pending_clear(self) -> None:
        if self._pending_clear is None:
            return
        adds = self._pending_adds
        self._pending_clear, self._pending_adds = None, []
        self._mutations += 1
        self._durable_index = 0
        self._record(b"C", log_change=True)
        for entry in adds:
            self._record(_entry_payload(entry), log_change=True)

    def _maybe_rewrite(self) -> None:
        if self._file_bytes < self._rewrite_min_bytes:
            return
        live = sum(FRAME.size + 1 + IDX_TERM.size + len(e[0]) for e in self._entries)
        if self._file_bytes > 2 * (live + 64):
            self._rewrite()

    def _rewrite(self) -> None:
        self._write_truncation(len(self._entries))
        frames = [_frame(self._term_payload()), _frame(b"K" + U64.pack(self._commit))]
        frames += [_frame(_entry_payload(e)) for e in self._entries]
        data = MAGIC + b"".join(frames)
        try:
            _atomic_write(self.path, data, self._fsync)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._fail("rewrite", exc)
        os.close(self._fd)
        self._fd = fd
        self._buf.clear()
        self._unsynced = self._dirty_log = False
        self._durable_index = self._entries[-1][1] if self._entries else 0
        log.info("journal.rewritten", path=self.path, old_bytes=self._file_bytes, bytes=len(data))
        self._file_bytes = len(data)


def _position(n: int) -> int:
    pos = int(n)
    if pos < 0:
        raise ValueError(f"journal position must be >= 0, got {pos}")
    return pos
