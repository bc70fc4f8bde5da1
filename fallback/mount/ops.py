"""The FUSE operations of a mount: the kernel's requests answered by one FsClient.

Reads go through the client's read path (the region's replica within the consistency window,
blocks from the mirror bucket with fallback to the source, the local block cache), writes are
forwarded to the source as the caller (its uid and gid), so the source's permission checks are
the caller's; the kernel checks permission bits on reads (the `default_permissions` option).

What runs at once here: every request is a task on one event loop (pyfuse3's asyncio mode), so
state changes between awaits only. A read handle's blocks are fetched by the reads and the
readahead of that handle (window.py); a write buffer excludes its own writes during a commit
(buffers.py); a rename or unlink through the mount updates the inode table after the source
committed it, and lookups that raced it ask the view again.

Page cache: each version of a file's bytes is a node of its own (nodes.py), so the kernel's
pages and size of one never serve another, and a read handle keeps its pages (`keep_cache`).
An open of a node whose file has new bytes at the source is refused with ESTALE: the kernel
then looks the name up again, gets the new version's node and opens that. Handles open for
writing bypass the page cache (`direct_io`): the buffer is the file's truth while it is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import stat
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import structlog

from fallback.client import FsClient, Identity
from fallback.mount.buffers import WriteBuffer
from fallback.mount.nodes import Node, NodeTable, content_of
from fallback.mount.window import BlockWindow
from fallback.view import FileVersion
from volume.inode import BLOCK_SIZE, Inode
from volume.paths import join_path, split_path

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

KIND_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}
IO_BLOCK_SIZE = 1024 * 1024  # st_blksize: `cp` and friends read this much per call
NAME_MAX = 255
DEFAULT_FILE_MODE = 0o644


@dataclass(frozen=True, slots=True)
class MountOptions:
    read_only: bool = False
    attr_timeout_s: float = 1.0  # the kernel's attribute and entry caches (the window)
    spool_dir: Path | None = None  # where write buffers live (None: the system's temp dir)
    readahead_blocks: int = 8


def _fuse_errors(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Every error a request meets reaches the caller as an errno: an unexpected exception
    would stop pyfuse3's main loop (the mount would hang up on everyone)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:  # FsError, StaleMirrorError (EAGAIN), local spool I/O
            code = exc.errno or errno.EIO
            if code not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
                log.info("mount.denied", op=fn.__name__, errno=code, error=str(exc))
            raise pyfuse3.FUSEError(code) from None
        except Exception as exc:  # noqa: BLE001 (any error: the caller's EIO, not a dead mount)
            # StoreError, ChecksumError, ChangelogError (the source unreachable): EIO.
            log.warning("mount.failed", op=fn.__name__, error=str(exc), kind=type(exc).__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _name(raw: bytes) -> str:
    name = os.fsdecode(raw)
    if len(raw) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    return name


class ReadHandle:
    def __init__(self, node: Node, window: BlockWindow) -> None:
        self.node = node
        self.window = window


class WriteHandle:
    def __init__(self, node: Node, buffer: WriteBuffer) -> None:
        self.node = node
        self.buffer = buffer


class MountOperations(pyfuse3.Operations):
    def __init__(self, fs: FsClient, options: MountOptions, root: Inode) -> None:
        super().__init__()
        self.fs = fs
        self.options = options
        self.nodes = NodeTable(root)
        self._handles: dict[int, ReadHandle | WriteHandle] = {}
        self._next_fh = 1
        self._buffers: dict[int, WriteBuffer] = {}  # volume ino -> its buffer while open
        self._listings: dict[int, tuple[str, list[tuple[str, Inode]]]] = {}
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    async def for_client(cls, fs: FsClient, options: MountOptions) -> MountOperations:
        """Operations over `fs`, its root's attributes read now (a region that cannot answer
        fails the mount here, with the client's error, not the first `ls`)."""
        return cls(fs, options, await fs.stat("/"))

    # --- attributes and names ---

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        inode = node.inode
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.id)
        a.generation = 0
        a.entry_timeout = a.attr_timeout = self.options.attr_timeout_s
        a.st_mode = pyfuse3.ModeT(KIND_BITS[inode.kind] | inode.mode)
        a.st_nlink = inode.nlink
        a.st_uid, a.st_gid = inode.uid, inode.gid
        size = inode.size
        buffer = self._buffers.get(node.ino)
        if buffer is not None and self.nodes.is_current(node):
            size = buffer.size  # what the writer wrote so far, committed or not
        a.st_size = size
        a.st_blksize = IO_BLOCK_SIZE
        a.st_blocks = -(-size // 512)
        a.st_mtime_ns = inode.mtime_ms * 1_000_000
        a.st_ctime_ns = inode.ctime_ms * 1_000_000
        a.st_atime_ns = a.st_mtime_ns
        return a

    def _node(self, node_id: int) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)  # forgotten: the kernel looks it up again
        return node

    def _path(self, node: Node) -> str:
        path = self.nodes.path(node.id)
        if not path:
            raise pyfuse3.FUSEError(errno.ENOENT)  # unlinked through the mount
        return path

    def _child(self, parent: int, raw: bytes) -> str:
        path = self.nodes.child(parent, _name(raw))
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        split_path(path)  # FsError(EINVAL/ENAMETOOLONG) for what the volume cannot name
        return path

    async def _learnt(self, path: str) -> pyfuse3.EntryAttributes:
        inode = await self.fs.stat(path)
        return self._attrs(self.nodes.learn(inode, path))

    def _check_current(self, node: Node, inode: Inode) -> None:
        """ESTALE when `inode` (the path's now) is not the node's file at the node's bytes:
        the kernel looks the name up again and retries with the node it gets."""
        if inode.ino != node.ino or content_of(inode) != node.content:
            raise pyfuse3.FUSEError(errno.ESTALE)

    @staticmethod
    def _who(ctx: pyfuse3.RequestContext) -> Identity:
        return ctx.uid, ctx.gid

    def _writable(self) -> None:
        if self.options.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    @_fuse_errors
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            return await self.getattr(parent_inode, ctx)
        if name == b"..":
            parent = self._path(self._node(parent_inode)).rsplit("/", 1)[0] or "/"
            return await self._learnt(parent)
        return await self._learnt(self._child(parent_inode, name))

    async def forget(self, inode_list: Any) -> None:
        for node_id, count in inode_list:
            self.nodes.forget(node_id, count)

    @_fuse_errors
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        path = self.nodes.path(node.id)
        if path and self.nodes.is_current(node):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                now = await self.fs.stat(path)
                if now.ino == node.ino and content_of(now) == node.content:
                    node.inode = now  # same bytes: mode, owner, ctime as they are now
        # Otherwise the node's own attributes: fstat of a handle on an older version, or of
        # a file unlinked meanwhile, answers for what that handle reads.
        return self._attrs(node)

    @_fuse_errors
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        node = self._node(inode)
        path = self._path(node)
        who = self._who(ctx)
        if fields.update_size:
            buffer = self._buffers.get(node.ino)
            if buffer is not None:
                await buffer.truncate(attr.st_size)  # committed with the rest on close
            else:
                await self.fs.commit_op("truncate", path=path, size=attr.st_size, as_user=who)
        changes: dict[str, int] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["owner_uid"] = attr.st_uid
        if fields.update_gid:
            changes["owner_gid"] = attr.st_gid
        if fields.update_mtime:
            changes["mtime_ms"] = attr.st_mtime_ns // 1_000_000
        if changes:
            await self.fs.commit_op("setattr", path=path, as_user=who, **changes)
        now = await self.fs.stat(path)
        if now.ino == node.ino:
            self.nodes.rewritten(node, now)  # our own change (the kernel truncated its pages)
        return self._attrs(node)

    @_fuse_errors
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.inode.kind != "symlink" or node.inode.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.inode.target)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # A bucket has no fixed size: report a large, mostly free one (as s3fs does).
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 2**50 // BLOCK_SIZE  # 1 PiB
        s.f_files = s.f_ffree = s.f_favail = 2**32
        s.f_namemax = NAME_MAX
        return s

    # --- directories ---

    @_fuse_errors
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        node = self._node(inode)
        path = self._path(node)
        rows = [row async for row in self.fs.ls(path)]
        fh = self._new_fh()
        self._listings[fh] = (path, rows)
        return pyfuse3.FileHandleT(fh)

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        path, rows = self._listings.get(fh, ("/", []))
        for i in range(start_id, len(rows)):
            name, inode = rows[i]
            child = join_path(path, name)
            node = self.nodes.learn(inode, child)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(node), i + 1):
                self.nodes.forget(node.id, 1)  # not taken: it comes again in the next call
                return
            # Taken: with readdirplus the kernel holds an entry for it now (one lookup).

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._listings.pop(fh, None)

    @_fuse_errors
    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: bytes,
        mode: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        path = self._child(parent_inode, name)
        mode = stat.S_IMODE(mode) & ~ctx.umask
        await self.fs.commit_op("mkdir", path=path, mode=mode, as_user=self._who(ctx))
        return await self._learnt(path)

    @_fuse_errors
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._writable()
        path = self._child(parent_inode, name)
        await self.fs.commit_op("rmdir", path=path, as_user=self._who(ctx))
        self.nodes.removed(path)

    @_fuse_errors
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._writable()
        path = self._child(parent_inode, name)
        await self.fs.commit_op("unlink", path=path, as_user=self._who(ctx))
        self._unlinked(self.nodes.removed(path))

    def _unlinked(self, ino: int | None) -> None:
        buffer = self._buffers.get(ino) if ino is not None else None
        if buffer is not None:
            buffer.unlinked = True  # its writes die with the name, as on a local disk

    @_fuse_errors
    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: bytes,
        target: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        path = self._child(parent_inode, name)
        await self.fs.commit_op(
            "symlink", path=path, target=os.fsdecode(target), as_user=self._who(ctx)
        )
        return await self._learnt(path)

    @_fuse_errors
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: bytes,
        parent_inode_new: pyfuse3.InodeT,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._writable()
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE / NOREPLACE: not offered
        src = self._child(parent_inode_old, name_old)
        dst = self._child(parent_inode_new, name_new)
        await self.fs.commit_op("rename", src=src, dst=dst, as_user=self._who(ctx))
        self._unlinked(self.nodes.removed(dst))  # replaced: its writes must not land on src's
        self.nodes.moved(src, dst)

    # --- files ---

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    @_fuse_errors
    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self._node(inode)
        path = self._path(node)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            return await self._open_read(node, path)
        self._writable()
        buffer = self._buffers.get(node.ino)
        if buffer is None:
            file, _ = await self.fs.resolve(path)
            self._check_current(node, file.inode)
            base = None if flags & os.O_TRUNC or file.inode.size == 0 else file
            buffer = self._new_buffer(node.ino, base, self._who(ctx))
        if flags & os.O_TRUNC:
            await buffer.truncate(0)
        return self._open_write(node, buffer)

    def _new_buffer(self, ino: int, base: FileVersion | None, who: Identity) -> WriteBuffer:
        buffer = WriteBuffer(
            ino,
            spool_dir=self.options.spool_dir,
            base=base,
            load=lambda file: self.fs.iter_range(file, 0),
            as_user=who,
        )
        self._buffers[ino] = buffer
        return buffer

    def _open_write(self, node: Node, buffer: WriteBuffer) -> pyfuse3.FileInfo:
        buffer.handles += 1
        fh = self._new_fh()
        self._handles[fh] = WriteHandle(node, buffer)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), direct_io=True)

    async def _open_read(self, node: Node, path: str) -> pyfuse3.FileInfo:
        file, _ = await self.fs.resolve(path)
        self._check_current(node, file.inode)
        fetch = self.fs.block_fetcher(file)
        window = BlockWindow(file, fetch, readahead=self.options.readahead_blocks)
        fh = self._new_fh()
        self._handles[fh] = ReadHandle(node, window)
        # A node's bytes never change (nodes.py), so its pages stay valid across opens.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

    @_fuse_errors
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        path = self._child(parent_inode, name)
        mode = stat.S_IMODE(mode) & ~ctx.umask
        who = self._who(ctx)
        # The empty file exists from now on (as a local create), its bytes come with the commit.
        await self.fs.commit_op(
            "create", path=path, mode=mode, exclusive=bool(flags & os.O_EXCL), as_user=who
        )
        inode = await self.fs.stat(path)
        node = self.nodes.learn(inode, path)
        buffer = self._buffers.get(node.ino) or self._new_buffer(node.ino, None, who)
        return self._open_write(node, buffer), self._attrs(node)

    @_fuse_errors
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        handle = self._handles[fh]
        if isinstance(handle, WriteHandle):
            return await handle.buffer.read(off, size)
        return await handle.window.read(off, size)

    @_fuse_errors
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        if not isinstance(handle, WriteHandle):
            raise pyfuse3.FUSEError(errno.EBADF)
        return await handle.buffer.write(off, buf)

    async def _commit(self, handle: WriteHandle) -> None:
        buffer, node = handle.buffer, handle.node
        if not buffer.dirty or buffer.unlinked:
            return
        path = self._path(node)
        started = time.monotonic()
        version = await buffer.commit(self.fs, path)
        log.info(
            "mount.committed",
            path=path,
            size=buffer.size,
            version=version,
            elapsed_s=round(time.monotonic() - started, 3),
        )
        now = await self.fs.stat(path)
        if now.ino == node.ino:
            self.nodes.rewritten(node, now)
            self._drop_pages(node.id)  # readers of the node before the write held old pages

    def _drop_pages(self, node_id: int) -> None:
        """Invalidate the kernel's pages and attributes of a node, after this request (a
        handler must not wait on the kernel for its own inode: pyfuse3's warning)."""

        async def drop() -> None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(pyfuse3.invalidate_inode, pyfuse3.InodeT(node_id))

        task = asyncio.get_running_loop().create_task(drop())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @_fuse_errors
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._handles.get(fh)
        if isinstance(handle, WriteHandle):
            await self._commit(handle)

    @_fuse_errors
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await self.flush(fh)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, ReadHandle):
            await handle.window.aclose()
            return
        if handle is None:
            return
        buffer = handle.buffer
        buffer.handles -= 1
        if buffer.handles > 0:
            return
        try:
            # The kernel flushed before this (and a failure was close()'s error); a buffer
            # still dirty here is one whose every flush failed: one last try, then it is
            # logged loudly (release has no caller to tell).
            await self._commit(handle)
        except Exception as exc:  # noqa: BLE001 (release has no caller to raise to)
            log.error(
                "mount.commit_lost",
                ino=buffer.ino,
                size=buffer.size,
                error=str(exc),
                kind=type(exc).__name__,
            )
        finally:
            if self._buffers.get(buffer.ino) is buffer:
                del self._buffers[buffer.ino]
            buffer.close()

    async def aclose(self) -> None:
        """Release every handle still open (the mount is going away)."""
        for fh in list(self._handles):
            await self.release(pyfuse3.FileHandleT(fh))
        for task in list(self._background):
            task.cancel()
