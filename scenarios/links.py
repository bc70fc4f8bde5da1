"""Inter-region links on one machine: an asyncio TCP proxy per (link, upstream) pair.

The kernel here has no `netem`, so distance is made in user space. Each direction of each
connection is a pipe that reads at once and delivers every chunk when it would have arrived:

- **latency**: one-way, added to every chunk (both directions, so a round trip costs 2x);
- **jitter**: a uniform 0..jitter extra per chunk, never reordering (TCP delivers in order);
- **bandwidth**: a chunk takes len/bandwidth on the wire after the previous one (per
  connection and direction; the link's connections do not share one budget);
- **loss**: TCP over loopback cannot lose a packet, and TCP hides a lost one from the
  application as a delay: a "lost" chunk (probability `loss`) is delivered one retransmission
  timeout (`rto_s`) late, and everything after it waits behind it. `reset` is the chance per
  chunk that the connection is dropped outright (both sides closed), as a middlebox would;
- **partition**: while on, nothing is delivered either way and new connections are accepted
  but not connected upstream; bytes in flight wait and flow again when it ends (TCP
  retransmits across a short partition), unless the endpoints gave up meanwhile.

A LinkSet runs every proxy on its own event loop in a thread, so the workload's loop (busy
with readers) neither delays nor is delayed by the links.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass
from types import TracebackType

CHUNK_BYTES = 64 * 1024


@dataclass
class LinkShape:
    latency_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bps: float = 0.0  # bytes per second; 0: unlimited
    loss: float = 0.0
    rto_s: float = 0.2
    reset: float = 0.0


class LinkProxy:
    """One listening port that forwards to `upstream` through `link`'s shape."""

    def __init__(self, link: Link, upstream: tuple[str, int]) -> None:
        self.link = link
        self.upstream = upstream
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        link = self.link
        task = asyncio.current_task()
        assert task is not None
        link.tasks.add(task)
        up_w: asyncio.StreamWriter | None = None
        try:
            await link.healed()
            up_r, up_w = await asyncio.open_connection(*self.upstream)
            link.connections += 1
            await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w))
        except (OSError, asyncio.IncompleteReadError, ConnectionDroppedError):
            pass  # a connection ends or the link dropped it
        except asyncio.CancelledError:
            pass  # the link stops
        finally:
            for w in (up_w, client_w):
                if w is not None:
                    w.close()
                    with contextlib.suppress(OSError, asyncio.CancelledError):
                        await w.wait_closed()
            link.tasks.discard(task)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        link = self.link
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await link.healed()
                if not data:
                    with contextlib.suppress(OSError):
                        w.write_eof()
                    return
                w.write(data)
                await w.drain()
                link.bytes += len(data)

        sender = asyncio.create_task(deliver())
        wire_free = last_due = time.monotonic()
        try:
            while True:
                data = await r.read(CHUNK_BYTES)
                shape = link.shape
                if data and shape.reset and link.rng.random() < shape.reset:
                    link.resets += 1
                    raise ConnectionDroppedError
                now = time.monotonic()
                if shape.bandwidth_bps:
                    wire_free = max(now, wire_free) + len(data) / shape.bandwidth_bps
                else:
                    wire_free = now
                due = wire_free + shape.latency_s + link.rng.uniform(0, shape.jitter_s)
                if data and shape.loss and link.rng.random() < shape.loss:
                    link.lost += 1
                    due += shape.rto_s
                last_due = max(last_due, due)  # in order, as TCP delivers
                queue.put_nowait((last_due, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender


class ConnectionDroppedError(Exception):
    pass


class Link:
    """A named link (e.g. "source-eu"): its shape, partition switch, counters and proxies."""

    def __init__(self, name: str, shape: LinkShape, *, seed: int = 0) -> None:
        self.name = name
        self.shape = shape
        self.rng = random.Random(seed)
        self.proxies: list[LinkProxy] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self._open: asyncio.Event | None = None
        self.bytes = 0
        self.connections = 0
        self.lost = 0
        self.resets = 0

    async def healed(self) -> None:
        if self._open is not None:
            await self._open.wait()

    def _set_partition(self, on: bool) -> None:
        if self._open is None:
            self._open = asyncio.Event()
        if on:
            self._open.clear()
        else:
            self._open.set()

    @property
    def partitioned(self) -> bool:
        return self._open is not None and not self._open.is_set()


class LinkSet:
    """Every link of a scenario, on one event loop in a thread. `proxy(link, host, port)` gives
    the URL to use in place of http://host:port; `partition(name, on)` cuts or heals a link."""

    def __init__(self, seed: int = 0) -> None:
        self.links: dict[str, Link] = {}
        self.seed = seed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def __enter__(self) -> LinkSet:
        self._thread = threading.Thread(target=self._main, name="links", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the links' event loop did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _call(self, coro: object, timeout_s: float = 10.0) -> object:
        assert self._loop is not None, "LinkSet used outside its `with`"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)  # type: ignore[arg-type]

    def add(self, name: str, shape: LinkShape) -> Link:
        if name in self.links:
            raise ValueError(f"link {name!r} declared twice")
        link = Link(name, shape, seed=self.seed + len(self.links))
        self.links[name] = link
        return link

    def proxy(self, name: str, host: str, port: int) -> str:
        """A new proxy on link `name` to host:port; its http URL."""
        link = self.links[name]

        async def go() -> LinkProxy:
            p = LinkProxy(link, (host, port))
            await p.start()
            link.proxies.append(p)
            return p

        proxy = self._call(go())
        assert isinstance(proxy, LinkProxy)
        return proxy.url

    def partition(self, name: str, on: bool) -> None:
        link = self.links[name]

        async def go() -> None:
            link._set_partition(on)

        self._call(go())

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            for link in self.links.values():
                link._set_partition(False)
                for p in link.proxies:
                    if p.server is not None:
                        p.server.close()
                tasks = list(link.tasks)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(shutdown())
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = None
