"""The durable Raft journal (changelog.raft.journal) and its wiring into pysyncobj
(changelog.raft.conf).

What these tests cover, and what they cannot:
- The file format: torn or corrupted tails are dropped on reopen, term/vote/commit and
  truncations survive reopen, the startup reconcile after a dump, fsync failure is fatal.
- Durability ordering: answers (next_node_idx, votes) leave a node only when its journal is
  not dirty (a 3-node in-process cluster records every such send), and after the pre-send
  hook the data is in the file as another process reads it.
- Crash recovery: kill -9 of all three nodes mid-stream, with and without compaction.
- Authentication: peers without the password cannot get a message unpickled or join.
Not covered: a real power loss. kill -9 keeps the page cache, so the crash tests would also pass
without fsync; that fsync happens before each answer is what the ordering test checks, and that
fsync itself persists is the kernel's and the disk's promise.
"""

from __future__ import annotations

import errno
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pysyncobj.serializer
import pytest
from pysyncobj import SyncObj, SyncObjConsumer, replicated
from pysyncobj.encryptor import getEncryptor
from pysyncobj.journal import FileJournal

from changelog.raft.conf import (
    DURABLE_MESSAGES,
    DurableSyncObj,
    DurableTCPTransport,
    install,
    make_conf,
)
from changelog.raft.journal import (
    FRAME,
    MAGIC,
    DurableJournal,
    JournalError,
    durable_replace,
    read_journal,
)
from tests.changelog.raft_counter_node import Cluster, NodeProcess, free_ports, wait_for
from volume.errors import ConfigError

NOOP = b"\x01"


def entry(i: int, term: int = 1) -> tuple[bytes, int, int]:
    return (b"cmd-%d" % i, i, term)


@pytest.fixture
def jpath(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
def open_journal(jpath: Path) -> Iterator[Callable[..., DurableJournal]]:
    opened: list[DurableJournal] = []

    def factory(**kw: Any) -> DurableJournal:
        j = DurableJournal(jpath, **kw)
        opened.append(j)
        return j

    yield factory
    for j in opened:
        if not j._closed and j._failed is None:
            j.close()
        elif not j._closed:
            j._closed = True
            j._release()


def fill(j: DurableJournal, first: int, last: int, term: int = 1) -> None:
    for i in range(first, last + 1):
        j.add(*entry(i, term))


# --------------------------------------------------------------------------- the file format


def test_entries_term_vote_and_commit_survive_reopen(open_journal: Any) -> None:
    j = open_journal()
    fill(j, 1, 10)
    j.setCurrentTerm(3, "127.0.0.1:7001")
    j.setRaftCommitIndex(7)
    j.close()
    j = open_journal()
    assert list(j[0:]) == [entry(i) for i in range(1, 11)]
    assert j[-1] == entry(10) and len(j) == 10
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (
        3,
        "127.0.0.1:7001",
        7,
    )


def test_torn_tail_mid_entry_is_dropped_and_appends_continue(
    open_journal: Any, jpath: Path
) -> None:
    j = open_journal()
    fill(j, 1, 5)
    j.close()
    with open(jpath, "r+b") as f:
        f.truncate(jpath.stat().st_size - 3)  # a crash halfway through writing entry 5
    j = open_journal()
    assert [e[1] for e in j[0:]] == [1, 2, 3, 4]
    j.add(*entry(5, term=2))  # must land after the valid records, not after the garbage
    j.close()
    assert [(e[1], e[2]) for e in read_journal(jpath).entries] == [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 2),
    ]
    assert read_journal(jpath).torn_bytes == 0


def test_flipped_byte_in_last_entry_is_dropped(open_journal: Any, jpath: Path) -> None:
    j = open_journal()
    fill(j, 1, 5)
    j.close()
    data = bytearray(jpath.read_bytes())
    data[-2] ^= 0x40
    jpath.write_bytes(bytes(data))
    assert read_journal(jpath).torn_bytes > 0
    j = open_journal()
    assert [e[1] for e in j[0:]] == [1, 2, 3, 4]


def _record_offsets(path: Path) -> list[int]:
    """Where each record of a journal file starts."""
    data, pos, out = path.read_bytes(), len(MAGIC), []
    while pos + FRAME.size <= len(data):
        length, _ = FRAME.unpack_from(data, pos)
        out.append(pos)
        pos += FRAME.size + length
    return out


@pytest.mark.parametrize("where", ["payload", "length"])
def test_damage_in_the_middle_refuses_to_open_naming_file_and_offset(
    open_journal: Any, jpath: Path, where: str
) -> None:
    j = open_journal()
    fill(j, 1, 10)
    j.close()
    before = jpath.read_bytes()
    third = _record_offsets(jpath)[2]  # entry 3: entries 4..10 after it are intact
    data = bytearray(before)
    data[third + (FRAME.size + 5 if where == "payload" else 1)] ^= 0x5A
    jpath.write_bytes(bytes(data))
    with pytest.raises(JournalError, match=rf"{jpath}.*offset {third}") as info:
        DurableJournal(jpath)
    assert info.value.hint and "rebuild" in info.value.hint
    assert jpath.read_bytes() == bytes(data), "a refused journal is left exactly as found"


def test_truncations_survive_reopen(open_journal: Any, jpath: Path) -> None:
    j = open_journal()
    fill(j, 1, 20)
    j.deleteEntriesTo(5)  # compaction: drop entries 1..5
    j.deleteEntriesFrom(10)  # conflict: drop entries 16..20 ...
    j.add(*entry(16, term=2))  # ... replaced by a new leader's entry
    j.close()
    j = open_journal()
    assert [(e[1], e[2]) for e in j[0:]] == [(i, 1) for i in range(6, 16)] + [(16, 2)]


def test_identical_resend_after_truncation_writes_nothing(open_journal: Any, jpath: Path) -> None:
    j = open_journal()
    fill(j, 1, 20)
    j.sync()
    size = jpath.stat().st_size
    j.deleteEntriesFrom(11)  # pysyncobj truncates before re-adding a resend of 12..20
    fill(j, 12, 20)
    assert not j.is_dirty
    j.sync()
    assert jpath.stat().st_size == size
    j.deleteEntriesFrom(11)  # a resend of only 12..15: the rest of the tail goes, atomically
    fill(j, 12, 15)
    assert j.is_dirty
    j.sync()
    assert [e[1] for e in read_journal(jpath).entries] == list(range(1, 16))


def test_rewrite_keeps_state_and_shrinks_file(open_journal: Any, jpath: Path) -> None:
    j = open_journal(rewrite_min_bytes=1024)
    fill(j, 1, 300)
    j.setCurrentTerm(2, "n2")
    size = jpath.stat().st_size
    j.deleteEntriesTo(290)  # what pysyncobj does after a dump: the file is now mostly dead
    assert jpath.stat().st_size < size / 10
    j.add(*entry(301))
    j.close()
    st = read_journal(jpath)
    assert [e[1] for e in st.entries] == list(range(291, 302))
    assert (st.term, st.voted_for) == (2, "n2")


def test_startup_clear_keeps_entries_after_the_dump(open_journal: Any, jpath: Path) -> None:
    """A crash after the dump was renamed but before pysyncobj truncated the journal."""
    j = open_journal(dump_file=jpath.parent / "dump")
    fill(j, 1, 10)
    j.close()
    j = open_journal(dump_file=jpath.parent / "dump")
    # pysyncobj's startup dump load: the journal does not start at the dump's entries 4, 5
    j.clear()
    j.add(*entry(4))
    j.add(*entry(5))
    assert [e[1] for e in j[0:]] == list(range(4, 11))
    j.close()
    assert [e[1] for e in read_journal(jpath).entries] == list(range(4, 11))


def test_clear_after_a_received_snapshot_is_a_real_clear(open_journal: Any, jpath: Path) -> None:
    dump = jpath.parent / "dump"
    j = open_journal(dump_file=dump)
    fill(j, 1, 10)
    j.close()
    j = open_journal(dump_file=dump)
    tmp = jpath.parent / "dump.1.tmp"
    tmp.write_bytes(b"snapshot from the leader")
    durable_replace(str(tmp), str(dump))  # what pysyncobj does before loading a snapshot
    j.clear()
    j.add(*entry(4))
    j.add(*entry(5))
    assert [e[1] for e in j[0:]] == [4, 5]
    j.close()
    assert [e[1] for e in read_journal(jpath).entries] == [4, 5]


def test_synced_entries_are_in_the_file_for_another_process(open_journal: Any, jpath: Path) -> None:
    j = open_journal()
    fill(j, 1, 3)
    j.setCurrentTerm(5, "n1")
    j.add(*entry(4, term=5))
    j.sync_log()  # the hook DurableTCPTransport runs before sending answers
    reader = (
        "import json, sys; from changelog.raft.journal import read_journal; "
        "st = read_journal(sys.argv[1]); "
        "print(json.dumps([[[e[1], e[2]] for e in st.entries], st.term, st.voted_for]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", reader, str(jpath)],
        capture_output=True, text=True, check=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.stdout.strip() == '[[[1, 1], [2, 1], [3, 1], [4, 5]], 5, "n1"]'
    assert not j.is_dirty


def test_failed_fsync_is_fatal_and_the_journal_refuses_further_use(open_journal: Any) -> None:
    fatal: list[OSError] = []

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "injected EIO")

    j = open_journal(fsync=broken_fsync, on_fatal=fatal.append)
    j.add(*entry(1))
    with pytest.raises(JournalError, match="fsync failed"):
        j.sync()
    assert [e.errno for e in fatal] == [errno.EIO]
    with pytest.raises(JournalError, match="failed earlier"):
        j.add(*entry(2))
    with pytest.raises(JournalError):
        j.setCurrentTerm(2, None)  # never a vote on a journal that lost data


def test_a_journal_is_opened_once(open_journal: Any, jpath: Path) -> None:
    open_journal()
    with pytest.raises(JournalError, match="already open"):
        DurableJournal(jpath)
    code = (
        "import sys; from changelog.raft.journal import DurableJournal; DurableJournal(sys.argv[1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(jpath)], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.returncode != 0 and "in use by another process" in out.stderr


def test_pysyncobj_file_journal_is_not_mistaken_for_a_torn_one(jpath: Path) -> None:
    fj = FileJournal(str(jpath))
    fj.add(NOOP, 1, 0)
    fj._destroy()
    with pytest.raises(JournalError, match="not a mirrorfs journal"):
        DurableJournal(jpath)


def test_durable_replace_fsyncs_file_then_directory(tmp_path: Path, monkeypatch: Any) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    (tmp_path / "dump.tmp").write_bytes(b"state")
    durable_replace(str(tmp_path / "dump.tmp"), str(tmp_path / "dump"))
    assert synced == [str(tmp_path / "dump.tmp"), str(tmp_path)]
    assert (tmp_path / "dump").read_bytes() == b"state"


# --------------------------------------------------------------------------- conf and wiring


def test_make_conf_refuses_unsafe_settings(tmp_path: Path) -> None:
    j, d = tmp_path / "journal", tmp_path / "dump"
    with pytest.raises(ConfigError) as err:
        make_conf(journal_file=j, dump_file=None, password="s")
    assert err.value.key == "dump_file"
    with pytest.raises(ConfigError) as err:
        make_conf(journal_file=None, dump_file=d, password="s")
    assert err.value.key == "journal_file"
    with pytest.raises(ConfigError) as err:
        make_conf(journal_file=j, dump_file=d, password="")
    assert err.value.key == "password"
    conf = make_conf(journal_file=j, dump_file=d, password="s")
    assert (conf.appendEntriesUseBatch, conf.dynamicMembershipChange, conf.useFork) == (
        False,
        False,
        True,
    )
    assert conf.leaderFallbackTimeout <= 5 and conf.commandsWaitLeader and conf.password == "s"
    conf.password = None
    with pytest.raises(ConfigError):
        DurableSyncObj("127.0.0.1:1", [], conf)


def test_install_is_idempotent_and_leaves_plain_syncobj_alone(tmp_path: Path) -> None:
    install()
    install()
    assert pysyncobj.serializer.atomicReplace is durable_replace
    conf = make_conf(journal_file=tmp_path / "j", dump_file=tmp_path / "d", password="s")
    port = free_ports(1)[0]
    plain = SyncObj(f"127.0.0.1:{port}", [], conf)
    try:
        assert isinstance(plain._SyncObj__raftLog, FileJournal)
    finally:
        plain.destroy_synchronous()


class _Log(SyncObjConsumer):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.values: list[int] = []

    @replicated  # type: ignore[untyped-decorator]
    def append(self, value: int) -> int:
        self.values.append(value)
        return len(self.values)


def test_answers_leave_a_node_only_when_its_journal_is_durable(tmp_path: Path) -> None:
    """Every next_node_idx / vote any node sends, it sends with a clean journal."""
    sends: list[tuple[str, bool]] = []

    class RecordingTransport(DurableTCPTransport):
        def _send_now(self, node: Any, message: Any) -> bool:
            if message.get("type") in DURABLE_MESSAGES:
                sends.append((message["type"], self._journal.is_dirty))
            return super()._send_now(node, message)

    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes: list[tuple[DurableSyncObj, _Log]] = []
    try:
        for i, addr in enumerate(addrs):
            conf = make_conf(
                journal_file=tmp_path / f"j{i}", dump_file=tmp_path / f"d{i}", password="s"
            )
            log = _Log()
            peers = [a for a in addrs if a != addr]
            node = DurableSyncObj(addr, peers, conf, [log], transport_class=RecordingTransport)
            nodes.append((node, log))
        leader = wait_for(lambda: next((n for n in nodes if n[0]._isLeader()), None), 30, "leader")
        done: list[int] = []
        for v in range(300):
            leader[1].append(v, callback=lambda res, err: done.append(err))
        wait_for(lambda: len(done) == 300, 60, "300 commits")
        assert set(done) == {0}
        wait_for(lambda: all(len(log.values) == 300 for _, log in nodes), 30, "replication")
    finally:
        for node, _ in nodes:
            node.destroy_synchronous()
    acks = [dirty for kind, dirty in sends if kind == "next_node_idx"]
    assert len(acks) >= 300  # the followers answered every entry...
    assert not any(dirty for _, dirty in sends)  # ...and never before the fsync
    for i in range(3):  # and the entries the leader counted are in every journal
        assert [pickle.loads(e[0][1:])[1] for e in read_journal(tmp_path / f"j{i}").entries
                if e[0][:1] == b"\x00"] == [(v,) for v in range(300)]  # fmt: skip


def _run_single_node(tmp_path: Path, addr: str, action: Callable[[Any, _Log], None]) -> list[int]:
    conf = make_conf(journal_file=tmp_path / "journal", dump_file=tmp_path / "dump", password="s")
    log = _Log()
    node = DurableSyncObj(addr, [], conf, [log])
    try:
        wait_for(lambda: node._isLeader(), 30, "the single node to lead")
        action(node, log)
    finally:
        node.destroy_synchronous()
    return log.values


def test_restart_between_dump_and_journal_truncation_keeps_later_writes(tmp_path: Path) -> None:
    """pysyncobj renames the dump, then truncates the journal: a crash in between used to make
    the restart drop every journal entry after the dump (committed writes included)."""
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    jf = tmp_path / "journal"

    def write(first: int, last: int) -> Callable[[Any, _Log], None]:
        def action(node: Any, log: _Log) -> None:
            for v in range(first, last):
                log.append(v, sync=True, timeout=10)

        return action

    def compact_then_write(node: Any, log: _Log) -> None:
        wait_for(lambda: len(log.values) == 30, 30, "the journal to be replayed")
        node.forceLogCompaction()
        wait_for(lambda: node.getStatus()["log_len"] < 10, 30, "compaction")
        write(30, 50)(node, log)

    _run_single_node(tmp_path, addr, write(0, 30))
    before_dump = read_journal(jf)  # as the journal was before the dump...
    _run_single_node(tmp_path, addr, compact_then_write)
    after = read_journal(jf)  # ...and after: starts at the dump's two entries
    first_kept = after.entries[0][1]
    assert first_kept > 2 and (tmp_path / "dump").exists()
    jf.unlink()  # rebuild the journal the crash would have left: not truncated
    j = DurableJournal(jf)
    for e in [e for e in before_dump.entries if e[1] < first_kept] + after.entries:
        j.add(*e)
    j.setCurrentTerm(after.term, after.voted_for)
    j.setRaftCommitIndex(after.commit_index)
    j.close()

    def wait_applied(node: Any, log: _Log) -> None:
        wait_for(lambda: len(log.values) >= 50, 30, "the later writes to be applied")

    assert _run_single_node(tmp_path, addr, wait_applied) == list(range(50))


# --------------------------------------------------------------------------- real processes


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def factory(**kw: Any) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


def converged(c: Cluster, marker: str) -> list[str] | None:
    lists: list[list[str]] = [n.request("values")["values"] for n in c.nodes]
    if marker in lists[0] and all(v == lists[0] for v in lists):
        return lists[0]
    return None


@pytest.mark.parametrize("compaction", [False, True], ids=["journal-only", "after-compaction"])
def test_kill9_of_all_nodes_loses_no_acknowledged_write(clusters: Any, compaction: bool) -> None:
    c = clusters(**({"compact_min_entries": 40} if compaction else {}))
    c.start()
    leader = c.wait_leader()
    leader.request("stream", prefix="w", count=1_000_000, inflight=16)
    wait_for(lambda: len(leader.acks) >= 400, 60, "400 acknowledged writes")
    if compaction:
        wait_for(lambda: all(n.request("status")["dump_exists"] for n in c.nodes), 30, "dumps")
    statuses = [n.request("status") for n in c.nodes]
    applied_before = [n.request("values")["values"] for n in c.nodes]
    c.kill_all()
    acked = list(leader.acks)
    if compaction:  # the journals no longer hold the early entries: the dump must
        assert all(s["log_len"] < s["count"] for s in statuses), statuses
    for n in c.nodes:
        n.start()
    new_leader = c.wait_leader()
    assert "index" in new_leader.request("append", value="after-restart", wait_s=15)
    final = wait_for(lambda: converged(c, "after-restart"), 60, "all nodes to converge")
    assert len(final) == len(set(final))  # nothing applied twice
    acked_set = set(acked)
    assert [v for v in final if v in acked_set] == acked  # every ack, in commit order
    for before in applied_before:  # nothing committed was overwritten
        assert final[: len(before)] == before


def _frame(payload: bytes) -> bytes:
    return struct.pack("i", len(payload)) + payload


class _Touch:
    """Unpickling this creates a file: the proof that a peer got a pickle executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _attack(addr: str, frame: bytes) -> bool:
    """Send `frame` as a pysyncobj peer would; True if the node closed the connection."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(frame)
        s.settimeout(10)
        try:
            return s.recv(1024) == b""
        except (ConnectionResetError, TimeoutError):
            return False


def test_peer_without_password_cannot_get_a_pickle_executed(clusters: Any, tmp_path: Path) -> None:
    evil = zlib.compress(pickle.dumps(["status", _Touch(str(tmp_path / "pwned"))]), 3)
    # Control: against pysyncobj without a password the same bytes run code in the node.
    insecure = NodeProcess(f"127.0.0.1:{free_ports(1)[0]}", [], tmp_path / "insecure", "")
    try:
        insecure.start()
        _attack(insecure.addr, _frame(evil))
        wait_for(lambda: (tmp_path / "pwned").exists(), 15, "the control attack to work")
    finally:
        insecure.stop()
    (tmp_path / "pwned").unlink()

    c = clusters()
    c.start()
    leader = c.wait_leader()
    assert "index" in leader.request("append", value="before", wait_s=15)
    wrong_key = getEncryptor("not-the-volume-secret")
    forged = wrong_key.encrypt_at_time(evil, int(time.monotonic()))
    for node in c.nodes:
        assert _attack(node.addr, _frame(evil)), "plain pickle: connection not closed"
        assert _attack(node.addr, _frame(forged)), "wrong key: connection not closed"
    assert not (tmp_path / "pwned").exists()
    assert "index" in leader.request("append", value="after", wait_s=15)
    final = wait_for(lambda: converged(c, "after"), 30, "convergence")
    assert final == ["before", "after"]


def test_node_with_wrong_password_cannot_join(clusters: Any, tmp_path: Path) -> None:
    c = clusters()
    c.start()
    leader = c.wait_leader()
    victim = next(n for n in c.nodes if n is not leader)
    assert "index" in leader.request("append", value="v0", wait_s=15)
    victim.kill()
    term_before = leader.request("status")["term"]
    rogue = NodeProcess(victim.addr, victim.partners, tmp_path / "rogue", "wrong-secret")
    try:
        rogue.start()
        # Longer than pysyncobj's connectionRetryTime (5 s): both sides tried to connect.
        deadline = time.monotonic() + 7
        i = 0
        while time.monotonic() < deadline:
            i += 1
            assert "index" in leader.request("append", value=f"v{i}", wait_s=15)
            time.sleep(0.1)
        rs = rogue.request("status")
        assert (rs["leader"], rs["count"], rs["term"]) == (None, 0, 0)
        assert "error" in rogue.request("append", value="rogue", wait_s=2)
        ls = leader.request("status")
        assert ls["is_leader"] and ls["term"] == term_before
    finally:
        rogue.stop()
    victim.start()  # the real node, with its journal, catches up
    final = wait_for(lambda: converged(c, f"v{i}"), 60, "the real node to catch up")
    assert "rogue" not in final and final == [f"v{k}" for k in range(i + 1)]
