"""fsspec file system over a region: `mirrorfs://REGION/path` for pandas, PyTorch, datasets.

`MirrorFileSystem` maps fsspec's verbs onto the client's (through a SyncClient, whose
background loop fsspec's synchronous calls hand work to). How to connect to a region is not
this room's to know: a subclass supplies `connect_client` (cli/filesystem.py's, which is what
the `mirrorfs` protocol is registered as). Paths inside the file system are absolute volume
paths ("/models/x.bin"); the region is an instance setting, taken from the URL's host part.

What a reader gets: a file opened for reading reads one version of it (see fallback/handle.py).
A file opened for writing is spooled locally (memory, then a temporary file) and committed
whole on close as one `put` — nobody sees a partial file, and a failed write leaves the old one.
Exclusive creation (`xb`, `mode="create"`) checks first and then writes: not atomic against
another writer of the same path. There are no server-side copies: `cp` reads and writes.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import stat as stat_mod
import tempfile
import threading
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractFileSystem
from fsspec.utils import stringify_path

from fallback.client import FsClient
from fallback.consistency import ReadBound, StalePolicy
from fallback.sync import SyncClient, SyncReader
from volume.errors import FsError
from volume.inode import Inode

PROTOCOL = "mirrorfs"
SOURCE_REGION = "source"
SPOOL_MEMORY_BYTES = 16 * 1024 * 1024  # a write file past this spills to a temporary file
_KIND_TYPES = {"file": "file", "dir": "directory"}
_KIND_BITS = {"file": stat_mod.S_IFREG, "dir": stat_mod.S_IFDIR, "symlink": stat_mod.S_IFLNK}


def volume_path(path: str) -> str:
    """A path of the volume, absolute and without empty parts: "a//b/" -> "/a/b"."""
    return "/" + "/".join(p for p in path.split("/") if p)


def inode_info(path: str, inode: Inode) -> dict[str, Any]:
    """fsspec's info dict for an inode (the `type` fsspec knows, plus the inode's own fields)."""
    info: dict[str, Any] = {
        "name": path,
        "size": inode.size,
        "type": _KIND_TYPES.get(inode.kind, "other"),
        "mode": _KIND_BITS.get(inode.kind, 0) | inode.mode,
        "mtime": inode.mtime_ms / 1000,
        "ctime": inode.ctime_ms / 1000,
        "uid": inode.uid,
        "gid": inode.gid,
        "nlink": inode.nlink,
        "ino": inode.ino,
        "islink": inode.kind == "symlink",
    }
    if inode.target is not None:
        info["destination"] = inode.target
    return info


class MirrorFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """fsspec's AbstractFileSystem for one region of a volume.

    Storage options: `region` (the URL's host; default $MIRRORFS_REGION, else the source),
    `config` (the volume's config file; default $MIRRORFS_CONFIG, else ./mirrorfs.toml),
    `window_s` and `policy` (source/error/serve): the staleness bound of every read."""

    protocol = (PROTOCOL,)
    root_marker = "/"
    sep = "/"

    def __init__(
        self,
        region: str | None = None,
        config: str | os.PathLike[str] | None = None,
        window_s: float | None = None,
        policy: str | StalePolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.region = region or os.environ.get("MIRRORFS_REGION") or SOURCE_REGION
        self.config = None if config is None else os.fspath(config)
        self.bound = ReadBound(
            window_s=None if window_s is None else float(window_s),
            policy=None if policy is None else StalePolicy(policy),
        )
        self._sync: SyncClient | None = None
        self._connecting = threading.Lock()

    def connect_client(self) -> Awaitable[FsClient]:
        """Make this region's FsClient (run on the client's loop). Supplied by a subclass:
        cli/filesystem.py's, which knows the config and the regions."""
        raise NotImplementedError(
            "MirrorFileSystem connects through a subclass (cli.filesystem.RegionFileSystem, "
            "registered as mirrorfs://)"
        )

    @property
    def client(self) -> SyncClient:
        """The region's client, connected on first use (so constructing the file system, as
        fsspec does on every URL it parses, opens nothing)."""
        with self._connecting:  # threads share a file system (fsspec caches instances)
            if self._sync is None:
                self._sync = SyncClient(self.connect_client)
            return self._sync

    def close(self) -> None:
        if self._sync is not None:
            sync, self._sync = self._sync, None
            sync.close()

    # --- paths ---

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3 :].partition("/")[2]  # the host part is the region
        elif path.startswith(f"{PROTOCOL}::"):
            path = path[len(PROTOCOL) + 2 :]
        return volume_path(path)

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if path.startswith(f"{PROTOCOL}://"):
            region = path[len(PROTOCOL) + 3 :].partition("/")[0]
            if region:
                return {"region": region}
        return {}

    def unstrip_protocol(self, name: str) -> str:
        if name.startswith(f"{PROTOCOL}://"):
            return name
        return f"{PROTOCOL}://{self.region}{volume_path(name)}"

    # --- reads ---

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return inode_info(path, self.client.stat(path, bound=self.bound))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        try:
            rows = self.client.ls(path, bound=self.bound)
        except NotADirectoryError:
            rows = None
        if rows is None:  # fsspec: ls of a file is that file
            entries = [self.info(path)]
        else:
            base = path.rstrip("/")
            entries = [inode_info(f"{base}/{name}", attr) for name, attr in rows]
        return entries if detail else [e["name"] for e in entries]

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=UTC)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> io.BufferedIOBase:
        path = self._strip_protocol(path)
        if mode == "rb":
            return self.client.open(path, bound=self.bound)
        if mode not in ("wb", "xb", "ab"):
            raise ValueError(f"mode {mode!r}: mirrorfs files open as rb, wb, xb or ab")
        if mode == "xb" and self.exists(path):
            raise FsError(errno.EEXIST, "file exists (mode xb)", path=path)
        writer = MirrorWriter(self, path, autocommit=autocommit)
        if mode == "ab" and self.isfile(path):
            with self.client.open(path, bound=self.bound) as old:
                while data := old.read(self.blocksize):
                    writer.write(data)
        return writer

    # --- writes ---

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if mode == "create" and self.exists(path):
            raise FsError(errno.EEXIST, "file exists (mode create)", path=path)
        self.client.write_file(path, value)

    def put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Any = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        rpath = self._strip_protocol(rpath)
        if mode == "create" and self.exists(rpath):
            raise FsError(errno.EEXIST, "file exists (mode create)", path=rpath)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        size = os.path.getsize(lpath)
        callback.set_size(size)
        self.client.put(lpath, rpath)  # blocks in parallel, one commit; parents made
        callback.relative_update(size)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Read and write (no server-side copy): directories are made, not copied."""
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        with (
            self.client.open(path1, bound=self.bound) as src,
            tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES) as spool,
        ):
            while data := src.read(self.blocksize):
                spool.write(data)
            spool.seek(0)
            self.client.put(spool, path2)  # type: ignore[arg-type]

    def mv(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """One rename for a single file, or a directory with recursive=True (atomic, no
        bytes moved); copy-and-remove as fsspec's for globs and lists."""
        single = isinstance(path1, str) and isinstance(path2, str) and maxdepth is None
        if not single or any(c in path1 for c in "*?["):
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if src == dst:
            return
        if self.isdir(src) and not recursive:
            raise FsError(errno.EISDIR, "a directory moves only with recursive=True", path=src)
        if path2.endswith("/") or self.isdir(dst):
            dst = f"{dst.rstrip('/')}/{posixpath.basename(src)}"  # into it, as fsspec's cp
        self.client.mv(src, dst)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """FileExistsError if `path` exists (as fsspec's local file system), parents or not."""
        path = self._strip_protocol(path)
        if create_parents and self.exists(path):
            raise FsError(errno.EEXIST, "already exists", path=path)
        self.client.mkdir(path, parents=create_parents)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if self.exists(path):
            if exist_ok and self.isdir(path):
                return
            raise FsError(errno.EEXIST, "already exists", path=path)
        self.client.mkdir(path, parents=True)

    def rmdir(self, path: str) -> None:
        self.client.rm(self._strip_protocol(path), dir=True)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """A directory with recursive=True goes as one request (FsClient.rmtree: all or
        nothing up to its size limit); globs, lists and maxdepth as fsspec's, entry by entry."""
        if (
            isinstance(path, str)
            and recursive
            and maxdepth is None
            and not any(c in path for c in "*?[")
        ):
            self.client.rmtree(self._strip_protocol(path))
            return
        super().rm(path, recursive=recursive, maxdepth=maxdepth)

    def rm_file(self, path: str) -> None:
        """Removes a file, or an empty directory (fsspec's rm hands it both, deepest first)."""
        path = self._strip_protocol(path)
        self.client.rm(path, dir=self.isdir(path))

    def _rm(self, path: str) -> None:
        self.rm_file(path)


class MirrorWriter(io.BufferedIOBase):
    """A file open for writing: bytes spooled locally, committed whole by one put on close
    (or on `commit` inside an fsspec transaction; `discard` drops them)."""

    def __init__(self, fs: MirrorFileSystem, path: str, *, autocommit: bool = True) -> None:
        super().__init__()
        self.fs = fs
        self.path = path
        self.name = path
        self.mode = "wb"
        self.autocommit = autocommit
        self._spool: Any = tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES)  # noqa: SIM115
        self.version: int | None = None  # the committed version, once committed

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return int(self._spool.write(data))

    def tell(self) -> int:
        return int(self._spool.tell())

    def commit(self) -> None:
        if self._spool is None:
            return
        spool, self._spool = self._spool, None
        try:
            spool.seek(0)
            self.version = self.fs.client.put(spool, self.path).version
        finally:
            spool.close()

    def discard(self) -> None:
        if self._spool is not None:
            spool, self._spool = self._spool, None
            spool.close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.autocommit:
                self.commit()
        finally:
            super().close()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.discard()  # an error while writing: the old file stays, nothing half-written
        self.close()

    def __del__(self) -> None:
        # Collected unclosed: never commit (a half-written file must not appear), just free.
        self.discard()


__all__ = ["MirrorFileSystem", "MirrorWriter", "SyncReader", "inode_info", "volume_path"]
