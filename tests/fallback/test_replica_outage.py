"""A region's PostgreSQL stops under an open client: reads under `source` carry on from the
source, `error` says why, and a write from the region commits and returns (with a warning)
instead of failing after its commit. Regression: every read and the write's settle raised
"cannot reach PostgreSQL" although the source was up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cli.connect import open_client
from fallback.consistency import ReadBound, StalePolicy
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from tests.mirror.test_db_outage import own_postgres  # noqa: F401 - the fixture
from tests.mirror.waits import wait_following
from tests.servers.postgres import PostgresServer
from volume.config import load_config


async def test_reads_and_writes_go_on_while_the_replica_database_is_down(
    tmp_path: Path,
    own_postgres: PostgresServer,  # noqa: F811 - the fixture imported above
) -> None:
    dsn = own_postgres.create_database("eu")
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        region = MirrorRegion(cluster, "eu", dsn)
        await region.create()
        region.start()
        try:
            await wait_following(region)
            cfg = load_config(cluster.config_path)
            async with await open_client(cfg, "eu", uid=0, gid=0) as fs:
                await fs.write_file("/a.bin", b"first")
                assert await fs.read_file("/a.bin") == b"first"  # through the replica

                await asyncio.to_thread(own_postgres.stop)
                # The source answers instead (the default policy), blocks from the buckets.
                assert (await fs.stat("/a.bin")).size == 5
                assert await fs.read_file("/a.bin") == b"first"
                assert [name async for name, _ in fs.ls("/")] == ["a.bin"]
                # A write commits at the source and returns; reading it back works too.
                await fs.write_file("/b.bin", b"second")
                assert await fs.read_file("/b.bin") == b"second"
                # Under `error` the replica's trouble is the answer, as it says.
                with pytest.raises(Exception, match="PostgreSQL") as err:
                    await fs.stat("/a.bin", bound=ReadBound(policy=StalePolicy.ERROR))
                assert getattr(err.value, "temporary", False)
        finally:
            region.kill()
