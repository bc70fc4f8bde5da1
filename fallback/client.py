"""FsClient: the file verbs (put, cat, ls, stat, rm, mv, mkdir) over one region.

The verbs are the same in every region; what differs is plugged in (wired by cli/connect.py):
the `MetadataView` reads resolve against, the `BlockSource` blocks come from, and in a mirror a
`ReadGate` that holds reads to their consistency window. Writes always go to the source. A
session remembers the last version it wrote or saw and passes it as `min_version`, so it reads
its own writes and never goes back in time on a node or replica that is behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, BinaryIO

from fallback.blocks import BlockSource, SourceBlocks
from fallback.consistency import MetaCall, ReadBound, ReadGate, T
from fallback.handle import FileHandle, Opening
from fallback.mirror_copy import MirrorCopy
from fallback.reader import DEFAULT_READAHEAD, Piece, iter_pieces, plan_reads
from fallback.source_view import SourceView
from fallback.view import FileVersion, MetadataView
from fallback.writer import DEFAULT_UPLOAD_CONCURRENCY, WritePolicy, WriteResult, write_file
from objstore import ConcurrencyLayer, ObjectStore, open_store
from volume.client import SourceClient
from volume.config import VolumeConfig
from volume.errors import FsError
from volume.inode import Inode

Identity = tuple[int, int]  # (uid, gid) a write is made as


class FsClient:
    def __init__(
        self,
        source: SourceClient,
        store: ObjectStore,
        *,
        view: MetadataView | None = None,
        blocks: BlockSource | None = None,
        gate: ReadGate | None = None,
        region: str = "source",
        uid: int | None = None,
        gid: int | None = None,
        write_policy: WritePolicy | None = None,
        mirror_copy: MirrorCopy | None = None,
        resources: contextlib.AsyncExitStack | None = None,
    ) -> None:
        self.source = source
        self.resources = resources  # closed last by aclose (a mirror's database pool...)
        self.store = store  # the source bucket: writes go there from every region
        self.region = region
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.view: MetadataView = view or SourceView(source, uid=self.uid, gid=self.gid)
        self.blocks: BlockSource = blocks or SourceBlocks(store)
        self.gate = gate
        self.seen_version = 0
        self.stale_answers = 0  # answers served stale (policy serve) by this client
        self.write_policy = write_policy or WritePolicy()
        # In a mirror region with copy_writes: puts leave their blocks in its bucket too.
        self.mirror_copy = mirror_copy

    @classmethod
    async def for_source(
        cls, cfg: VolumeConfig, *, uid: int | None = None, gid: int | None = None
    ) -> FsClient:
        store = await open_store(cfg.source.bucket, name="source")
        limited = ConcurrencyLayer(store, DEFAULT_UPLOAD_CONCURRENCY)
        policy = WritePolicy.for_grace(cfg.source.upload_grace_s)
        source = SourceClient(cfg.api_urls, cfg.token)
        return cls(source, limited, uid=uid, gid=gid, write_policy=policy)

    async def aclose(self) -> None:
        try:
            await self.blocks.aclose()
            await self.source.aclose()
            await self.store.aclose()
        finally:
            if self.resources is not None:
                await self.resources.aclose()

    async def __aenter__(self) -> FsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _saw(self, version: int) -> None:
        self.seen_version = max(self.seen_version, version)

    async def _meta(self, call: MetaCall[T], bound: ReadBound | None) -> tuple[T, bool]:
        """(answer, stale): `call` against this region's view, held to `bound` by the gate."""
        if self.gate is None:
            return await call(self.view, self.seen_version), False
        answer, stale = await self.gate.run(call, min_version=self.seen_version, bound=bound)
        self.stale_answers += stale  # stat/ls return bare values: callers compare this count
        return answer, stale

    async def _wrote(self, version: int) -> int:
        """A write committed `version`: the session reads it from now on, and in a mirror the
        call returns only once the region's replica shows it (so other readers there do)."""
        self._saw(version)
        if self.gate is not None:
            await self.gate.settle(version)
        return version

    async def commit_op(self, op: str, *, as_user: Identity | None = None, **args: object) -> int:
        """One namespace op (mkdir, create, symlink, truncate, setattr, ...) at the source as
        `as_user` (uid, gid; default the client's own: a mount forwards each caller's), read
        back by this session; the committed version, or its FsError."""
        uid, gid = as_user or (self.uid, self.gid)
        res = await self.source.op(op, uid=uid, gid=gid, **args)
        return await self._wrote(int(res["version"]))

    async def put(
        self, f: BinaryIO, path: str, *, parents: bool = True, as_user: Identity | None = None
    ) -> WriteResult:
        """Replace `path` with `f`'s bytes, making missing parents unless `parents` is off, as
        `as_user` (see commit_op); see fallback/writer.py for what is checked first and what a
        failure leaves behind."""
        uid, gid = as_user or (self.uid, self.gid)
        result = await write_file(
            self.source,
            self.store,
            path,
            f,
            uid=uid,
            gid=gid,
            parents=parents,
            policy=self.write_policy,
            min_version=self.seen_version,
            mirror=self.mirror_copy,
        )
        await self._wrote(result.version)
        return result

    async def mkdir(self, path: str, *, mode: int = 0o755, parents: bool = False) -> int:
        if not parents:
            return await self.commit_op("mkdir", path=path, mode=mode)
        parts = [p for p in path.split("/") if p]
        version = 0
        for i in range(1, len(parts) + 1):
            try:
                version = await self.commit_op("mkdir", path="/" + "/".join(parts[:i]), mode=mode)
            except FsError as exc:
                if exc.errno != errno.EEXIST:  # fine for -p
                    raise
        return version

    async def rm(self, path: str, *, dir: bool = False) -> int:
        return await self.commit_op("rmdir" if dir else "unlink", path=path)

    async def mv(self, src: str, dst: str) -> int:
        return await self.commit_op("rename", src=src, dst=dst)

    async def stat(self, path: str, *, bound: ReadBound | None = None) -> Inode:
        (version, inode), _ = await self._meta(
            lambda view, min_version: view.lookup(path, min_version=min_version), bound
        )
        self._saw(version)
        return inode

    async def ls(
        self, path: str, *, bound: ReadBound | None = None
    ) -> AsyncIterator[tuple[str, Inode]]:
        after = ""
        while True:

            def page(
                view: MetadataView, min_version: int, after: str = after
            ) -> Awaitable[tuple[int, list[tuple[str, Inode]]]]:
                return view.readdir(path, after=after, limit=1000, min_version=min_version)

            (version, rows), _ = await self._meta(page, bound)
            self._saw(version)
            for row in rows:
                yield row
            if len(rows) < 1000:
                return
            after = rows[-1][0]

    async def resolve(
        self,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        bound: ReadBound | None = None,
    ) -> tuple[FileVersion, bool]:
        """(the file at one version, covering [offset, offset+length); stale?). EISDIR for a
        directory, EINVAL... as the view."""
        file, stale = await self._meta(
            lambda view, min_version: view.resolve_file(
                path, offset=offset, length=length, min_version=min_version
            ),
            bound,
        )
        self._saw(file.version)
        inode = file.inode
        if not inode.is_file:
            why = "is a directory" if inode.is_dir else "not a regular file"
            raise FsError(errno.EISDIR, why, path=path)
        return file, stale

    def iter_range(
        self, file: FileVersion, offset: int, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes [offset, offset+length) of a resolved file (its chunk maps must cover them)."""
        want = file.inode.size - offset if length is None else length
        pieces = plan_reads(file, offset, want)
        return iter_pieces(self.block_fetcher(file), pieces, readahead=DEFAULT_READAHEAD)

    def block_fetcher(self, file: FileVersion) -> Callable[[Piece], Coroutine[Any, Any, bytes]]:
        """piece -> its whole verified block, from this region's BlockSource with the state
        the view read with the file (streams above, the mount's block windows)."""
        states = file.blocks

        def fetch(piece: Piece) -> Coroutine[Any, Any, bytes]:
            state = None if states is None else states.get((piece.slice_id or 0, piece.index))
            return self.blocks.get(piece, state)

        return fetch

    async def read(
        self,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        bound: ReadBound | None = None,
    ) -> AsyncIterator[bytes]:
        """The file's bytes from `offset`, streamed in block-sized pieces: the bytes of exactly
        one committed version (inode and chunk maps resolved together; the blocks of slices
        freed after that stay readable for the GC grace, see README "Reads")."""
        file, _ = await self.resolve(path, offset=offset, length=length, bound=bound)
        async for data in self.iter_range(file, offset, length):
            yield data

    async def cat(self, path: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(path)])

    # --- the public API (issue 10): files as an application sees them ---

    def open(self, path: str, *, bound: ReadBound | None = None) -> Opening:
        """A read handle on one version of `path` (`await fs.open(p)` or `async with
        fs.open(p) as f`): the whole file resolved once, so every read of the handle sees that
        version. FileNotFoundError / IsADirectoryError (FsError) as the view says."""

        async def opened() -> FileHandle:
            file, stale = await self.resolve(path, bound=bound)
            return FileHandle(path, file, self.iter_range, stale=stale)

        return Opening(opened)

    async def read_file(self, path: str, *, bound: ReadBound | None = None) -> bytes:
        """The whole file at one version (use `open` or `read` for files that do not fit in
        memory)."""
        return b"".join([data async for data in self.read(path, bound=bound)])

    async def write_file(
        self, path: str, data: bytes | bytearray | memoryview | BinaryIO, *, parents: bool = True
    ) -> WriteResult:
        """Replace `path` with `data` (bytes, or a binary file read to its end): `put`."""
        f = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        return await self.put(f, path, parents=parents)  # type: ignore[arg-type]

    async def listdir(self, path: str, *, bound: ReadBound | None = None) -> list[str]:
        """The names in a directory, sorted (ENOTDIR for a file, ENOENT for nothing)."""
        return [name async for name, _ in self.ls(path, bound=bound)]

    async def exists(self, path: str, *, bound: ReadBound | None = None) -> bool:
        try:
            await self.stat(path, bound=bound)
        except FileNotFoundError:
            return False
        return True

    async def walk(
        self, top: str = "/", *, bound: ReadBound | None = None
    ) -> AsyncIterator[tuple[str, list[str], list[str]]]:
        """(dirpath, dirnames, filenames) for `top` and every directory under it, top down,
        like os.walk: each directory is listed once (each listing at its own version, so a
        tree changing meanwhile is seen as os.walk sees a local one). Symlinks are listed in
        filenames and never followed. Removing names from `dirnames` prunes the walk.
        FileNotFoundError/NotADirectoryError if `top` is not a directory."""
        top = "/" + top.strip("/") if top.strip("/") else "/"
        stack = [top]
        while stack:
            here = stack.pop()
            dirs: list[str] = []
            files: list[str] = []
            try:
                async for name, attr in self.ls(here, bound=bound):
                    (dirs if attr.is_dir else files).append(name)
            except (FileNotFoundError, NotADirectoryError):
                if here == top:
                    raise
                continue  # removed or replaced since its parent was listed: as os.walk does
            yield here, dirs, files
            base = here.rstrip("/")
            stack.extend(f"{base}/{name}" for name in reversed(dirs))

    async def rmtree(self, path: str) -> int:
        """Remove a directory and everything under it (a file or symlink: just it), deepest
        first. A tree of up to `write_policy.max_ops` entries goes in one request, all or
        nothing; a bigger one in several, each leaving a smaller tree (never an orphan).
        The committed version; FileNotFoundError if `path` does not exist."""
        top = await self.stat(path)
        if not top.is_dir:
            return await self.rm(path)
        ops: list[dict[str, Any]] = []
        async for here, _dirs, files in self.walk(path):
            base = here.rstrip("/")
            ops.append({"op": "rmdir", "args": {"path": here}})
            ops.extend({"op": "unlink", "args": {"path": f"{base}/{n}"}} for n in files)
        # The walk lists a directory before anything under it: reversed, every entry goes
        # before the directory holding it.
        ops.reverse()
        version = 0
        step = max(1, self.write_policy.max_ops)
        for start in range(0, len(ops), step):
            res = await self.source.ops(ops[start : start + step], uid=self.uid, gid=self.gid)
            res.raise_first_error()
            version = await self._wrote(res.version)
        return version
