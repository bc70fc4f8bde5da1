"""`file:///dir`: a bucket that is a local directory, the embedded default.

An object is a file at `dir/key`. A put writes a temporary file beside the target, fsyncs it and
renames it into place, so a reader sees the old object or the new one, never a half-written one,
and a crash leaves at most a stray temporary file (ignored by list, never served).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from objstore.base import ObjectMeta, ObjectStore, clip_range
from objstore.errors import InvalidURLError, NotFoundError, StoreError, UnsupportedError

TMP_PREFIX = ".tmp-"


class LocalStore:
    """A directory as a bucket. `fsync=False` trades crash safety for speed (tests, scratch)."""

    def __init__(self, root: Path, *, url: str | None = None, fsync: bool = True) -> None:
        self.root = root
        self.url = url or root.as_uri()
        self.fsync = fsync

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> LocalStore:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise InvalidURLError(
                "file:// URLs take an absolute path (file:///dir)", url=url, op="open"
            )
        if not parts.path:
            raise InvalidURLError("missing directory in file:// URL", url=url, op="open")
        root = Path(unquote(parts.path))
        if create:
            root.mkdir(parents=True, exist_ok=True)
        elif not root.is_dir():
            raise NotFoundError("bucket directory does not exist", url=url, op="open")
        return cls(root, url=url)

    def _path(self, key: str, op: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StoreError("invalid key", op=op, key=key, url=self.url)
        if parts[-1].startswith(TMP_PREFIX):
            raise StoreError(f"keys may not start with {TMP_PREFIX!r}", op=op, key=key)
        return self.root.joinpath(*parts)

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key, "get")
        return await asyncio.to_thread(self._read, path, key, offset, length)

    def _read(self, path: Path, key: str, offset: int, length: int | None) -> bytes:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start, end = clip_range(size, offset, length)
                f.seek(start)
                return f.read(end - start)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFoundError("no such key", op="get", key=key, url=self.url) from None

    async def head(self, key: str) -> ObjectMeta:
        path = self._path(key, "head")
        try:
            st = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError("no such key", op="head", key=key, url=self.url) from None
        if not path.is_file():
            raise NotFoundError("no such key", op="head", key=key, url=self.url)
        return ObjectMeta(key, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}", st.st_mtime)

    async def put(self, key: str, data: bytes) -> ObjectMeta:
        path = self._path(key, "put")
        return await asyncio.to_thread(self._write, path, key, data)

    def _write(self, path: Path, key: str, data: bytes) -> ObjectMeta:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(str(exc), op="put", key=key, url=self.url) from exc
        if self.fsync:
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        st = path.stat()
        return ObjectMeta(key, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}", st.st_mtime)

    async def copy_from(self, source: ObjectStore, meta: ObjectMeta) -> ObjectMeta:
        raise UnsupportedError(
            "a file:// bucket has no server to copy for it", op="copy", key=meta.key, url=self.url
        )

    async def delete(self, key: str) -> None:
        path = self._path(key, "delete")
        await asyncio.to_thread(path.unlink, True)

    async def list(self, prefix: str = "", *, start_after: str = "") -> AsyncIterator[ObjectMeta]:
        for meta in await asyncio.to_thread(scan_dir, self.root, prefix, start_after):
            yield meta

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"LocalStore({self.url})"


def scan_dir(root: Path, prefix: str, start_after: str) -> list[ObjectMeta]:
    """Every key under `root` with `prefix`, after `start_after`, sorted by bytes."""
    base_dir = prefix.rpartition("/")[0]
    top = root.joinpath(*base_dir.split("/")) if base_dir else root
    found: list[ObjectMeta] = []
    for dirpath, _dirs, files in os.walk(top):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for name in files:
            key = rel + name
            if name.startswith(TMP_PREFIX) or not key.startswith(prefix) or key <= start_after:
                continue
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue  # deleted while we walked
            found.append(ObjectMeta(key, st.st_size, "", st.st_mtime))
    found.sort(key=lambda m: m.key.encode())
    return found
