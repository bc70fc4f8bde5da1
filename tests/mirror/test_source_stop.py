"""A source leader asked to stop while a mirror follows its changelog stops within seconds.

Seen (and reproduced here on the old code: still running after 40 s): the node closed its API
but its changelog stream handler never ended, so the process never exited and stayed Raft
leader, and no other node could take over until it was killed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion, make_files


async def test_sigterm_stops_a_leader_a_mirror_streams_from(tmp_path: Path, pg_dsn: str) -> None:
    async with SourceCluster.running(tmp_path / "vol") as cluster:
        region = MirrorRegion(cluster, "eu", pg_dsn)
        await region.create()
        region.start()
        try:
            await make_files(cluster, "a", 50)
            await region.assert_equal_to_source()  # the daemon follows the leader's stream
            leader = await cluster.wait_leader()
            proc = cluster.procs[leader]
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            assert time.monotonic() - start < 10
            others = [i for i in cluster.node_ids if i != leader]
            await cluster.wait_leader(among=others, timeout_s=20)
            await make_files(cluster, "b", 20)
            await region.assert_equal_to_source()  # and it carries on from another node
        finally:
            region.stop()
