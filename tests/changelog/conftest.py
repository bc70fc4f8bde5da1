from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.changelog.cluster import SourceCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SourceCluster]:
    c = SourceCluster(tmp_path / "vol", nodes=3)
    try:
        yield c
    finally:
        c.kill_all()


@pytest.fixture
async def running(cluster: SourceCluster) -> SourceCluster:
    cluster.start_all()
    await cluster.wait_leader()
    return cluster
