"""A TCP delay line for tests: what the upstream sends reaches the client `delay_s` late.

Put between a mirror daemon and the source API, it makes a follower that is behind by a known
time (every record arrives `delay_s` after the source sent it) without stopping it: the stream
keeps flowing, just late, as over a slow link. Bytes towards the upstream pass at once; the
delay applies to each chunk as it arrives, so changing it takes effect for new bytes only.
tests/servers/faultproxy.py delays a request before it goes upstream, which does nothing to
a long-lived stream; this delays the stream itself.

It runs its own event loop in a thread, so the test's loop may block (a CLI run) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType

CHUNK_BYTES = 64 * 1024


class DelayLine:
    def __init__(self, upstream_host: str, upstream_port: int, *, delay_s: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._delay_s = delay_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_delay(self, delay_s: float) -> None:
        self._delay_s = delay_s

    def start(self) -> DelayLine:
        self._thread = threading.Thread(target=self._main, name="delay-line", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay line did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> DelayLine:
        return self.start()

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
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(client_r, up_w), self._delayed(up_r, client_w))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a connection ends (cancelled: the line stops); the test loop needs no trace
        finally:
            for w in (up_w, client_w):
                w.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await w.wait_closed()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(CHUNK_BYTES):
            w.write(data)
            await w.drain()
        with contextlib.suppress(OSError):
            w.write_eof()

    async def _delayed(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Read at once (so the sender is never held back), deliver each chunk delay_s late."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        w.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                w.write(data)
                await w.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await r.read(CHUNK_BYTES)
                queue.put_nowait((time.monotonic() + self._delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
