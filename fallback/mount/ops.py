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

Page cache: a file opened at a content the kernel already holds pages of keeps them
(`keep_cache`); a new content drops them. While handles on an older content are open, a new
open reads with `direct_io`, so the two never share pages (each handle reads its version).
"""

from __future__ import annotations

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
from fallback.mount.inodes import InodeTable
from fallback.mount.window import BlockWindow
from fallback.reader import Piece
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
    def __init__(self, ino: int, window: BlockWindow) -> None:
        self.ino = ino
        self.window = window

    @property
    def content(self) -> tuple[int, int, int]:
        return _content(self.window.file.inode)


class WriteHandle:
    def __init__(self, buffer: WriteBuffer) -> None:
        self.buffer = buffer
        self.ino = buffer.ino


def _content(inode: Inode) -> tuple[int, int, int]:
    """What identifies a file's bytes to the page cache: a write changes mtime or size."""
    return inode.ino, inode.mtime_ms, inode.size


class MountOperations(pyfuse3.Operations):
    def __init__(self, fs: FsClient, options: MountOptions) -> None:
        super().__init__()
        self.fs = fs
        self.options = options
        self.inodes = InodeTable()
        self._handles: dict[int, ReadHandle | WriteHandle] = {}
        self._next_fh = 1
        self._buffers: dict[int, WriteBuffer] = {}  # ino -> its buffer while open for writing
        self._listings: dict[int, tuple[str, list[tuple[str, Inode]]]] = {}
        self._cached: dict[int, tuple[int, int, int]] = {}  # ino -> content in the page cache

    # --- attributes and names ---

    def _attrs(self, inode: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(inode.ino)
        a.generation = 0
        a.entry_timeout = a.attr_timeout = self.options.attr_timeout_s
        a.st_mode = pyfuse3.ModeT(KIND_BITS[inode.kind] | inode.mode)
        a.st_nlink = inode.nlink
        a.st_uid, a.st_gid = inode.uid, inode.gid
        size = inode.size
        buffer = self._buffers.get(inode.ino)
        if buffer is not None and inode.is_file:
            size = buffer.size  # what the writer wrote so far, committed or not
        a.st_size = size
        a.st_blksize = IO_BLOCK_SIZE
        a.st_blocks = -(-size // 512)
        a.st_mtime_ns = inode.mtime_ms * 1_000_000
        a.st_ctime_ns = inode.ctime_ms * 1_000_000
        a.st_atime_ns = a.st_mtime_ns
        return a

    def _path(self, ino: int) -> str:
        path = self.inodes.path(ino)
        if not path:
            raise pyfuse3.FUSEError(errno.ENOENT)  # forgotten, or unlinked through the mount
        return path

    def _child(self, parent: int, raw: bytes) -> str:
        path = self.inodes.child(parent, _name(raw))
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        split_path(path)  # FsError(EINVAL/ENAMETOOLONG) for what the volume cannot name
        return path

    async def _stat(self, path: str) -> Inode:
        return await self.fs.stat(path)

    async def _resolve(self, ino: int) -> tuple[str, Inode]:
        """The path of `ino` and its attributes now; ENOENT when the path no longer holds it
        (renamed or replaced elsewhere: the kernel looks the name up again)."""
        path = self._path(ino)
        inode = await self._stat(path)
        if inode.ino != ino:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return path, inode

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
            parent = self._path(parent_inode).rsplit("/", 1)[0] or "/"
            inode = await self._stat(parent)
        else:
            path = self._child(parent_inode, name)
            inode = await self._stat(path)
            self.inodes.learn(inode.ino, path)
        return self._attrs(inode)

    async def forget(self, inode_list: Any) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @_fuse_errors
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            _, attrs = await self._resolve(inode)
        except (pyfuse3.FUSEError, FileNotFoundError):
            held = self._held_inode(inode)  # fstat on a handle of an unlinked file
            if held is None:
                raise
            attrs = held
        return self._attrs(attrs)

    def _held_inode(self, ino: int) -> Inode | None:
        for handle in self._handles.values():
            if isinstance(handle, ReadHandle) and handle.ino == ino:
                return handle.window.file.inode
        return None

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
        path = self._path(inode)
        who = self._who(ctx)
        if fields.update_size:
            buffer = self._buffers.get(inode)
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
        _, now = await self._resolve(inode)
        return self._attrs(now)

    @_fuse_errors
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        _, attrs = await self._resolve(inode)
        if attrs.kind != "symlink" or attrs.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(attrs.target)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # A bucket has no fixed size: report a large, mostly free one (as s3fs does).
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 2**40 // BLOCK_SIZE * 1024  # 1 EiB
        s.f_files = s.f_ffree = s.f_favail = 2**32
        s.f_namemax = NAME_MAX
        return s

    # --- directories ---

    @_fuse_errors
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        path, attrs = await self._resolve(inode)
        if not attrs.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
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
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(inode), i + 1):
                return
            # Taken: with readdirplus the kernel now holds an entry for it (one lookup more).
            self.inodes.learn(inode.ino, join_path(path, name))

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

    async def _learnt(self, path: str) -> pyfuse3.EntryAttributes:
        inode = await self._stat(path)
        self.inodes.learn(inode.ino, path)
        return self._attrs(inode)

    @_fuse_errors
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._writable()
        path = self._child(parent_inode, name)
        await self.fs.commit_op("rmdir", path=path, as_user=self._who(ctx))
        self.inodes.removed(path)

    @_fuse_errors
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._writable()
        path = self._child(parent_inode, name)
        await self.fs.commit_op("unlink", path=path, as_user=self._who(ctx))
        ino = self.inodes.removed(path)
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
        replaced = self.inodes.removed(dst)
        try:
            await self.fs.commit_op("rename", src=src, dst=dst, as_user=self._who(ctx))
        except BaseException:
            if replaced is not None:
                self.inodes.learn(replaced, dst)  # nothing moved; it is still there
                self.inodes.forget(replaced, 1)
            raise
        buffer = self._buffers.get(replaced) if replaced is not None else None
        if buffer is not None:
            buffer.unlinked = True  # replaced: its writes would land on the moved file
        self.inodes.moved(src, dst)

    # --- files ---

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _fetcher(self, file: FileVersion) -> Callable[[Piece], Coroutine[Any, Any, bytes]]:
        states = file.blocks
        blocks = self.fs.blocks

        def fetch(piece: Piece) -> Coroutine[Any, Any, bytes]:
            state = None if states is None else states.get((piece.slice_id or 0, piece.index))
            return blocks.get(piece, state)

        return fetch

    @_fuse_errors
    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        path = self._path(inode)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            return await self._open_read(inode, path)
        self._writable()
        buffer = self._buffers.get(inode)
        if buffer is None:
            file, _ = await self.fs.resolve(path)
            if file.inode.ino != inode:
                raise pyfuse3.FUSEError(errno.ENOENT)
            base = None if flags & os.O_TRUNC or file.inode.size == 0 else file
            buffer = self._new_buffer(inode, base, self._who(ctx))
        if flags & os.O_TRUNC:
            await buffer.truncate(0)
        return self._open_write(buffer)

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

    def _open_write(self, buffer: WriteBuffer) -> pyfuse3.FileInfo:
        buffer.handles += 1
        fh = self._new_fh()
        self._handles[fh] = WriteHandle(buffer)
        self._cached.pop(buffer.ino, None)  # its pages change under the writes
        # direct_io: the buffer is the truth while it is open, not pages of the committed file.
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), direct_io=True)

    async def _open_read(self, ino: int, path: str) -> pyfuse3.FileInfo:
        file, _ = await self.fs.resolve(path)
        if file.inode.ino != ino:
            raise pyfuse3.FUSEError(errno.ENOENT)  # replaced since the lookup: look again
        window = BlockWindow(file, self._fetcher(file), readahead=self.options.readahead_blocks)
        handle = ReadHandle(ino, window)
        fh = self._new_fh()
        content = handle.content
        others = {
            h.content for h in self._handles.values() if isinstance(h, ReadHandle) and h.ino == ino
        }
        self._handles[fh] = handle
        if ino in self._buffers or (others and others != {content}):
            return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), direct_io=True)
        keep = self._cached.get(ino) == content
        self._cached[ino] = content
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep)

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
        attrs = await self._learnt(path)
        buffer = self._buffers.get(attrs.st_ino) or self._new_buffer(attrs.st_ino, None, who)
        return self._open_write(buffer), attrs

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
        buffer = handle.buffer
        if not buffer.dirty or buffer.unlinked:
            return
        path = self._path(buffer.ino)
        started = time.monotonic()
        version = await buffer.commit(self.fs, path)
        log.info(
            "mount.committed",
            path=path,
            size=buffer.size,
            version=version,
            elapsed_s=round(time.monotonic() - started, 3),
        )

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
