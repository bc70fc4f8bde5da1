"""Retries are applied exactly once, on a real Raft cluster (node processes, kill -9).

A client that lost an answer retries with the same request_id; the source must give back the
first answer and apply nothing, however many requests committed in between (within the dedup
window), after a leader change, and after every node restarted. Past the window the retry is
refused with RequestExpiredError, never re-applied.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.changelog.cluster import SourceCluster
from volume.client import OpsResult, SourceClient
from volume.errors import RequestExpiredError
from volume.inode import block_count
from volume.records import Record
from volume.request_ids import new_request_id, parse_request_id

FLOOD = 25_000
FLOOD_CONCURRENCY = 64


def request_id(age_s: float = 0.0) -> str:
    """A request id as the client mints it, created `age_s` ago."""
    return new_request_id(time.time_ns() // 1_000_000 - int(age_s * 1000))


def put_ops(path: str, slice_id: int, size: int) -> list[dict[str, Any]]:
    sums = [f"xxh3:{slice_id:016x}"] * block_count(size)
    write = {"path": path, "chunk_index": 0, "pos": 0, "slice_id": slice_id, "size": size}
    return [
        {"op": "create", "args": {"path": path, "mode": 0o644, "exclusive": False}},
        {"op": "truncate", "args": {"path": path, "size": 0}},
        {"op": "write", "args": {**write, "checksums": sums}},
    ]


async def first_put(c: SourceClient, path: str, rid: str) -> tuple[list[dict[str, Any]], OpsResult]:
    alloc = await c.op("alloc_slices", count=1)
    ops = put_ops(path, int(alloc["effect"]["first"]), 1234)
    answer = await c.ops(ops, request_id=rid)
    assert all(r["ok"] for r in answer.results), answer
    return ops, answer


async def namespace_records(c: SourceClient, after: int) -> list[Record]:
    return [r async for r in c.stream(after + 1, follow=False) if r.op != "tick"]


async def flood(c: SourceClient, count: int) -> None:
    """`count` small requests, each with its own request id, FLOOD_CONCURRENCY at a time."""
    todo = iter(range(count))

    async def worker() -> None:
        for i in todo:
            res = await c.ops([{"op": "mkdir", "args": {"path": f"/flood/d{i}", "mode": 0o755}}])
            res.raise_first_error()

    await c.op("mkdir", path="/flood", mode=0o755)
    async with asyncio.TaskGroup() as tg:
        for _ in range(FLOOD_CONCURRENCY):
            tg.create_task(worker())


async def assert_retry_is_the_first_answer(
    c: SourceClient, ops: list[dict[str, Any]], first: OpsResult, path: str
) -> None:
    head, _ = await c.meta("lookup", path=path, leader=True)  # a restarted node may lag
    again = await c.ops(ops, request_id=first.request_id)
    assert again.results == first.results, "a retry must get the first answer back"
    assert again.version == first.version
    assert await namespace_records(c, head) == [], "the retry applied something"
    _, attr = await c.meta("lookup", path=path, leader=True)
    assert attr["size"] == 1234, "the file lost its content to a re-applied put"


@pytest.mark.slow
async def test_retry_after_25000_other_requests_gets_the_first_answer(tmp_path: Path) -> None:
    async with (
        SourceCluster.running(tmp_path / "vol", nodes=3) as cluster,
        cluster.client(retry_s=60) as c,
    ):
        ops, first = await first_put(c, "/r", request_id())
        await flood(c, FLOOD)
        await assert_retry_is_the_first_answer(c, ops, first, "/r")


@pytest.mark.parametrize("fault", ["leader-killed", "all-restarted"])
async def test_retry_after_a_leader_change_or_restart_gets_the_first_answer(
    tmp_path: Path, fault: str
) -> None:
    """The memory is replicated state: a new leader knows, and so does a node rebuilt from
    its dump after a compaction (compaction_min_entries is low, so the dump is used)."""
    async with SourceCluster.running(
        tmp_path / "vol", nodes=3, compaction_min_entries=20
    ) as cluster:
        async with cluster.client() as c:
            ops, first = await first_put(c, "/r", request_id())
            await flood(c, 100)  # past a compaction or two
        leader = await cluster.wait_leader()
        if fault == "leader-killed":
            cluster.kill_node(leader)  # between the commit and the retry: the answer was lost
            survivors = [i for i in cluster.node_ids if i != leader]
            await cluster.wait_leader(among=survivors)
        else:
            # Group commit packs the flood into few Raft entries: ticks add the rest.
            deadline = time.monotonic() + 60
            while len(list((tmp_path / "vol").glob("source/node*/raft.dump"))) < 3:
                assert time.monotonic() < deadline, "no compaction: the dump would not be covered"
                await asyncio.sleep(0.2)
            cluster.kill_all()
            cluster.start_all()
            await cluster.wait_leader()
            survivors = cluster.node_ids
        async with cluster.client(*survivors, retry_s=60) as c:
            await assert_retry_is_the_first_answer(c, ops, first, "/r")


async def test_retry_after_the_window_is_refused(tmp_path: Path) -> None:
    window_s = 2.0
    async with (
        SourceCluster.running(tmp_path / "vol", nodes=1, dedup_window_s=window_s) as cluster,
        cluster.client() as c,
    ):
        ops, first = await first_put(c, "/r", request_id())
        committed_ts = (await c.status(cluster.api(1)))["head_ts"]
        deadline = time.monotonic() + 30
        while (await c.status(cluster.api(1)))["head_ts"] <= committed_ts + window_s * 1000:
            assert time.monotonic() < deadline, "ticks did not move the source clock on"
            await asyncio.sleep(0.1)
        head = (await c.status(cluster.api(1)))["applied_version"]
        with pytest.raises(RequestExpiredError) as info:
            await c.ops(ops, request_id=first.request_id)
        assert first.request_id in info.value.message and "dedup window" in info.value.message
        assert info.value.hint and "new request" in info.value.hint
        # Never seen, but created before the window: refused as well.
        with pytest.raises(RequestExpiredError):
            await c.ops(ops, request_id=request_id(age_s=window_s + 1))
        assert await namespace_records(c, head) == [], "a refused request applied something"
        _, attr = await c.meta("lookup", path="/r")
        assert attr["size"] == 1234


async def test_request_ids_are_checked_and_minted_by_the_api(running: SourceCluster) -> None:
    headers = {"Authorization": f"Bearer {running.cfg.token}"}
    mkdir = [{"op": "mkdir", "args": {"path": "/a", "mode": 0o755}}]
    async with aiohttp.ClientSession(headers=headers) as s:
        for rid in ["not-an-id", "0" * 12 + "-" + "g" * 32, 42]:
            async with s.post(
                f"{running.api(1)}/v1/ops", json={"request_id": rid, "ops": mkdir}
            ) as resp:
                body = await resp.json()
                assert resp.status == 400, rid
                assert body["error"] == "BadRequestError" and "12 hex digits" in body["message"]
        async with s.post(f"{running.api(1)}/v1/ops", json={"ops": mkdir}) as resp:
            body = await resp.json()
            assert resp.status == 200 and body["results"][0]["ok"], body
            created, _ = parse_request_id(body["request_id"])
            assert abs(created - time.time() * 1000) < 60_000


async def test_a_retried_mirror_register_gets_its_first_answer(tmp_path: Path) -> None:
    """Seen under load: `mirror create` failed "already registered" right after an election,
    its retried register having found its own first attempt. The same request id is one
    request: the retry gets the first answer, and the registry holds one registration."""
    async with SourceCluster.running(tmp_path / "vol", nodes=1) as cluster:
        rid = new_request_id()
        url = f"{cluster.api(1)}/v1/mirrors/eu"
        headers = {"Authorization": f"Bearer {cluster.cfg.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            answers = []
            for _ in range(2):  # the first answer "lost", the client sends it again
                async with http.post(url, params={"request_id": rid}) as resp:
                    assert resp.status == 200, await resp.text()
                    answers.append(await resp.json())
        assert answers[0] == answers[1] and not answers[0]["existed"]
        async with cluster.client() as c:
            st = await c.status(cluster.api(1))
            records = [r async for r in c.stream(1, follow=False)]
        assert list(st["mirrors"]) == ["eu"]
        assert sum(r.op == "mirror_register" for r in records) == 1
