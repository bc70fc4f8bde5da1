"""How our Raft nodes run pysyncobj: the SyncObjConf they use, and the durable-journal wiring.

`make_conf` decides every setting (measured or read in pysyncobj 0.3.17's source; the comment on
each says why). `DurableSyncObj` is SyncObj with `journal.DurableJournal` as its journal
and answers held back until that journal is durable; it refuses a conf `check_conf` rejects, so
a node cannot start with a setting that loses acknowledged writes or admits unauthenticated peers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pysyncobj.journal as _ps_journal
import pysyncobj.serializer as _ps_serializer
import pysyncobj.syncobj as _ps_syncobj
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.encryptor import HAS_CRYPTO
from pysyncobj.transport import TCPTransport

from changelog.raft.journal import DurableJournal, durable_replace
from volume.errors import ConfigError

# A leader that cannot reach a majority keeps believing it leads (accepting writes that will
# time out, serving stale reads) for leaderFallbackTimeout; pysyncobj's default is 30 s. A few
# seconds is long enough to ride out a GC pause or a slow fork (useFork keeps dumps off the Raft
# thread) and short enough that clients are redirected quickly.
DEFAULT_LEADER_FALLBACK_TIMEOUT_S = 3.0
# Compaction pickles the whole state (in a forked child); at 1,000 ops/s, 50,000 entries is one
# dump every ~50 s, which bounds journal replay at restart to well under a second and the
# in-memory log to a few tens of MB. pysyncobj's 5,000 would fork a full dump every 5 s.
DEFAULT_LOG_COMPACTION_MIN_ENTRIES = 50_000
# ...and at least every 10 minutes when idle-ish, so a restart never replays hours of log.
DEFAULT_LOG_COMPACTION_MIN_TIME_S = 600.0
# pysyncobj messages that promise something about the sender's persistent state: they wait until
# its journal is durable (changelog.raft.journal, guarantee 1).
DURABLE_MESSAGES = frozenset({"next_node_idx", "response_vote", "request_vote"})


def make_conf(
    *,
    journal_file: str | os.PathLike[str] | None,
    dump_file: str | os.PathLike[str] | None,
    password: str | bytes | None,
    bind_address: str | None = None,
    leader_fallback_timeout_s: float = DEFAULT_LEADER_FALLBACK_TIMEOUT_S,
    log_compaction_min_entries: int = DEFAULT_LOG_COMPACTION_MIN_ENTRIES,
    log_compaction_min_time_s: float = DEFAULT_LOG_COMPACTION_MIN_TIME_S,
    on_ready: Callable[[], None] | None = None,
    on_state_changed: Callable[[int, int], None] | None = None,
) -> SyncObjConf:
    """A SyncObjConf with the settings every mirrorfs Raft node runs with.

    Raises ConfigError (naming the key) when the journal or the dump file is missing, when both
    name the same file, when the password is empty, or when `cryptography` (which pysyncobj needs
    to encrypt with a password) is not installed. Pure: creates no file and opens no socket.
    """
    if not journal_file or not dump_file:
        missing = "dump_file" if journal_file else "journal_file"
        raise ConfigError(
            "journal_file and dump_file must both be set: a journal without a full dump loses "
            "the whole state at the first log compaction + restart (pysyncobj truncates the "
            "journal after a dump it only kept in memory)",
            key=missing,
        )
    journal_path, dump_path = os.fspath(journal_file), os.fspath(dump_file)
    if os.path.abspath(journal_path) == os.path.abspath(dump_path):
        raise ConfigError("journal_file and dump_file must be different files", key="dump_file")
    if not password:
        raise ConfigError(
            "a Raft password (the volume secret) is required: without it pysyncobj exchanges "
            "unauthenticated pickles over TCP, and anyone reaching the port runs code in the node",
            key="password",
        )
    if not HAS_CRYPTO:
        raise ConfigError(
            "pysyncobj needs the 'cryptography' package to use a password",
            key="password",
        )
    settings: dict[str, Any] = {
        "journalFile": journal_path,
        "fullDumpFile": dump_path,
        # Fernet (AES-CBC + HMAC, key = PBKDF2(password)) on every message and a per-connection
        # random key against replays: a peer without the secret cannot even get a message
        # unpickled (see tests/changelog/test_journal.py::test_peer_without_password_*).
        "password": password,
        # Measured: batching adds ~100 ms to every sequential commit (entries wait for the next
        # appendEntriesPeriod); off, a commit takes 0.3-0.7 ms p50 on 3 processes on loopback.
        "appendEntriesUseBatch": False,
        # Membership is static (the volume config names the nodes). With this on, anyone holding
        # the secret can add/remove members through the utility port.
        "dynamicMembershipChange": False,
        "leaderFallbackTimeout": leader_fallback_timeout_s,
        # Queue commands while an election runs instead of failing them at once with
        # MISSING_LEADER; our callers have their own deadline (changelog.raft.bridge).
        "commandsWaitLeader": True,
        "logCompactionMinEntries": log_compaction_min_entries,
        "logCompactionMinTime": log_compaction_min_time_s,
        # Dump the state in a forked child: pickling a large state on the Raft thread stalls
        # heartbeats and deposes the leader. (A custom `serializer` would silently disable fork.)
        "useFork": True,
        # pysyncobj drives Raft on its own thread; nothing of ours calls doTick.
        "autoTick": True,
        "onReady": on_ready,
        "onStateChanged": on_state_changed,
    }
    if bind_address is not None:
        settings["bindAddress"] = bind_address
    conf = SyncObjConf(**settings)
    try:
        conf.validate()
    except AssertionError as exc:
        raise ConfigError(f"pysyncobj rejected the Raft settings: {exc!r}") from exc
    return conf


def check_conf(conf: SyncObjConf) -> None:
    """Raise ConfigError unless `conf` keeps acknowledged writes and authenticates peers.

    Checks the settings that matter for safety (not the tuning ones), so a conf built by hand
    is accepted only if it is as safe as one from `make_conf`.
    """
    if not conf.journalFile or not conf.fullDumpFile:
        raise ConfigError("journalFile and fullDumpFile must both be set", key="journalFile")
    if not conf.password:
        raise ConfigError("a Raft password is required", key="password")
    if conf.serializer is not None or conf.deserializer is not None:
        raise ConfigError(
            "a custom serializer disables useFork (dumps would stall the Raft thread)",
            key="serializer",
        )


# --- the plug-in: SyncObj builds its journal through `createJournal` (a module global of
# pysyncobj.syncobj) and dumps through `atomicReplace` (a module global of pysyncobj.serializer);
# `install` replaces both, once. createJournal still returns pysyncobj's own journal for any
# SyncObj that is not being built by DurableSyncObj on this thread.


@dataclass
class _Parts:
    journal_file: str
    dump_file: str
    journal: DurableJournal | None = None


_BUILDING = threading.local()  # .parts: the _Parts of the DurableSyncObj being built
_INSTALL_LOCK = threading.Lock()
_ORIGINAL_CREATE_JOURNAL = _ps_journal.createJournal
_RAFT_THREADS: set[int] = set()  # threads that run a DurableSyncObj's Raft loop
_FORK = threading.local()  # .from_raft, .parent_pid: set around os.fork()
_installed = False


def _create_journal(journalFile: str | None = None) -> Any:  # noqa: N803
    parts: _Parts | None = getattr(_BUILDING, "parts", None)
    if parts is None:
        return _ORIGINAL_CREATE_JOURNAL(journalFile)
    if journalFile is None or os.fspath(journalFile) != parts.journal_file:
        raise ConfigError(f"SyncObj asked for journal {journalFile!r}, conf says otherwise")
    parts.journal = DurableJournal(journalFile, dump_file=parts.dump_file)
    return parts.journal


def _set_parent_death_signal() -> Callable[[], None]:
    if not sys.platform.startswith("linux"):
        return lambda: None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def install() -> None:
    """Patch pysyncobj (createJournal, atomicReplace, and a fork hook) once. Idempotent.

    The fork hook makes a dump child forked by a Raft thread die with it: an orphan left by a
    kill -9 would otherwise finish later and rename an older dump over a newer one (and share
    the `.tmp` file with the restarted node's own dump child). Raises RuntimeError if pysyncobj
    no longer looks like 0.3.17 where we hook it, or someone else already patched it.
    """
    global _installed
    with _INSTALL_LOCK:
        if _installed:
            return
        wanted = [n for n, v in vars(_ps_journal.Journal).items() if callable(v)]
        missing = [n for n in wanted if not callable(getattr(DurableJournal, n, None))]
        if missing or not hasattr(_ps_serializer, "atomicReplace"):
            raise RuntimeError(f"pysyncobj's journal interface changed: {missing}")
        if getattr(_ps_syncobj, "createJournal", None) is not _ORIGINAL_CREATE_JOURNAL:
            raise RuntimeError("pysyncobj.syncobj.createJournal is already patched by someone")
        set_pdeathsig = _set_parent_death_signal()

        def before() -> None:
            _FORK.from_raft = threading.get_ident() in _RAFT_THREADS
            _FORK.parent_pid = os.getpid()

        def in_child() -> None:
            if getattr(_FORK, "from_raft", False):
                set_pdeathsig()
                if os.getppid() != _FORK.parent_pid:  # parent died before prctl
                    os._exit(1)

        os.register_at_fork(before=before, after_in_child=in_child)
        _ps_syncobj.createJournal = _create_journal
        _ps_serializer.atomicReplace = durable_replace
        _installed = True


class DurableTCPTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport, holding back answers until the journal is durable.

    Built only by DurableSyncObj (it finds the journal that is being built with it).
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        parts: _Parts | None = getattr(_BUILDING, "parts", None)
        if parts is None or parts.journal is None:
            raise ConfigError("DurableTCPTransport is built by DurableSyncObj only")
        self._journal = parts.journal
        self._outbox: list[tuple[Any, Any]] = []
        super().__init__(syncObj, selfNode, otherNodes)
        syncObj.addOnTickCallback(self._before_poll)

    def send(self, node: Any, message: Any) -> bool:
        durable = isinstance(message, dict) and message.get("type") in DURABLE_MESSAGES
        if self._outbox or (durable and self._journal.is_dirty):
            self._outbox.append((node, message))  # keeps per-connection order
            return True
        return self._send_now(node, message)

    def _send_now(self, node: Any, message: Any) -> bool:
        return bool(super().send(node, message))

    def _before_poll(self) -> None:
        # The last step of each Raft loop iteration: one fsync for everything the iteration
        # appended (group commit), then the answers that waited for it.
        _RAFT_THREADS.add(threading.get_ident())
        self._journal.sync_log()
        outbox, self._outbox = self._outbox, []
        for node, message in outbox:
            self._send_now(node, message)

    def destroy(self) -> None:
        _RAFT_THREADS.discard(threading.get_ident())
        self._outbox = []
        super().destroy()


class DurableSyncObj(SyncObj):  # type: ignore[misc]
    """A SyncObj with a DurableJournal and fsync-before-answer; use it exactly like SyncObj.

    Raises ConfigError if `conf` is not safe (see `check_conf`; build it with `make_conf`) and
    JournalError if the journal is not ours or is in use. State to replicate lives in consumers
    or in attributes set after this __init__, as with SyncObj.
    """

    def __init__(
        self,
        self_node: Any,
        other_nodes: Any,
        conf: Any,
        consumers: list[Any] | None = None,
        *,
        transport_class: type[DurableTCPTransport] = DurableTCPTransport,
    ) -> None:
        check_conf(conf)
        if not issubclass(transport_class, DurableTCPTransport):
            raise TypeError("transport_class must subclass DurableTCPTransport")
        install()
        parts = _Parts(os.fspath(conf.journalFile), os.fspath(conf.fullDumpFile))
        # Set before SyncObj.__init__: attributes that exist then are left out of its dumps.
        self._durable_parts = parts
        _BUILDING.parts = parts
        try:
            super().__init__(
                self_node, other_nodes, conf, consumers, transportClass=transport_class
            )
        except BaseException:
            if parts.journal is not None:
                parts.journal.close()
            raise
        finally:
            _BUILDING.parts = None

    def durable_journal(self) -> DurableJournal:
        journal = self._durable_parts.journal
        assert journal is not None  # set by SyncObj.__init__ through _create_journal
        return journal
