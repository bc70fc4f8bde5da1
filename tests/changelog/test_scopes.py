"""Token scopes on a real 3-node source: who may call which route, 401 vs 403, nothing changed.

Every node verifies a minted token on its own (no shared store), so the matrix is checked on a
follower as well as on the leader.
"""

from __future__ import annotations

import errno
from typing import Any

import aiohttp
import pytest

from tests.changelog.cluster import SourceCluster
from volume.client import SourceClient
from volume.errors import AuthError, ForbiddenError, FsError
from volume.records import MIRROR_OPS
from volume.tokens import mint_token, token_key

Answer = tuple[int, dict[str, Any]]


async def call(
    cluster: SourceCluster,
    token: str | None,
    method: str,
    path: str,
    *,
    node: int = 1,
    json: Any = None,
    params: dict[str, str] | None = None,
) -> Answer:
    """(status, JSON body or {}) of one request to one node."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.request(method, f"{cluster.api(node)}{path}", json=json, params=params) as resp,
    ):
        body = await resp.read()
        is_json = resp.content_type == "application/json"
        return resp.status, (await resp.json() if is_json and body else {})


def mint(cluster: SourceCluster, scope: str) -> str:
    return mint_token(token_key(cluster.cfg.secret), scope)


def mkdir(path: str) -> dict[str, Any]:
    return {"ops": [{"op": "mkdir", "args": {"path": path, "mode": 0o755}}]}


async def mirror_state(cluster: SourceCluster) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """(the source's mirror table, every mirror record as (op, name)), read with admin."""
    async with cluster.client() as c:
        table = (await c.status(cluster.api(1)))["mirrors"]
        ops = [
            (r.op, r.effect.get("name", ""))
            async for r in c.stream(1, follow=False)
            if r.op in MIRROR_OPS
        ]
    return table, ops


def node_logs(cluster: SourceCluster) -> str:
    return "".join((cluster.directory / f"node{i}.log").read_text() for i in cluster.node_ids)


async def test_a_mirror_token_serves_its_own_mirror_only(running: SourceCluster) -> None:
    async with running.client() as c:
        await c.mirror("eu", "register")
        await c.mirror("ap", "register")
        head = (await c.op("mkdir", path="/d", mode=0o755))["version"]
    eu = mint(running, "mirror:eu")
    before = await mirror_state(running)
    for node in running.node_ids:  # leader and followers alike
        forbidden = [
            ("POST", "/v1/mirrors/ap/ack", {"version": head}),
            ("DELETE", "/v1/mirrors/ap", None),
            ("POST", "/v1/mirrors/zz", None),  # registering is the operator's (admin) job
            ("POST", "/v1/mirrors/eu", None),
            ("POST", "/v1/ops", mkdir(f"/by-eu-{node}")),
            ("GET", "/v1/meta/getattr?ino=1", None),
        ]
        for method, path, body in forbidden:
            status, answer = await call(running, eu, method, path, node=node, json=body)
            assert status == 403, (node, method, path, status, answer)
            assert answer["error"] == "ForbiddenError" and "mirror:eu" in answer["message"]
    assert await mirror_state(running) == before, "a refused request changed something"

    status, _ = await call(running, eu, "GET", "/v1/changelog", params={"from": "1", "follow": "0"})
    assert status == 200
    assert (await call(running, eu, "GET", "/v1/snapshot"))[0] == 200
    assert (await call(running, eu, "GET", "/v1/status", node=2))[0] == 200
    status, answer = await call(running, eu, "POST", "/v1/mirrors/eu/ack", json={"version": head})
    assert status == 200, answer
    table, _ = await mirror_state(running)
    assert table["eu"] != before[0]["eu"] and table["ap"] == before[0]["ap"]

    # Through the client library the refusal is the typed error, not a retry.
    async with SourceClient(running.cfg.api_urls, eu, retry_s=2) as ceu:
        with pytest.raises(ForbiddenError):
            await ceu.mirror("ap", "remove")
        await ceu.mirror("eu", "remove")  # a mirror may remove itself
    table, _ = await mirror_state(running)
    assert list(table) == ["ap"]

    logs = node_logs(running)
    assert "api.forbidden" in logs and '"scope": "mirror:eu"' in logs
    assert eu not in logs and eu.rsplit(".", 1)[1] not in logs, "a token was logged"


async def test_client_tokens_read_and_only_rw_writes(running: SourceCluster) -> None:
    async with running.client() as c:
        await c.mirror("eu", "register")
    ro, rw = mint(running, "client:ro"), mint(running, "client:rw")
    before = await mirror_state(running)
    for token in (ro, rw):
        for verb in ("lookup?path=/", "readdir?path=/", "getattr?ino=1"):
            status, answer = await call(running, token, "GET", f"/v1/meta/{verb}", node=3)
            assert status == 200, (verb, answer)
        for method, path, body in [
            ("GET", "/v1/changelog?from=1&follow=0", None),
            ("GET", "/v1/snapshot", None),
            ("GET", "/v1/status", None),
            ("POST", "/v1/mirrors/eu/ack", {"version": 1}),
            ("DELETE", "/v1/mirrors/eu", None),
            ("POST", "/v1/mirrors/x", None),
        ]:
            status, answer = await call(running, token, method, path, json=body)
            assert status == 403, (method, path, status, answer)

    status, answer = await call(running, ro, "POST", "/v1/ops", json=mkdir("/by-ro"))
    assert status == 403 and answer["error"] == "ForbiddenError"
    async with SourceClient(running.cfg.api_urls, ro, retry_s=2) as cro:
        with pytest.raises(ForbiddenError):
            await cro.op("create", path="/by-ro", mode=0o644)
        _, entries = await cro.meta("readdir", path="/")
        assert entries == []
    async with running.client() as c, SourceClient(running.cfg.api_urls, rw) as crw:
        await crw.op("mkdir", path="/by-rw", mode=0o755)
        _, entries = await c.meta("readdir", path="/")
        assert [e["name"] for e in entries] == ["by-rw"]
        with pytest.raises(FsError) as info:
            await c.meta("lookup", path="/by-ro")
        assert info.value.errno == errno.ENOENT
    assert await mirror_state(running) == before


async def test_forged_or_tampered_tokens_are_401(running: SourceCluster) -> None:
    ro = mint(running, "client:ro")
    _, scope, rand, mac = ro.split(".")
    stranger = mint_token(token_key("another volume's secret, 32 chars"), "admin")
    bad = {
        "missing": None,
        "empty": "",
        "garbage": "not-a-token-at-all",
        "scope raised to admin": f"mfs1.admin.{rand}.{mac}",
        "random changed": f"mfs1.{scope}.{rand[:-1]}{'1' if rand[-1] == '0' else '0'}.{mac}",
        "mac cut": ro[:-2],
        "signed by another secret": stranger,
        "wrong version": "mfs2" + ro[4:],
    }
    for what, token in bad.items():
        for path in ("/v1/ops", "/v1/mirrors/eu/ack"):
            status, answer = await call(running, token, "POST", path, json=mkdir("/forged"))
            assert status == 401, (what, path, status, answer)
            assert answer["error"] == "AuthError"
    async with SourceClient(running.cfg.api_urls, f"mfs1.admin.{rand}.{mac}", retry_s=2) as c:
        with pytest.raises(AuthError):
            await c.meta("lookup", path="/")
    # A minted admin token and the config's own token are both admin.
    admin = mint(running, "admin")
    for token in (admin, running.cfg.token):
        status, answer = await call(running, token, "POST", "/v1/mirrors/eu")
        assert status == 200, answer
    status, _ = await call(running, admin, "POST", "/v1/ops", json=mkdir("/by-admin"))
    assert status == 200
    async with running.client() as c:
        _, entries = await c.meta("readdir", path="/")
    assert [e["name"] for e in entries] == ["by-admin"]
    logs = node_logs(running)
    assert "api.unauthorized" in logs and "unknown or forged token" in logs
    assert rand not in logs, "a token was logged"


async def test_unknown_route_is_404_not_403(running: SourceCluster) -> None:
    ro = mint(running, "client:ro")
    assert (await call(running, ro, "GET", "/v1/nothing-here"))[0] == 404
    assert (await call(running, None, "GET", "/v1/nothing-here"))[0] == 401
