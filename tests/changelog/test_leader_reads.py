"""A leader read (`leader=1`) is the leader's: a deposed leader never answers from stale state.

Each node runs on its own host (a network namespace); the leader is partitioned from the other
two, which elect a new leader and commit a write while the old one, still reachable by the
client, believes it leads (pysyncobj steps down only after leaderFallbackTimeout). Every
leader read it gets must be a refusal (redirect or unavailable) or include the new write.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from tests.changelog.cluster import SourceCluster
from tests.servers.netns import HostNetwork

READS = 20


def send_read(api: str, token: str, path: str) -> socket.socket:
    """Connect and send one leader read; the kernel queues it even while the node is stopped."""
    url = urlsplit(api)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=30)
    request = (
        f"GET /v1/meta/readdir?path={path}&leader=1 HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    with sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"chunked" in head.lower():  # aiohttp may chunk: take the JSON between size lines
        body = b"".join(body.split(b"\r\n")[1::2])
    return status, orjson.loads(body)


async def test_a_partitioned_old_leader_does_not_serve_leader_reads(tmp_path: Path) -> None:
    with HostNetwork(3) as network:
        async with SourceCluster.running(tmp_path, network=network) as cluster:
            old = await cluster.wait_leader()
            async with cluster.client() as c:
                before = await c.op("mkdir", path="/before", mode=0o755)
            await cluster.wait_applied(int(before["version"]), cluster.node_ids)
            others = [i for i in cluster.node_ids if i != old]
            with network.partitioned(old):
                new = await cluster.wait_leader(among=others, timeout_s=20)
                async with cluster.client(*others) as c:
                    await c.op("mkdir", path="/after", mode=0o755)
                status, body = await asyncio.to_thread(leader_read, cluster, new)
                assert status == 200 and has_after(body), "the real leader answers, fresh"
                # The old leader believes it leads until leaderFallbackTimeout (3 s) passes
                # without a quorum: ask it now, from the client's side of the partition.
                answers = await asyncio.gather(
                    *(asyncio.to_thread(leader_read, cluster, old) for _ in range(READS))
                )
    stale = [body["version"] for status, body in answers if status == 200 and not has_after(body)]
    for status, body in answers:
        if status != 200:
            assert body["error"] in ("NotLeaderError", "QuorumUnavailableError"), body
    assert not stale, f"{len(stale)} of {READS} leader reads answered from a stale state"


def leader_read(cluster: SourceCluster, node: int) -> tuple[int, dict[str, object]]:
    return read_answer(send_read(cluster.api(node), cluster.cfg.token, "/"))


def has_after(body: dict[str, object]) -> bool:
    rows = body["result"]
    assert isinstance(rows, list)
    return "after" in {row["name"] for row in rows}
