"""Path walks every op starts with: from the root to a target or its parent, checking search
permission in each directory on the way.

Symlinks are never followed: one in the middle of a path is not a directory (ENOTDIR), a final
one is the target itself.
"""

from __future__ import annotations

import errno

from changelog.namespace.permissions import W_OK, X_OK, require
from changelog.namespace.tables import Tables
from volume.checks import check_int
from volume.errors import FsError
from volume.inode import MAX_ID, ROOT_INO, Inode
from volume.paths import split_path


def walk(t: Tables, parts: list[str], uid: int, gid: int, path: str) -> list[int]:
    """Inos from the root along `parts`. Errors: ENOTDIR, EACCES, ENOENT."""
    cur = ROOT_INO
    chain = [cur]
    for name in parts:
        inode = t.inodes[cur]
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR, "a path component is not a directory", path=path)
        require(inode, uid, gid, X_OK, path)
        child = t.entries[cur].get(name)
        if child is None:
            raise FsError(errno.ENOENT, "no such file or directory", path=path)
        chain.append(child)
        cur = child
    return chain


def target(t: Tables, path: str, uid: int, gid: int) -> Inode:
    """The inode at `path`; also EINVAL/ENAMETOOLONG for a bad path."""
    return t.inodes[walk(t, split_path(path), uid, gid, path)[-1]]


def parent_of(
    t: Tables, path: str, uid: int, gid: int, *, root_errno: int
) -> tuple[list[int], str]:
    """(inos from the root to the parent directory, final name), with x on the parent
    checked too. The root itself has no parent: FsError(root_errno)."""
    parts = split_path(path)
    if not parts:
        raise FsError(root_errno, "not allowed on the root", path=path)
    chain = walk(t, parts[:-1], uid, gid, path)
    parent = t.inodes[chain[-1]]
    if not parent.is_dir:
        raise FsError(errno.ENOTDIR, "a path component is not a directory", path=path)
    require(parent, uid, gid, X_OK, path)
    return chain, parts[-1]


def writable_file(t: Tables, path: str, uid: int, gid: int) -> Inode:
    """A regular file the caller may write. Errors: EISDIR, EINVAL (not a file), EACCES..."""
    inode = target(t, path, uid, gid)
    if inode.is_dir:
        raise FsError(errno.EISDIR, "is a directory", path=path)
    if not inode.is_file:
        raise FsError(errno.EINVAL, "not a regular file", path=path)
    require(inode, uid, gid, W_OK, path)
    return inode


def check_caller(ts: int, uid: int, gid: int) -> None:
    """EINVAL unless the op's time and the caller's ids are in range."""
    check_int(ts, "ts", 0, 2**63 - 1)
    check_int(uid, "uid", 0, MAX_ID)
    check_int(gid, "gid", 0, MAX_ID)
