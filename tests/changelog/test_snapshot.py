"""A snapshot taken while writes go on is the namespace exactly as of its version."""

from __future__ import annotations

import asyncio

from changelog.namespace import Namespace
from tests.changelog.cluster import SourceCluster
from volume.snapshot import read_snapshot_records


async def test_snapshot_during_writes_is_consistent(running: SourceCluster) -> None:
    stop = asyncio.Event()

    async def writer() -> None:
        async with running.client() as c:
            i = 0
            while not stop.is_set():
                await c.ops(
                    [
                        {"op": "mkdir", "args": {"path": f"/d{i}", "mode": 0o755}},
                        {"op": "create", "args": {"path": f"/d{i}/f", "mode": 0o644}},
                    ]
                )
                if i % 3 == 0 and i:
                    await c.op("rename", src=f"/d{i - 1}/f", dst=f"/d{i}/g")
                i += 1

    task = asyncio.create_task(writer())
    await asyncio.sleep(1.0)
    async with running.client() as c:
        chunks = [chunk async for chunk in c.snapshot()]
        records = read_snapshot_records(iter(chunks))
        header = next(records)
        snap = Namespace.from_snapshot([r.effect for r in records])
        await asyncio.sleep(0.5)
        stop.set()
        await task
        log = [r async for r in c.stream(1, follow=False)]
    assert header.version > 10
    replayed = Namespace()
    for rec in log:
        if rec.version > header.version:
            break
        replayed.replay(rec.op, rec.effect)
    assert snap.dump_tree() == replayed.dump_tree()
    assert log[-1].version > header.version, "writes did not continue past the snapshot"


async def test_truncated_snapshot_stream_is_detected(running: SourceCluster) -> None:
    import pytest

    from volume.errors import FrameError

    async with running.client() as c:
        await c.op("mkdir", path="/x", mode=0o755)
        data = b"".join([chunk async for chunk in c.snapshot()])
    with pytest.raises(FrameError):
        list(read_snapshot_records(iter([data[:-10]])))
    assert len(list(read_snapshot_records(iter([data])))) >= 2
