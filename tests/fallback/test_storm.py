"""The model-load storm (issue 10, "must hold"): 8 processes of one mirror region start together
and read the same 256 MiB file that has not been copied yet (the replicator paused): every
byte is correct, and the source bucket serves at most 1.25x the file's bytes.

Egress is metered outside the code under test: the source bucket is SeaweedFS S3 behind
tests/servers/faultproxy.py, which counts the response bytes of every GET of a block key it
forwards. The mirror bucket is a local directory (the region's own storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from fallback import FsClient
from mirror.replicate import CopyQueue
from objstore.keys import BLOCK_PREFIX
from tests.changelog.cluster import SourceCluster
from tests.mirror.region import MirrorRegion
from tests.mirror.waits import wait_following, wait_status
from tests.servers.faultproxy import FaultProxy
from tests.servers.seaweed import SeaweedServer
from volume.config import load_config

MiB = 1024 * 1024
FILE_SIZE = 256 * MiB
READERS = 8
MAX_EGRESS_RATIO = 1.25
READER_START_TIMEOUT_S = 60.0
STORM_TIMEOUT_S = 120.0


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.endpoint) as p:
        yield p


@pytest.fixture
async def cluster(
    tmp_path: Path, s3_bucket: str, proxy: FaultProxy
) -> AsyncIterator[SourceCluster]:
    bucket = f"s3://{s3_bucket}?endpoint={proxy.url}"
    async with SourceCluster.running(tmp_path / "vol", nodes=1, bucket=bucket) as c:
        yield c


@pytest.fixture
async def region(cluster: SourceCluster, pg_dsn: str) -> AsyncIterator[MirrorRegion]:
    r = MirrorRegion(cluster, "eu", pg_dsn)
    try:
        yield r
    finally:
        r.stop()


def write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 4 * MiB))
            digest.update(piece)
            f.write(piece)
            left -= len(piece)
    return digest.hexdigest()


async def read_in_processes(
    config: Path, region: str, path: str, n: int
) -> list[dict[str, object]]:
    """Start `n` scenarios.storm_reader processes, let them all open their clients, then start
    them reading at once; their results."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "scenarios.storm_reader",
            str(config),
            region,
            path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(n)
    ]
    try:
        async with asyncio.timeout(READER_START_TIMEOUT_S):
            for proc in procs:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                if line.strip() != b"ready":
                    _, err = await proc.communicate()
                    raise AssertionError(f"a reader did not start: {line!r}\n{err.decode()}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        results = []
        async with asyncio.timeout(STORM_TIMEOUT_S):
            for proc in procs:
                out, err = await proc.communicate()
                assert proc.returncode == 0, f"a reader failed:\n{err.decode()[-3000:]}"
                results.append(orjson.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()


async def test_the_storm_costs_the_source_one_copy(
    region: MirrorRegion, cluster: SourceCluster, proxy: FaultProxy, tmp_path: Path
) -> None:
    await region.create()
    async with region.database() as db:
        await CopyQueue(db).set_paused(True)  # nothing copies the file but its readers
    region.start()
    await wait_following(region)
    local = tmp_path / "model.bin"
    expected = await asyncio.to_thread(write_random_file, local, FILE_SIZE)
    async with await FsClient.for_source(load_config(cluster.config_path), uid=0, gid=0) as fs:
        with open(local, "rb") as f:
            written = await fs.put(f, "/model.bin")
    local.unlink()
    await region.wait_applied(written.version)
    async with region.database() as db, db.acquire() as conn:
        states = dict(await conn.fetch("SELECT state, count(*) FROM blocks GROUP BY state"))
    assert states == {"pending": FILE_SIZE // (4 * MiB)}, states

    proxy.reset()  # the meter starts now: the storm's GETs only
    started = time.monotonic()
    results = await read_in_processes(cluster.config_path, "eu", "/model.bin", READERS)
    elapsed = time.monotonic() - started

    for r in results:
        assert r["size"] == FILE_SIZE and r["sha256"] == expected, "a reader got wrong bytes"
    served = {
        path: n
        for (method, path), n in proxy.body_bytes().items()
        if method == "GET" and f"/{BLOCK_PREFIX}" in path
    }
    egress = sum(served.values())
    ratio = egress / FILE_SIZE
    print(
        f"storm: {READERS} readers x {FILE_SIZE // MiB} MiB in {elapsed:.1f} s"
        f" ({READERS * FILE_SIZE / MiB / elapsed:.0f} MiB/s aggregate);"
        f" source served {egress / MiB:.1f} MiB = {ratio:.3f}x the file"
        f" over {len(served)} block keys"
    )
    assert ratio <= MAX_EGRESS_RATIO, f"source served {ratio:.2f}x the file's bytes"
    assert len(served) == FILE_SIZE // (4 * MiB)

    # Every block is in the mirror bucket now, marked copied, with the replicator paused.
    async with region.database() as db, db.acquire() as conn:
        states = dict(await conn.fetch("SELECT state, count(*) FROM blocks GROUP BY state"))
    assert states == {"copied": FILE_SIZE // (4 * MiB)}, states
    # And the region's counters (flushed by each reader's close) say the same.
    st = await wait_status(
        region,
        lambda d: (
            d["fallback_reads"] + d["source_gets_saved"] + d["mirror_hits"]
            >= READERS * FILE_SIZE // (4 * MiB)
        ),
        "the readers' counters reach the region",
        timeout_s=20,
    )
    assert st["fallback_bytes"] <= MAX_EGRESS_RATIO * FILE_SIZE, st
    assert st["fallback_bytes"] >= FILE_SIZE, st
    assert st["fallback_reads"] <= MAX_EGRESS_RATIO * FILE_SIZE // (4 * MiB), st
