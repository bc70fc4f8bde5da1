"""The source node's HTTP API (aiohttp). Every /v1 route needs a bearer token whose scope it
allows (volume/tokens.py; `admin` may call all of them):

    POST /v1/ops                  {"request_id", "ops": [{"op", "args"}], "uid", "gid"}
                                  -> {"request_id", "results": [...], "version": last committed}
                                  all ops or none; a retry (same request_id) gets the first
                                  answer; RequestExpiredError (409) past the dedup window
                                                                                     client:rw
    GET  /v1/meta/{verb}          lookup|getattr|readdir|chunk|file, min_version= and leader=1;
                                  file = the inode and its chunk maps at one version
                                                                         client:rw, client:ro
    GET  /v1/changelog?from=V     framed records, streamed; follow=0 stops at the head  mirror:*
    GET  /v1/snapshot             a consistent snapshot (framed), version in X-Mirrorfs-Version
                                                                                      mirror:*
    POST /v1/mirrors/{name}       register                                          admin only
    POST .../{name}/ack {"version"}; DELETE .../{name}                    mirror:{name} itself
    GET  /v1/status               role, term, versions, head ts, peers, mirrors       mirror:*
    GET  /metrics                 Prometheus (no token: scrapers rarely carry one)

A token outside its scope is refused with 403 before the handler runs, so nothing changes.
uid/gid in a request are asserted by the token holder, as NFS AUTH_SYS does.

Errors are JSON `{"error": <class>, "message", ...}` with the class's HTTP status
(volume/errors.py, volume/web.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from changelog.metrics import NodeCollector
from changelog.namespace import Namespace
from changelog.node import SourceNode
from changelog.raft.state import Outcome, Refused, Replayed, results_from_records
from changelog.snapshot import take_snapshot
from volume.errors import (
    BadRequestError,
    ChangelogError,
    ChangelogUnavailableError,
    FsError,
    MirrorRemovedError,
    QuorumUnavailableError,
    RequestExpiredError,
    VersionGoneError,
    from_wire,
)
from volume.fileversion import chunk_range
from volume.records import (
    MAX_RECORDS_PER_REQUEST,
    MIRROR_ACK,
    MIRROR_REGISTER,
    MIRROR_REMOVE,
    FrameDecoder,
    Record,
)
from volume.request_ids import MalformedRequestIdError, new_request_id, parse_request_id
from volume.tokens import ANY_MIRROR, CLIENT_RO, CLIENT_RW, OWN_MIRROR, TokenVerifier
from volume.web import add_route, bearer_auth, json_errors, json_response, metrics_response

log = structlog.get_logger(__name__)

FRAMES_CONTENT_TYPE = "application/x-mirrorfs-frames"
DEFAULT_READ_WAIT_S = 10.0
MAX_OPS_PER_BATCH = MAX_RECORDS_PER_REQUEST
# One file read resolves its inode and every chunk map under one lock (one version); this many
# chunks is 4 TiB, a response of a few MB.
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
    """Commit one request: all its ops or none (volume/records.py). The request_id makes a
    retry safe (the first answer comes back, nothing is applied again); without one the node
    mints one, so that request cannot be retried safely. A malformed id is 400."""
    node = request.app[NODE_KEY]
    body = await read_json(request)
    ops = body.get("ops")
    if not isinstance(ops, list) or not ops or len(ops) > MAX_OPS_PER_BATCH:
        raise BadRequestError(f"'ops' must be a list of 1..{MAX_OPS_PER_BATCH} ops")
    uid, gid = body.get("uid", 0), body.get("gid", 0)
    if not isinstance(uid, int) or not isinstance(gid, int):
        raise BadRequestError("'uid' and 'gid' must be integers")
    request_id = checked_request_id(body.get("request_id"))
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
    results = await commit(node, request_id, prepared)
    versions = [r["version"] for r in results if r.get("ok")]
    return json_response(
        {"request_id": request_id, "results": results, "version": max(versions, default=0)}
    )


def checked_request_id(given: object) -> str:
    """The client's request id (minted here when it sent none); 400 for a malformed one."""
    if given is None or given == "":
        return new_request_id()
    try:
        parse_request_id(given)  # also refuses a number or a list, with the format it wants
    except MalformedRequestIdError as exc:
        raise BadRequestError(str(exc)) from None
    assert isinstance(given, str)
    return given


async def commit(
    node: SourceNode, request_id: str, ops: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Submit a request and return its per-op results, the first answer for a retry.

    Raises what the Raft bridge raises (NotLeaderError, QuorumUnavailableError: retry with
    the same request_id), and the Refused error (RequestExpiredError, BadRequestError)."""
    return await answer(node, request_id, await node.raft.submit(request_id, ops))


async def answer(node: SourceNode, request_id: str, outcome: Outcome) -> list[dict[str, Any]]:
    if isinstance(outcome, Refused):
        raise outcome.error
    if not isinstance(outcome, Replayed):
        return outcome
    # A retry of a committed request: its records are the answer (in the in-state tail, or
    # in the segment log once the tail has moved on).
    first, end = outcome.first_version, outcome.first_version + outcome.count
    records: list[Record] = []
    try:
        while first + len(records) < end:
            frames = await frames_at(node, first + len(records))
            if not frames:
                raise QuorumUnavailableError(
                    f"records {first}..{end - 1} are applied but not readable yet: retry"
                )
            decoder = FrameDecoder()
            records.extend(r for r in decoder.feed(b"".join(frames)) if r.version < end)
            decoder.finish()
    except VersionGoneError:
        raise RequestExpiredError(
            f"request {request_id} was applied once, as versions {first}..{end - 1}, whose "
            "records are below retention now: its answer cannot be rebuilt, and it is not "
            "applied again",
            request_id=request_id,
        ) from None
    return results_from_records(records)


async def get_meta(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    verb = request.match_info["verb"]
    min_version = int_param(request, "min_version", 0)
    if request.query.get("leader") in ("1", "true"):
        node.raft.require_leader()  # a follower refuses at once; the barrier proves the rest
        await node.raft.read_barrier(timeout_s=DEFAULT_READ_WAIT_S)
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
            result = _chunk_map(ns, int_param(request, "ino"), int_param(request, "index"))
        elif verb == "file":
            inode = ns.lookup(_path(request), uid=uid, gid=gid)
            offset = int_param(request, "offset", 0)
            length = int_param(request, "length", -1)
            result = {
                "attr": inode.to_dict(),
                "chunks": {
                    index: _chunk_map(ns, inode.ino, index)
                    for index in chunk_range(inode, offset, None if length < 0 else length)
                },
            }
        else:
            raise BadRequestError(f"unknown metadata verb {verb!r}")
    return json_response({"version": version, "result": result})


def _chunk_map(ns: Namespace, ino: int, index: int) -> dict[str, Any]:
    slices = ns.chunk_slices(ino, index)
    checksums = {s.id: list(ns.slice_info(s.id).checksums) for s in slices}
    return {"slices": [s.to_dict() for s in slices], "checksums": checksums}


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
    while not node.stopping.is_set():  # a stopping node ends the stream; the reader resumes
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
    """Frames from `version` on; [] only when the node has not applied `version` yet.

    Raises VersionGoneError below retention, and ChangelogUnavailableError when the node has
    applied `version` but neither its in-memory tail nor its segments hold it (a segment
    writer that fell behind or failed): the reader goes to another node instead of this loop
    waiting for a record that is already applied (it used to spin here forever)."""
    frames = node.frames_recent(version)
    if frames is None:  # older than the in-memory tail: segment files, off the event loop
        frames = await asyncio.to_thread(node.frames_from, version)
        if not frames and version <= node.version:
            why = node.segment_error or "its changelog segments are behind"
            raise ChangelogUnavailableError(
                f"node {node.node_id} applied record {version} but cannot serve it ({why})",
                hint="another node serves the stream",
            )
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
    # The client's request id (a query parameter) makes a retry after a lost answer get the
    # first answer: a retried register used to find its own registration and fail "existed".
    [result] = await commit(node, checked_request_id(request.query.get("request_id")), [op])
    if not result["ok"]:
        err = result["error"]
        if err.get("error") == "MirrorRemovedError":
            raise from_wire(err, MirrorRemovedError.http_status)  # 404 "unknown mirror"
        raise FsError(int(err.get("errno", 22)), str(err.get("detail", err.get("message"))))
    return json_response({"version": result["version"], **result["effect"]})


async def get_status(request: web.Request) -> web.Response:
    return json_response(request.app[NODE_KEY].status())


async def get_metrics(request: web.Request) -> web.Response:
    return metrics_response(request.app[REGISTRY_KEY])


REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


def build_app(node: SourceNode) -> web.Application:
    verifier = TokenVerifier.from_secret(node.cfg.secret, admin_token=node.cfg.token)
    app = web.Application(
        middlewares=[bearer_auth(verifier, service="api"), json_errors(service="api")],
        client_max_size=64 * 1024 * 1024,
    )
    app[NODE_KEY] = node
    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    app[REGISTRY_KEY] = registry
    # Who may call what (admin may call everything): see the module docstring.
    add_route(app, "POST", "/v1/ops", post_ops, allow=[CLIENT_RW])
    add_route(app, "GET", "/v1/meta/{verb}", get_meta, allow=[CLIENT_RW, CLIENT_RO])
    add_route(app, "GET", "/v1/changelog", get_changelog, allow=[ANY_MIRROR])
    add_route(app, "GET", "/v1/snapshot", get_snapshot, allow=[ANY_MIRROR])
    add_route(app, "POST", "/v1/mirrors/{name}", mirror_op)  # register: admin only
    add_route(app, "POST", "/v1/mirrors/{name}/{action:ack}", mirror_op, allow=[OWN_MIRROR])
    add_route(app, "DELETE", "/v1/mirrors/{name}", mirror_op, allow=[OWN_MIRROR])
    add_route(app, "GET", "/v1/status", get_status, allow=[ANY_MIRROR])
    app.router.add_get("/metrics", get_metrics)
    return app
