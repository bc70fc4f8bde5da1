"""An HTTP reverse proxy that injects S3-style faults between a client and a real S3 server.

It runs its own event loop in its own thread, so sync tests (botocore) and async tests
(aiobotocore, on pytest's loop) drive it the same way: the fault controls are plain thread-safe
methods. Requests are forwarded byte for byte as far as a SigV4 signature can tell: method, raw
path and query, the client's `Host` header (the signature covers it) and body; responses are
streamed back undecoded. Per request, faults apply in this order: down, drop, fail_next, rule,
latency, then the request goes upstream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

DEFAULT_START_TIMEOUT_S = 10.0
DEFAULT_STOP_TIMEOUT_S = 10.0
STREAM_CHUNK_BYTES = 256 * 1024
SEEN_LOG_LENGTH = 10_000
# RFC 9110 hop-by-hop headers, plus Expect (the proxy answers 100-continue itself and SigV4 never
# signs it) and Transfer-Encoding (each hop frames the body its own way).
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Expect",
    )
)
_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
}

DownMode = Literal["reset", "503"]


@dataclass(frozen=True)
class ProxiedRequest:
    """What a rule predicate sees of a request (raw path and query, as the client sent them)."""

    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]


@dataclass(frozen=True)
class ProxyStats:
    """Counters since start (or the last `reset()`)."""

    requests_seen: int
    requests_forwarded: int
    errors_injected: int
    drops_injected: int
    upstream_failures: int

    @property
    def faults_injected(self) -> int:
        return self.errors_injected + self.drops_injected


@dataclass(frozen=True)
class _Rule:
    predicate: Callable[[ProxiedRequest], bool]
    status: int
    code: str


def s3_error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    """The XML error document S3 sends, which botocore parses into `Error.Code`."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{escape(request_id)}</RequestId>"
        "</Error>"
    ).encode()


class FaultProxy:
    """Reverse proxy on 127.0.0.1 in front of `upstream` (e.g. "http://127.0.0.1:8333")."""

    def __init__(self, upstream: str, *, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._session: aiohttp.ClientSession | None = None
        self._clear_state()

    def _clear_state(self) -> None:
        self._fail_left = 0
        self._fail_status = 503
        self._fail_code = "SlowDown"
        self._rule: _Rule | None = None
        self._drop_before_left = 0
        self._drop_after_left = 0
        self._latency_s = 0.0
        self._down: DownMode | None = None
        # ("corrupt"|"truncate", at_byte, path prefix) per response, oldest first
        self._mangle: list[tuple[str, int, str]] = []
        # (at_byte, path prefix) per request body, oldest first
        self._mangle_requests: list[tuple[int, str]] = []
        self._seen = 0
        self._forwarded = 0
        self._errors = 0
        self._drops = 0
        self._upstream_failures = 0
        self._seen_log: collections.deque[tuple[str, str]] = collections.deque(
            maxlen=SEEN_LOG_LENGTH
        )
        # (method, path) -> response body bytes sent to clients: what the upstream "served"
        self._body_bytes: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL clients use instead of the upstream's; raises if not started."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> FaultProxy:
        """Start listening; return once `url` accepts connections. Raises what the bind raised."""
        if self.is_running:
            return self
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._thread_main, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"FaultProxy did not start within {timeout_s} s")
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error
        return self

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop listening, cut open connections, and join the thread. Idempotent."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            # RuntimeError: the loop closed between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        thread.join(timeout_s)
        if thread.is_alive():
            raise RuntimeError(f"FaultProxy thread did not stop within {timeout_s} s")
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- fault controls (thread-safe) --------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next `n` requests with an S3 XML error instead of forwarding them."""
        with self._lock:
            self._fail_left = n
            self._fail_status = status
            self._fail_code = code

    def set_status_for(
        self,
        predicate: Callable[[ProxiedRequest], bool] | None,
        status: int = 503,
        code: str = "SlowDown",
    ) -> None:
        """Answer every request the predicate accepts with an S3 XML error; None removes the rule.

        The predicate runs on the proxy's thread and must be quick and must not raise.
        """
        with self._lock:
            self._rule = None if predicate is None else _Rule(predicate, status, code)

    def drop_next(self, n: int, *, after_upstream: bool = False) -> None:
        """Close the connection of the next `n` requests without an answer.

        With `after_upstream`, the request reaches the server first and only its response is
        lost (the client cannot tell whether e.g. a PUT happened).
        """
        with self._lock:
            if after_upstream:
                self._drop_after_left = n
            else:
                self._drop_before_left = n

    def corrupt_next(self, n: int, *, at_byte: int, path_prefix: str = "") -> None:
        """Flip one bit of byte `at_byte` in the bodies of the next n successful responses
        (to requests whose path starts with `path_prefix`)."""
        with self._lock:
            self._mangle.extend([("corrupt", at_byte, path_prefix)] * n)

    def corrupt_next_request(self, n: int, *, at_byte: int, path_prefix: str = "") -> None:
        """Flip one bit of byte `at_byte` in the bodies of the next n requests with a body that
        long (to paths starting with `path_prefix`): an upload damaged on the way."""
        with self._lock:
            self._mangle_requests.extend([(at_byte, path_prefix)] * n)

    def truncate_next(self, n: int, *, at_byte: int, path_prefix: str = "") -> None:
        """Cut the bodies of the next n successful responses after `at_byte` bytes, then drop
        the connection (a truncated stream, as a dying server or middlebox would leave)."""
        with self._lock:
            self._mangle.extend([("truncate", at_byte, path_prefix)] * n)

    def set_latency(self, latency_s: float) -> None:
        """Delay every request by `latency_s` before it goes upstream (one way)."""
        with self._lock:
            self._latency_s = latency_s

    def set_down(self, is_down: bool, *, mode: DownMode = "reset") -> None:
        """While down, reset every connection ("reset") or answer 503 ServiceUnavailable."""
        with self._lock:
            self._down = mode if is_down else None

    def reset(self) -> None:
        """Remove every fault and zero the counters."""
        with self._lock:
            self._clear_state()

    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(
                requests_seen=self._seen,
                requests_forwarded=self._forwarded,
                errors_injected=self._errors,
                drops_injected=self._drops,
                upstream_failures=self._upstream_failures,
            )

    def seen(self) -> list[tuple[str, str]]:
        """(method, raw path with query) of the requests seen, oldest first (last 10,000)."""
        with self._lock:
            return list(self._seen_log)

    def body_bytes(self) -> dict[tuple[str, str], int]:
        """Response body bytes sent per (method, path without query), since start or `reset()`:
        an egress meter independent of the client under test."""
        with self._lock:
            return dict(self._body_bytes)

    # -- the proxy itself --------------------------------------------------------------------

    def _thread_main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._session = None
        try:
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            # force_close: a pooled connection to a server that restarted fails on reuse, and
            # aiohttp does not retry; that would be a fault nobody asked for.
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
            )
            app = web.Application(client_max_size=0)
            self._session = session
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", self._requested_port, reuse_address=True)
            await site.start()
            self._port = int(runner.addresses[0][1])
        except BaseException as exc:
            if self._session is not None:
                await self._session.close()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await runner.cleanup()
            await session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        proxied = ProxiedRequest(
            request.method,
            request.rel_url.raw_path,
            request.rel_url.raw_query_string,
            request.headers,
        )
        with self._lock:
            self._seen += 1
            self._seen_log.append((request.method, request.raw_path))
            action, status, code = self._decide(proxied)
            latency_s = self._latency_s
        if action == "drop":
            return self._drop(request)
        if action == "error":
            return await self._error(request, status, code)
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        return await self._forward(request, drop_response=action == "drop_after")

    def _decide(self, req: ProxiedRequest) -> tuple[str, int, str]:
        """Pick this request's fault; called with the lock held, consumes one-shot faults."""
        if self._down == "reset":
            self._drops += 1
            return "drop", 0, ""
        if self._down == "503":
            self._errors += 1
            return "error", 503, "ServiceUnavailable"
        if self._drop_before_left > 0:
            self._drop_before_left -= 1
            self._drops += 1
            return "drop", 0, ""
        if self._fail_left > 0:
            self._fail_left -= 1
            self._errors += 1
            return "error", self._fail_status, self._fail_code
        if self._rule is not None and self._rule.predicate(req):
            self._errors += 1
            return "error", self._rule.status, self._rule.code
        if self._drop_after_left > 0:
            self._drop_after_left -= 1
            self._drops += 1
            return "drop_after", 0, ""
        return "forward", 0, ""

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        # Nothing reaches the client: its transport is gone. aiohttp discards the response.
        return web.Response(status=500)

    async def _error(self, request: web.Request, status: int, code: str) -> web.Response:
        # Drain the body first: answering mid-upload makes aiohttp close the connection, and
        # the client would see a reset instead of the error.
        while await request.content.readany():
            pass
        with self._lock:
            request_id = f"faultproxy-{self._seen}"
        body = s3_error_body(
            code, _MESSAGES.get(code, "Injected by FaultProxy."), request.path, request_id
        )
        return web.Response(
            status=status,
            body=body,
            content_type="application/xml",
            headers={"x-amz-request-id": request_id},
        )

    async def _forward(self, request: web.Request, *, drop_response: bool) -> web.StreamResponse:
        session = self._session
        assert session is not None, "set before the server accepts requests"
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        target = URL(self.upstream + request.raw_path, encoded=True)
        data: object = request.content if request.body_exists else None
        with self._lock:
            damage = next(
                (
                    i
                    for i, (at, prefix) in enumerate(self._mangle_requests)
                    if request.path.startswith(prefix)
                    and request.content_length is not None
                    and request.content_length > at
                ),
                None,
            )
            if damage is not None:
                at, _ = self._mangle_requests.pop(damage)
                self._errors += 1
        if damage is not None:
            body = bytearray(await request.read())
            body[at] ^= 0x01
            data = bytes(body)
        try:
            async with session.request(
                request.method, target, headers=headers, data=data, allow_redirects=False
            ) as upstream:
                with self._lock:
                    self._forwarded += 1
                if drop_response:
                    await upstream.read()
                    return self._drop(request)
                out_headers = CIMultiDict(
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
                )
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=out_headers
                )
                mangle: tuple[str, int, str] | None = None
                with self._lock:
                    for i, m in enumerate(self._mangle):
                        if upstream.status < 300 and request.path.startswith(m[2]):
                            mangle = self._mangle.pop(i)
                            self._errors += 1
                            break
                await response.prepare(request)
                offset = 0
                async for chunk in upstream.content.iter_chunked(STREAM_CHUNK_BYTES):
                    if mangle is not None and offset <= mangle[1] < offset + len(chunk):
                        at = mangle[1] - offset
                        if mangle[0] == "truncate":
                            await response.write(chunk[:at])
                            assert request.transport is not None
                            request.transport.close()
                            return response
                        chunk = chunk[:at] + bytes([chunk[at] ^ 0x01]) + chunk[at + 1 :]
                    offset += len(chunk)
                    await response.write(chunk)
                    with self._lock:
                        self._body_bytes[request.method, request.path] += len(chunk)
                await response.write_eof()
                return response
        except (TimeoutError, aiohttp.ClientError, OSError):
            # Mirror an unreachable upstream as an unreachable proxy: the client sees a
            # connection error, as it would talking to the server directly.
            with self._lock:
                self._upstream_failures += 1
            return self._drop(request)
