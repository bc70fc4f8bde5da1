"""The client for scripts and notebooks: the same verbs, without `await`.

An event loop runs in a background thread for the client's lifetime (the client's
connections, the mirror's database pool and readahead tasks live on it); each call is handed
to it and waited for. This is the one loop this room starts: a program with a loop of its own
uses FsClient directly. A notebook's own running loop is no obstacle, since calls never run on
the caller's thread.

`open` gives a `SyncReader`, a buffered binary file (read/readinto/seek/tell) that
`torch.load`, `safetensors`, `zipfile`, `pickle` and pyarrow accept; small reads are served
from the block in memory without a trip to the loop.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import structlog

from fallback.client import FsClient
from fallback.consistency import ReadBound
from fallback.handle import FileHandle
from fallback.writer import WriteResult
from volume.inode import Inode

log = structlog.get_logger(__name__)

T = TypeVar("T")
Connect = Callable[[], Awaitable[FsClient]]


class ClientClosedError(ValueError):
    """A call on a SyncClient (or a file it opened) after the client was closed."""


class _Loop:
    """The background loop and the client on it; closed by SyncClient.close or at exit."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # Made now, not on first use: a first asyncio.to_thread while the interpreter exits
        # (a client closed by _close_all_at_exit) could not start an executor any more.
        self.loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="mirrorfs-client"))
        self.client: FsClient | None = None
        self.thread = threading.Thread(target=self._main, name="mirrorfs-client", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.loop.is_closed() or not self.thread.is_alive():
            coro.close()
            raise ClientClosedError("the client is closed")
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a SyncClient call from its own loop thread would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        _OPEN.discard(self)
        if self.loop.is_closed():
            return
        try:
            if self.client is not None:
                client, self.client = self.client, None
                self.run(client.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


_OPEN: weakref.WeakSet[_Loop] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    """Close the clients nobody closed (fsspec keeps its file systems for the process's life)
    while threads still work: closing one may need asyncio.to_thread (an embedded PostgreSQL's
    detach), which fails once concurrent.futures has shut its workers down, and atexit
    handlers run after that. threading's own exit hooks run first, newest first."""
    for loop in list(_OPEN):
        try:
            loop.close()
        except Exception as exc:  # noqa: BLE001 - at exit: say it, do not stop the others
            log.warning("sync_client.close_at_exit_failed", error=str(exc))


threading._register_atexit(_close_all_at_exit)  # type: ignore[attr-defined]


class SyncClient:
    """FsClient's verbs as blocking calls. `connect` makes the FsClient (on the background
    loop): cli.client.connect builds one from a config and a region name. Close it (or use
    `with`); one left open is closed when collected or at interpreter exit."""

    def __init__(self, connect: Connect) -> None:
        self._loop = _Loop()
        _OPEN.add(self._loop)
        self._closer = weakref.finalize(self, self._loop.close)
        self._closer.atexit = False  # at exit, _close_all_at_exit does it, earlier
        try:
            self._loop.client = self._loop.run(_connect(connect))
        except BaseException:
            self.close()
            raise

    @property
    def client(self) -> FsClient:
        if self._loop.client is None:
            raise ValueError("the client is closed")
        return self._loop.client

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the async client's on the background loop and wait for it."""
        return self._loop.run(coro)

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def region(self) -> str:
        return self.client.region

    # --- reads ---

    def stat(self, path: str, *, bound: ReadBound | None = None) -> Inode:
        return self.run(self.client.stat(path, bound=bound))

    def ls(self, path: str = "/", *, bound: ReadBound | None = None) -> list[tuple[str, Inode]]:
        async def rows() -> list[tuple[str, Inode]]:
            return [row async for row in self.client.ls(path, bound=bound)]

        return self.run(rows())

    def listdir(self, path: str = "/", *, bound: ReadBound | None = None) -> list[str]:
        return self.run(self.client.listdir(path, bound=bound))

    def exists(self, path: str, *, bound: ReadBound | None = None) -> bool:
        return self.run(self.client.exists(path, bound=bound))

    def walk(
        self, top: str = "/", *, bound: ReadBound | None = None
    ) -> Iterator[tuple[str, list[str], list[str]]]:
        """As os.walk (top down; pruning `dirnames` in place prunes the walk)."""
        walker = cast(AsyncGenerator[Any, None], self.client.walk(top, bound=bound))
        try:
            while True:
                try:
                    yield self.run(_anext(walker))
                except StopAsyncIteration:
                    return
        finally:
            self.run(walker.aclose())

    def read_file(self, path: str, *, bound: ReadBound | None = None) -> bytes:
        return self.run(self.client.read_file(path, bound=bound))

    cat = read_file

    def open(self, path: str, *, bound: ReadBound | None = None) -> SyncReader:
        handle = self.run(_open(self.client, path, bound))
        return SyncReader(handle, self.run)

    def get(self, path: str, local: str | os.PathLike[str]) -> int:
        """Copy a file out to `local` (written beside it and renamed when complete); its size."""
        target = Path(local)
        tmp = target.with_name(f".{target.name}.mirrorfs-get")
        try:
            with self.open(path) as src, open(tmp, "wb") as out:
                while data := src.read(8 * 1024 * 1024):
                    out.write(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target.stat().st_size

    # --- writes (to the source, from every region) ---

    def write_file(
        self, path: str, data: bytes | bytearray | memoryview | BinaryIO, *, parents: bool = True
    ) -> WriteResult:
        return self.run(self.client.write_file(path, data, parents=parents))

    def put(
        self, local: str | os.PathLike[str] | BinaryIO, path: str, *, parents: bool = True
    ) -> WriteResult:
        """Upload a local file (a path, or a binary file object read to its end)."""
        if isinstance(local, str | os.PathLike):
            with open(local, "rb") as f:
                return self.run(self.client.put(f, path, parents=parents))
        return self.run(self.client.put(local, path, parents=parents))

    def mkdir(self, path: str, *, mode: int = 0o755, parents: bool = False) -> int:
        return self.run(self.client.mkdir(path, mode=mode, parents=parents))

    def rm(self, path: str, *, dir: bool = False) -> int:
        return self.run(self.client.rm(path, dir=dir))

    def rmtree(self, path: str) -> int:
        return self.run(self.client.rmtree(path))

    def mv(self, src: str, dst: str) -> int:
        return self.run(self.client.mv(src, dst))


async def _connect(connect: Connect) -> FsClient:
    return await connect()


async def _anext(it: Any) -> Any:
    return await it.__anext__()


async def _open(client: FsClient, path: str, bound: ReadBound | None) -> FileHandle:
    return await client.open(path, bound=bound)


class SyncReader(io.BufferedIOBase):
    """A binary file over a FileHandle: one version of the file (`version`, `stale`, `size`).
    `run` runs a coroutine on the handle's loop and waits for it. Threads may share one (as
    pyarrow's readers do): each call holds the file's lock."""

    def __init__(self, handle: FileHandle, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        super().__init__()
        self.handle = handle
        self._run = run
        self.name = self.path = handle.path
        self.mode = "rb"
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.handle.size

    @property
    def version(self) -> int:
        return self.handle.version

    @property
    def stale(self) -> bool:
        return self.handle.stale

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        want = -1 if n is None else n
        with self._lock:
            self._check_open()
            if want == 0:
                return b""
            got = self.handle.read_buffered(want) or b""  # no trip to the loop if in memory
            if len(got) == want or self.handle.tell() >= self.size:
                return got
            rest: bytes = self._run(self.handle.read(-1 if want < 0 else want - len(got)))
            return got + rest if got else rest

    read1 = read

    def peek(self, size: int = 0) -> bytes:
        """Bytes from the position on, not consumed (what readline scans for b"\\n")."""
        with self._lock:
            self._check_open()
            got = self.handle.peek_buffered()
            if got is None:
                got = self._run(self.handle.peek())
            return got

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    readinto1 = readinto

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._lock:
            self._check_open()
            return self.handle.seek(offset, whence)

    def tell(self) -> int:
        with self._lock:
            self._check_open()
            return self.handle.tell()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self._run(self.handle.aclose())
            except ClientClosedError:
                pass  # its loop is gone, and the readahead with it
            finally:
                super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
