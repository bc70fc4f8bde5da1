"""The source region's HTTP client: ops, metadata reads, the changelog stream, snapshots.

Nodes are interchangeable for most calls, so the client rotates across them: a connection
failure, a 503 or a "not leader" moves on to the next node, with jittered backoff between full
rounds, until `retry_s` has passed. Writes carry a request_id, so a retry after a lost answer
returns the first answer instead of applying twice. The stream resumes after the last record
it yielded, from whichever node answers: never a gap, never a duplicate.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog

from volume.errors import (
    ChangelogError,
    FrameError,
    NotLeaderError,
    QuorumUnavailableError,
    from_wire,
)
from volume.records import FrameDecoder, Record
from volume.request_ids import new_request_id

log = structlog.get_logger(__name__)
T = TypeVar("T")

DEFAULT_RETRY_S = 30.0
DEFAULT_TIMEOUT_S = 15.0
STREAM_IDLE_TIMEOUT_S = 5.0  # ticks arrive every 200 ms: silence this long means a dead link


@dataclass(frozen=True)
class OpsResult:
    request_id: str
    results: list[dict[str, Any]]
    version: int

    def raise_first_error(self) -> None:
        """Raise the error of the op that failed (a request is all or nothing: the other ops
        carry "not_applied" and an ECANCELED error naming it)."""
        failed = [r for r in self.results if not r.get("ok")]
        if failed:
            culprit = next((r for r in failed if not r.get("not_applied")), failed[0])
            raise from_wire(culprit["error"], 409)


class SourceUnreachableError(QuorumUnavailableError):
    """No source node answered within the retry budget."""


class SourceClient:
    def __init__(
        self,
        api_urls: list[str],
        token: str,
        *,
        retry_s: float = DEFAULT_RETRY_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not api_urls:
            raise ValueError("SourceClient needs at least one node URL")
        self.urls = [u.rstrip("/") for u in api_urls]
        self.token = token
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self._preferred = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.token}"},
                json_serialize=lambda o: orjson.dumps(o).decode(),
                connector=aiohttp.TCPConnector(limit=64),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> SourceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- rotation ---

    def _order(self, prefer: str | None = None) -> list[str]:
        urls = self.urls[self._preferred :] + self.urls[: self._preferred]
        if prefer and prefer.rstrip("/") in urls:
            urls.remove(prefer.rstrip("/"))
            urls.insert(0, prefer.rstrip("/"))
        return urls

    async def _rotate(self, call: Callable[[str], Awaitable[T]], what: str) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_s
        hint: str | None = None
        last: BaseException | None = None
        delay = 0.05
        while True:
            for url in self._order(hint):
                try:
                    result = await call(url)
                    self._preferred = self.urls.index(url)
                    return result
                except NotLeaderError as exc:
                    hint, last = exc.leader_hint, exc
                except ChangelogError as exc:  # before OSError: an FsError is an OSError too
                    if not exc.temporary:
                        raise
                    last = exc
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    last = exc
            if loop.time() >= deadline:
                raise SourceUnreachableError(
                    f"{what}: no source node answered within {self.retry_s:.0f}s "
                    f"(tried {', '.join(self.urls)}); last error: {last}"
                )
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.5), deadline - loop.time()))
            delay = min(delay * 2, 2.0)

    async def _json(self, method: str, url: str, **kw: Any) -> Any:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with self.session.request(method, url, timeout=timeout, **kw) as resp:
            body = await resp.read()
            try:
                data = orjson.loads(body) if body else {}
            except orjson.JSONDecodeError:
                data = {"message": body[:200].decode(errors="replace")}
            if resp.status >= 400:
                raise from_wire(data if isinstance(data, dict) else {}, resp.status)
            return data

    # --- API ---

    async def ops(
        self,
        ops: list[dict[str, Any]],
        *,
        uid: int = 0,
        gid: int = 0,
        request_id: str | None = None,
    ) -> OpsResult:
        """Commit one request, all its ops or none; per-op results (a failed op's FsError is in
        its result, not raised; see OpsResult.raise_first_error).

        One request id (volume/request_ids.py: it carries its creation time) is minted per call
        and sent on every retry, so a retry after a lost answer gets the first answer back.
        Raises RequestExpiredError if the source's dedup window passed before an answer came
        (then the request may or may not have committed: look before sending it anew)."""
        rid = request_id or new_request_id()
        body = {"request_id": rid, "ops": ops, "uid": uid, "gid": gid}

        async def call(url: str) -> Any:
            return await self._json("POST", f"{url}/v1/ops", json=body)

        data = await self._rotate(call, "ops")
        return OpsResult(rid, data["results"], int(data["version"]))

    async def op(self, op: str, *, uid: int = 0, gid: int = 0, **args: Any) -> dict[str, Any]:
        """One op; returns {"version", "effect"} or raises its FsError."""
        res = await self.ops([{"op": op, "args": args}], uid=uid, gid=gid)
        res.raise_first_error()
        return dict(res.results[0])

    async def meta(
        self,
        verb: str,
        *,
        min_version: int = 0,
        leader: bool = False,
        **params: Any,
    ) -> tuple[int, Any]:
        """A metadata read (lookup, getattr, readdir, chunk): (node's version, result)."""
        query = {k: str(v) for k, v in params.items()}
        if min_version:
            query["min_version"] = str(min_version)
        if leader:
            query["leader"] = "1"

        async def call(url: str) -> Any:
            return await self._json("GET", f"{url}/v1/meta/{verb}", params=query)

        data = await self._rotate(call, f"meta {verb}")
        return int(data["version"]), data["result"]

    async def status(self, url: str) -> dict[str, Any]:
        """One node's status (no rotation: the caller asks each node)."""
        data: dict[str, Any] = await self._json("GET", f"{url.rstrip('/')}/v1/status")
        return data

    async def mirror(self, name: str, action: str, **body: Any) -> dict[str, Any]:
        """register | ack | remove a mirror region (Raft-committed). One request id for every
        retry of this call, so a retry after a lost answer gets the first answer."""
        query = {"request_id": new_request_id()}

        async def call(url: str) -> Any:
            if action == "register":
                return await self._json("POST", f"{url}/v1/mirrors/{name}", params=query)
            if action == "ack":
                return await self._json(
                    "POST", f"{url}/v1/mirrors/{name}/ack", json=body, params=query
                )
            if action == "remove":
                return await self._json("DELETE", f"{url}/v1/mirrors/{name}", params=query)
            raise ValueError(f"unknown mirror action {action!r}")

        result: dict[str, Any] = await self._rotate(call, f"mirror {action}")
        return result

    async def stream(
        self, from_version: int, *, follow: bool = True, node: str | None = None
    ) -> AsyncIterator[Record]:
        """Records from `from_version` on, in order, each exactly once, across node failures.

        Raises VersionGoneError if the source no longer has `from_version` (resync), and
        FrameError never: a bad frame drops the connection and the stream resumes elsewhere.
        """
        next_version = from_version
        while True:
            got_any = False
            try:
                async for rec in self._stream_once(next_version, follow, node):
                    if rec.version != next_version:
                        raise FrameError(f"expected version {next_version}, got {rec.version}")
                    next_version += 1
                    got_any = True
                    yield rec
                if not follow:
                    return
            except FrameError as exc:
                log.warning("changelog.stream_bad_frame", error=str(exc), at=next_version)
                self._preferred = (self._preferred + 1) % len(self.urls)
            except (aiohttp.ClientError, TimeoutError, OSError, SourceUnreachableError) as exc:
                log.info("changelog.stream_reconnect", error=str(exc), at=next_version)
                self._preferred = (self._preferred + 1) % len(self.urls)
                if not got_any:
                    await asyncio.sleep(0.05)

    async def _stream_once(
        self, from_version: int, follow: bool, node: str | None
    ) -> AsyncIterator[Record]:
        async def connect(url: str) -> aiohttp.ClientResponse:
            resp = await self.session.get(
                f"{url}/v1/changelog",
                params={"from": str(from_version), "follow": "1" if follow else "0"},
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout_s, sock_read=STREAM_IDLE_TIMEOUT_S
                ),
            )
            if resp.status >= 400:
                body = await resp.read()
                resp.release()
                raise from_wire(orjson.loads(body) if body else {}, resp.status)
            return resp

        if node:
            resp = await connect(node.rstrip("/"))
        else:
            await self._prefer_leader()
            resp = await self._rotate(connect, "changelog stream")
        decoder = FrameDecoder()
        async with resp:
            async for chunk in resp.content.iter_any():
                for rec in decoder.feed(chunk):
                    yield rec
        decoder.finish()

    async def _prefer_leader(self) -> None:
        """Stream from the leader when one is known: a follower applies an entry only when the
        next message from the leader tells it the entry committed, which adds up to a heartbeat
        of lag; any node still serves if the leader cannot."""
        for url in self._order():
            try:
                leader = (await self.status(url)).get("leader")
            except (ChangelogError, aiohttp.ClientError, TimeoutError, OSError):
                continue
            if leader and leader.rstrip("/") in self.urls:
                self._preferred = self.urls.index(leader.rstrip("/"))
            return

    async def snapshot(self) -> AsyncIterator[bytes]:
        """The raw snapshot stream (decode with volume.snapshot.aread_snapshot_records)."""

        async def connect(url: str) -> aiohttp.ClientResponse:
            resp = await self.session.get(
                f"{url}/v1/snapshot", timeout=aiohttp.ClientTimeout(total=None, sock_read=300)
            )
            if resp.status >= 400:
                body = await resp.read()
                resp.release()
                raise from_wire(orjson.loads(body) if body else {}, resp.status)
            return resp

        resp = await self._rotate(connect, "snapshot")
        async with resp:
            async for chunk in resp.content.iter_chunked(1024 * 1024):
                yield chunk
