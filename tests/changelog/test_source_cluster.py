"""The source region as a real 3-process Raft cluster: crashes, restarts, streams, bad input."""

from __future__ import annotations

import asyncio
import errno
import time

import aiohttp
import pytest

from tests.changelog.cluster import SourceCluster
from volume.client import SourceClient
from volume.errors import AuthError, BadRequestError, FsError, VersionGoneError
from volume.records import Record


async def write_stream(client: SourceClient, acked: list[str], stop: asyncio.Event) -> None:
    """Sequential mkdirs; a name is in `acked` only once the source said it committed."""
    i = 0
    while not stop.is_set():
        name = f"/w{i:05d}"
        try:
            await client.op("mkdir", path=name, mode=0o755)
            acked.append(name)
        except FsError as exc:  # a retried batch whose first answer was lost is deduplicated,
            assert exc.errno != errno.EEXIST, "a retried write was applied twice"
        i += 1


async def node_records(cluster: SourceCluster, node_id: int) -> list[Record]:
    async with cluster.client(node_id) as c:
        return [r async for r in c.stream(1, follow=False, node=cluster.api(node_id))]


async def assert_converged(cluster: SourceCluster, nodes: list[int], acked: list[str]) -> None:
    leader = await cluster.wait_leader(among=nodes)
    async with cluster.client(leader) as c:
        head = (await c.status(cluster.api(leader)))["applied_version"]
    await cluster.wait_applied(head, nodes)
    logs = {i: await node_records(cluster, i) for i in nodes}
    ref = logs[nodes[0]][:head]
    assert [r.version for r in ref] == list(range(1, head + 1)), "gap or duplicate"
    for i in nodes[1:]:
        assert logs[i][:head] == ref, f"node {i} changelog differs"
    for i in nodes:
        async with cluster.client(i) as c:
            _, names = await c.meta("readdir", path="/", limit=10_000)
        present = {"/" + row["name"] for row in names}
        missing = [n for n in acked if n not in present]
        assert not missing, f"node {i} lost acknowledged writes {missing[:5]}"


async def test_writes_replicate_and_changelog_is_identical(running: SourceCluster) -> None:
    async with running.client() as c:
        res = await c.ops(
            [{"op": "mkdir", "args": {"path": f"/d{i}", "mode": 0o755}} for i in range(20)]
        )
        assert all(r["ok"] for r in res.results)
        versions = [r["version"] for r in res.results]
        assert versions == list(range(versions[0], versions[0] + 20))
    await assert_converged(running, running.node_ids, [f"/d{i}" for i in range(20)])


async def test_kill_leader_during_writes_loses_nothing_and_stream_resumes(
    running: SourceCluster,
) -> None:
    leader = await running.wait_leader()
    acked: list[str] = []
    stop = asyncio.Event()
    received: list[Record] = []

    async def subscribe() -> None:
        # Prefer the node we are about to kill, so the stream must move to another node.
        urls = [running.api(leader)] + [running.api(i) for i in running.node_ids if i != leader]
        async with SourceClient(urls, running.cfg.token) as c:
            async for rec in c.stream(1):
                received.append(rec)
                if stop.is_set() and rec.version >= target:
                    return

    target = 10**9
    async with running.client(retry_s=60) as writer:
        sub = asyncio.create_task(subscribe())
        wtask = asyncio.create_task(write_stream(writer, acked, stop))
        while len(acked) < 50:
            await asyncio.sleep(0.01)
        running.kill_node(leader)
        before_kill = len(acked)
        deadline = time.monotonic() + 60
        while len(acked) < before_kill + 50:
            assert time.monotonic() < deadline, "writes did not resume after the leader died"
            await asyncio.sleep(0.05)
        stop.set()
        await wtask
    survivors = [i for i in running.node_ids if i != leader]
    await assert_converged(running, survivors, acked)
    async with running.client(*survivors) as c:
        target = (await c.status(running.api(survivors[0])))["applied_version"]
    await asyncio.wait_for(sub, 60)
    assert [r.version for r in received] == list(range(1, len(received) + 1))
    running.start_node(leader)
    await assert_converged(running, running.node_ids, acked)


@pytest.mark.parametrize("compact", [False, True], ids=["journal", "after-compaction"])
async def test_kill_all_nodes_and_restart_keeps_every_acknowledged_write(
    tmp_path: pytest.TempPathFactory, compact: bool
) -> None:
    cluster = SourceCluster(
        tmp_path / "vol",  # type: ignore[operator]
        nodes=3,
        compaction_min_entries=50 if compact else 50_000,
    )
    try:
        cluster.start_all()
        await cluster.wait_leader()
        acked: list[str] = []
        stop = asyncio.Event()
        async with cluster.client() as c:
            task = asyncio.create_task(write_stream(c, acked, stop))
            while len(acked) < 300:
                await asyncio.sleep(0.01)
            cluster.kill_all()
            stop.set()
            task.cancel()
            with pytest.raises((asyncio.CancelledError, Exception)):
                await task
        if compact:
            dumps = list((tmp_path / "vol").glob("source/node*/raft.dump"))  # type: ignore[operator]
            assert dumps, "no log compaction happened: the test would not cover it"
        cluster.start_all()
        await assert_converged(cluster, cluster.node_ids, acked)
        async with cluster.client() as c:
            await c.op("mkdir", path="/after-restart", mode=0o755)
        await assert_converged(cluster, cluster.node_ids, [*acked, "/after-restart"])
    finally:
        cluster.kill_all()


async def test_clean_restart_continues_versions(running: SourceCluster) -> None:
    async with running.client() as c:
        first = await c.op("mkdir", path="/a", mode=0o755)
    running.stop_all()
    running.start_all()
    await running.wait_leader()
    async with running.client() as c:
        second = await c.op("mkdir", path="/b", mode=0o755)
        assert second["version"] > first["version"]
        _, attr = await c.meta("lookup", path="/a", min_version=second["version"])
        assert attr["kind"] == "dir"
    await assert_converged(running, running.node_ids, ["/a", "/b"])


async def test_ticks_advance_head_ts_when_idle(running: SourceCluster) -> None:
    leader = await running.wait_leader()
    async with running.client(leader) as c:
        s1 = await c.status(running.api(leader))
        deadline = time.monotonic() + 10
        while True:
            s2 = await c.status(running.api(leader))
            if s2["applied_version"] >= s1["applied_version"] + 3:
                break
            assert time.monotonic() < deadline, "no ticks committed"
            await asyncio.sleep(0.1)
        assert s2["head_ts"] > s1["head_ts"]


async def test_bad_namespace_input_is_refused_and_changes_nothing(running: SourceCluster) -> None:
    async with running.client() as c:
        await c.op("mkdir", path="/dir", mode=0o755)
        await c.op("mkdir", path="/dir/sub", mode=0o755)
        cases = [
            ("lookup-like unlink", {"op": "unlink", "args": {"path": "/nope"}}, errno.ENOENT),
            (
                "long name",
                {"op": "mkdir", "args": {"path": "/" + "x" * 256, "mode": 0o755}},
                errno.ENAMETOOLONG,
            ),
            ("nul", {"op": "mkdir", "args": {"path": "/a\x00b", "mode": 0o755}}, errno.EINVAL),
            ("non-empty rmdir", {"op": "rmdir", "args": {"path": "/dir"}}, errno.ENOTEMPTY),
            (
                "into own subtree",
                {"op": "rename", "args": {"src": "/dir", "dst": "/dir/sub/x"}},
                errno.EINVAL,
            ),
            ("unknown op", {"op": "explode", "args": {}}, errno.EINVAL),
        ]
        before = [r async for r in c.stream(1, follow=False)]
        for what, op, want in cases:
            res = await c.ops([op])
            assert not res.results[0]["ok"], what
            with pytest.raises(FsError) as info:
                res.raise_first_error()
            assert info.value.errno == want, what
        after = [r async for r in c.stream(1, follow=False)]
        assert [r for r in after if r.op != "tick"] == [r for r in before if r.op != "tick"]
        with pytest.raises(FsError) as info:
            await c.meta("lookup", path="/dir/missing")
        assert info.value.errno == errno.ENOENT


async def test_wrong_or_missing_token_is_401(running: SourceCluster) -> None:
    async with SourceClient(running.cfg.api_urls, "wrong-token-000000") as c:
        with pytest.raises(AuthError):
            await c.op("mkdir", path="/x", mode=0o755)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{running.api(1)}/v1/status") as resp:
            assert resp.status == 401
        log = (running.directory / "node1.log").read_text()
        assert "api.unauthorized" in log


async def test_malformed_requests_are_400(running: SourceCluster) -> None:
    headers = {"Authorization": f"Bearer {running.cfg.token}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        for body in (b"{not json", b"[]", b'{"ops": "x"}', b'{"ops": []}', b'{"ops": [1]}'):
            async with s.post(f"{running.api(1)}/v1/ops", data=body) as resp:
                assert resp.status == 400, body
                assert (await resp.json())["error"] == "BadRequestError"
        async with s.get(f"{running.api(1)}/v1/changelog", params={"from": "abc"}) as resp:
            assert resp.status == 400
    async with running.client() as c:
        with pytest.raises(BadRequestError):
            await c.meta("lookup")


async def test_from_below_retention_is_a_distinct_error(tmp_path: pytest.TempPathFactory) -> None:
    cluster = SourceCluster(
        tmp_path / "vol",  # type: ignore[operator]
        nodes=1,
        retention_min_records=0,
        retention_min_s=0,
        segment_bytes=4096,
    )
    try:
        cluster.start_all()
        await cluster.wait_leader()
        async with cluster.client() as c:
            for i in range(200):
                await c.op("mkdir", path=f"/r{i}", mode=0o755)
            deadline = time.monotonic() + 30
            while (await c.status(cluster.api(1)))["first_available"] <= 1:
                assert time.monotonic() < deadline, "retention never trimmed"
                await asyncio.sleep(0.2)
            with pytest.raises(VersionGoneError) as info:
                async for _ in c.stream(1, follow=False):
                    pass
            assert info.value.first_available > 1
    finally:
        cluster.kill_all()
