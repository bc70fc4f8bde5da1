"""The source node's HTTP API (aiohttp). Every /v1 route needs the volume's bearer token.

    POST /v1/ops                  {"request_id", "ops": [{"op", "args"}], "uid", "gid"}
                                  -> {"results": [...], "version": last committed}
    GET  /v1/meta/{verb}          lookup|getattr|readdir|chunk, with min_version= and leader=1
    GET  /v1/changelog?from=V     framed records, streamed; follow=0 stops at the head
    GET  /v1/snapshot             a consistent snapshot (framed), version in X-Mirrorfs-Version
    POST /v1/mirrors/{name}       register; POST .../ack {"version"}; DELETE .../{name}
    GET  /v1/status               role, term, versions, head ts, peers, mirrors
    GET  /metrics                 Prometheus (no token: scrapers rarely carry one)

Errors are JSON `{"error": <class>, "message", ...}` with the class's HTTP status
(volume/errors.py, volume/web.py).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from changelog.metrics import NodeCollector
from changelog.node import SourceNode
from changelog.snapshot import take_snapshot
from volume.errors import (
    BadRequestError,
    ChangelogError,
    FsError,
    QuorumUnavailableError,
)
from volume.records import MIRROR_ACK, MIRROR_REGISTER, MIRROR_REMOVE
from volume.web import bearer_auth, json_errors, json_response

log = structlog.get_logger(__name__)

FRAMES_CONTENT_TYPE = "application/x-mirrorfs-frames"
DEFAULT_READ_WAIT_S = 10.0
MAX_OPS_PER_BATCH = 10_000
NODE_KEY = web.AppKey("node", SourceNode)


def int_param(request: web.Request, name: str, default: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise BadRequestError(f"missing query parameter {name!r}")
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequestError(f"query parameter {name!r} must be an integer, got {raw!r}") from None


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


async def post_ops(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    body = await read_json(request)
    ops = body.get("ops")
    if not isinstance(ops, list) or not ops or len(ops) > MAX_OPS_PER_BATCH:
        raise BadRequestError(f"'ops' must be a list of 1..{MAX_OPS_PER_BATCH} ops")
    uid, gid = body.get("uid", 0), body.get("gid", 0)
    if not isinstance(uid, int) or not isinstance(gid, int):
        raise BadRequestError("'uid' and 'gid' must be integers")
    request_id = body.get("request_id") or uuid.uuid4().hex
    if not isinstance(request_id, str) or len(request_id) > 128:
        raise BadRequestError("'request_id' must be a string of at most 128 characters")
    prepared = []
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise BadRequestError("each op must be an object with a string 'op'")
        args = op.get("args", {})
        if not isinstance(args, dict):
            raise BadRequestError(f"op {op['op']!r}: 'args' must be an object")
        if op["op"] in (MIRROR_REGISTER, MIRROR_ACK, MIRROR_REMOVE, "tick", "expire_slices"):
            raise BadRequestError(f"op {op['op']!r} is not allowed here")
        prepared.append({"op": op["op"], "args": {**args, "uid": uid, "gid": gid}})
    results = await node.raft.submit(request_id, prepared)
    versions = [r["version"] for r in results if r.get("ok")]
    return json_response(
        {"request_id": request_id, "results": results, "version": max(versions, default=0)}
    )


async def get_meta(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    verb = request.match_info["verb"]
    min_version = int_param(request, "min_version", 0)
    if request.query.get("leader") in ("1", "true"):
        node.raft.require_leader()
    if min_version and not await node.wait_version(min_version, DEFAULT_READ_WAIT_S):
        raise QuorumUnavailableError(
            f"node did not reach version {min_version} within {DEFAULT_READ_WAIT_S:.0f}s"
        )
    uid, gid = int_param(request, "uid", 0), int_param(request, "gid", 0)
    ns, lock = node.state.ns, node.state.lock
    with lock:
        version = node.state.version
        if verb == "lookup":
            result: Any = ns.lookup(_path(request), uid=uid, gid=gid).to_dict()
        elif verb == "getattr":
            result = ns.getattr(int_param(request, "ino")).to_dict()
        elif verb == "readdir":
            entries = ns.readdir(
                _path(request),
                uid=uid,
                gid=gid,
                after=request.query.get("after", ""),
                limit=min(int_param(request, "limit", 1000), 10_000),
            )
            result = [{"name": name, "attr": attr.to_dict()} for name, attr in entries]
        elif verb == "chunk":
            ino, index = int_param(request, "ino"), int_param(request, "index")
            slices = ns.chunk_slices(ino, index)
            checksums = {s.id: list(ns.slice_info(s.id).checksums) for s in slices}
            result = {"slices": [s.to_dict() for s in slices], "checksums": checksums}
        else:
            raise BadRequestError(f"unknown metadata verb {verb!r}")
    return json_response({"version": version, "result": result})


def _path(request: web.Request) -> str:
    path = request.query.get("path")
    if not path:
        raise BadRequestError("missing query parameter 'path'")
    return path


async def get_changelog(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    start = int_param(request, "from")
    if start < 1:
        raise BadRequestError("'from' must be >= 1")
    follow = request.query.get("follow", "1") not in ("0", "false")
    next_version = start
    frames = await frames_at(node, next_version)  # VersionGone -> 410 here
    resp = web.StreamResponse(headers={"Content-Type": FRAMES_CONTENT_TYPE})
    resp.headers["X-Mirrorfs-Head"] = str(node.version)
    await resp.prepare(request)
    while True:
        if frames:
            await resp.write(b"".join(frames))
            next_version += len(frames)
        elif not follow:
            break
        else:
            await node.wait_version(next_version, 1.0)
        try:
            frames = await frames_at(node, next_version)
        except ChangelogError as exc:  # retention passed us mid-stream: end; the reader resumes
            log.warning("api.changelog_stream_ended", error=str(exc), at=next_version)
            break
    await resp.write_eof()
    return resp


async def frames_at(node: SourceNode, version: int) -> list[bytes]:
    frames = node.frames_recent(version)
    if frames is None:  # older than the in-memory tail: segment files, off the event loop
        frames = await asyncio.to_thread(node.frames_from, version)
    return frames


async def get_snapshot(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    version, path = await take_snapshot(node.state, node.data_dir / "snapshots")
    resp = web.StreamResponse(headers={"Content-Type": FRAMES_CONTENT_TYPE})
    resp.headers["X-Mirrorfs-Version"] = str(version)
    await resp.prepare(request)
    with open(path, "rb") as f:  # noqa: ASYNC230 - sequential reads of a local page-cached file
        while chunk := await asyncio.to_thread(f.read, 1024 * 1024):
            await resp.write(chunk)
    await resp.write_eof()
    return resp


async def mirror_op(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name = request.match_info["name"]
    if request.method == "DELETE":
        op: dict[str, Any] = {"op": MIRROR_REMOVE, "args": {"name": name}}
    elif request.match_info.get("action") == "ack":
        body = await read_json(request)
        op = {"op": MIRROR_ACK, "args": {"name": name, "version": body.get("version")}}
    else:
        op = {"op": MIRROR_REGISTER, "args": {"name": name}}
    [result] = await node.raft.submit(uuid.uuid4().hex, [op])
    if not result["ok"]:
        err = result["error"]
        raise FsError(int(err.get("errno", 22)), str(err.get("detail", err.get("message"))))
    return json_response({"version": result["version"], **result["effect"]})


async def get_status(request: web.Request) -> web.Response:
    return json_response(request.app[NODE_KEY].status())


async def get_metrics(request: web.Request) -> web.Response:
    registry: CollectorRegistry = request.app[REGISTRY_KEY]
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


def build_app(node: SourceNode) -> web.Application:
    app = web.Application(
        middlewares=[bearer_auth(node.cfg.token, service="api"), json_errors(service="api")],
        client_max_size=64 * 1024 * 1024,
    )
    app[NODE_KEY] = node
    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    app[REGISTRY_KEY] = registry
    app.router.add_post("/v1/ops", post_ops)
    app.router.add_get("/v1/meta/{verb}", get_meta)
    app.router.add_get("/v1/changelog", get_changelog)
    app.router.add_get("/v1/snapshot", get_snapshot)
    app.router.add_post("/v1/mirrors/{name}", mirror_op)
    app.router.add_post("/v1/mirrors/{name}/{action:ack}", mirror_op)
    app.router.add_delete("/v1/mirrors/{name}", mirror_op)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/metrics", get_metrics)
    return app
