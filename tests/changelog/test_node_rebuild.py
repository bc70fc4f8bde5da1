"""A node whose journal is damaged in the middle refuses to start, and is rebuilt from its peers.

The damage is real bytes flipped in the journal of a stopped follower (entries after it are
intact, so it cannot be a torn tail). The node must exit non-zero naming the file and offset;
the operator's way out, as the README documents it, is to move the node's data directory aside
and start it again: it rejoins empty and catches up from the leader, losing nothing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from changelog.raft.journal import FRAME, MAGIC
from tests.changelog.cluster import SourceCluster


def damage_middle(journal: Path) -> int:
    """Flip a payload byte of a record in the middle; returns that record's offset."""
    data, pos, offsets = bytearray(journal.read_bytes()), len(MAGIC), []
    while pos + FRAME.size <= len(data):
        length, _ = FRAME.unpack_from(data, pos)
        offsets.append(pos)
        pos += FRAME.size + length
    assert len(offsets) >= 6, f"journal too short to damage its middle ({len(offsets)} records)"
    victim = offsets[len(offsets) // 2]
    data[victim + FRAME.size + 3] ^= 0x5A
    journal.write_bytes(bytes(data))
    return victim


async def test_damaged_journal_refuses_then_rebuild_from_peers(tmp_path: Path) -> None:
    async with SourceCluster.running(tmp_path) as cluster:
        leader = await cluster.wait_leader()
        victim = next(i for i in cluster.node_ids if i != leader)
        async with cluster.client() as c:
            for i in range(40):
                await c.op("mkdir", path=f"/a{i:02d}", mode=0o755)
        cluster.stop_node(victim)
        journal = cluster.directory / cluster.cfg.node(victim).data_dir / "raft.journal"
        offset = damage_middle(journal)

        cluster.start_node(victim)
        deadline = time.monotonic() + 60
        while cluster.procs[victim].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.procs[victim].returncode not in (None, 0), "started on a damaged journal"
        log = cluster.log_tail(victim, 20)
        assert str(journal) in log and f"offset {offset}" in log, log

        async with cluster.client() as c:  # the other two keep a quorum meanwhile
            for i in range(20):
                await c.op("mkdir", path=f"/b{i:02d}", mode=0o755)
            head = (await c.status(cluster.api(leader)))["applied_version"]

        data_dir = cluster.directory / cluster.cfg.node(victim).data_dir
        shutil.move(data_dir, data_dir.with_name(data_dir.name + ".damaged"))
        cluster.start_node(victim)
        await cluster.wait_applied(head, [victim], timeout_s=60)
        async with cluster.client(victim) as c:
            _, rows = await c.meta("readdir", path="/", limit=1000)
        names = {row["name"] for row in rows}
        assert {f"a{i:02d}" for i in range(40)} | {f"b{i:02d}" for i in range(20)} <= names
