"""Planning of the ops that add, remove and move directory entries: mkdir, create, symlink,
unlink, rmdir, rename.

Each function validates everything and computes the complete effect without touching the
tables, then replays it (volume/effects.py has the shapes). A raised FsError therefore always
means nothing changed.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import Any

from changelog.namespace.lookup import check_caller, parent_of
from changelog.namespace.permissions import W_OK, X_OK, require, sticky_allows
from changelog.namespace.tables import Tables
from volume.checks import check_int
from volume.effects import Effect
from volume.errors import FsError
from volume.inode import MAX_SYMLINK_BYTES, Inode


def _new_entry(
    t: Tables,
    op: str,
    path: str,
    kind: str,
    mode: int,
    target: str | None,
    *,
    ts: int,
    uid: int,
    gid: int,
    exclusive: bool = True,
) -> Effect:
    check_caller(ts, uid, gid)
    check_int(mode, "mode", 0, 0o7777, path=path)
    chain, name = parent_of(t, path, uid, gid, root_errno=errno.EEXIST)
    parent = t.inodes[chain[-1]]
    existing = t.entries[parent.ino].get(name)
    if existing is not None:
        current = t.inodes[existing]
        if exclusive or not current.is_file:
            err = errno.EISDIR if not exclusive and current.is_dir else errno.EEXIST
            raise FsError(err, "already exists", path=path)
        return {
            "ino": existing,
            "parent": parent.ino,
            "name": name,
            "attr": current.to_dict(),
            "parent_attr": parent.to_dict(),
            "existed": True,
        }
    require(parent, uid, gid, W_OK | X_OK, path)
    ino = t.next_ino
    size = 0 if target is None else len(target.encode("utf-8"))
    nlink = 2 if kind == "dir" else 1
    attr = Inode(ino, kind, mode, uid, gid, size, ts, ts, nlink, target)
    extra = 1 if kind == "dir" else 0
    parent_attr = replace(parent, mtime_ms=ts, ctime_ms=ts, nlink=parent.nlink + extra)
    effect: Effect = {
        "ino": ino,
        "parent": parent.ino,
        "name": name,
        "attr": attr.to_dict(),
        "parent_attr": parent_attr.to_dict(),
    }
    if op == "create":
        effect["existed"] = False
    t.replay(op, effect)
    return effect


def mkdir(t: Tables, path: str, mode: int, *, ts: int, uid: int, gid: int) -> Effect:
    """Make a directory owned by the caller. Errors: EEXIST, ENOENT, ENOTDIR, EACCES,
    EINVAL/ENAMETOOLONG (bad name or mode)."""
    return _new_entry(t, "mkdir", path, "dir", mode, None, ts=ts, uid=uid, gid=gid)


def create(
    t: Tables, path: str, mode: int, exclusive: bool = True, *, ts: int, uid: int, gid: int
) -> Effect:
    """Make an empty regular file. With exclusive=False an existing file is not an error:
    the effect carries existed=true and its current attrs, and nothing changes (an existing
    directory is EISDIR, a symlink EEXIST: it is not followed)."""
    return _new_entry(
        t, "create", path, "file", mode, None, ts=ts, uid=uid, gid=gid, exclusive=exclusive
    )


def symlink(t: Tables, path: str, target: str, *, ts: int, uid: int, gid: int) -> Effect:
    """Make a symlink (mode 0o777) holding `target` verbatim; the target is not checked to
    exist. Errors: as mkdir, plus EINVAL for an empty target or NUL, ENAMETOOLONG > 4096."""
    if not isinstance(target, str) or not target or "\0" in target:
        raise FsError(errno.EINVAL, "symlink target must be a non-empty str without NUL")
    try:
        encoded = target.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FsError(errno.EINVAL, "symlink target is not valid UTF-8", path=path) from exc
    if len(encoded) > MAX_SYMLINK_BYTES:
        raise FsError(errno.ENAMETOOLONG, "symlink target too long", path=path)
    return _new_entry(t, "symlink", path, "symlink", 0o777, target, ts=ts, uid=uid, gid=gid)


def _removable(
    t: Tables, path: str, uid: int, gid: int, root_errno: int
) -> tuple[Inode, str, Inode]:
    """(parent, name, child) for removing the entry at `path`, permission checked."""
    chain, name = parent_of(t, path, uid, gid, root_errno=root_errno)
    parent = t.inodes[chain[-1]]
    child_ino = t.entries[parent.ino].get(name)
    if child_ino is None:
        raise FsError(errno.ENOENT, "no such file or directory", path=path)
    child = t.inodes[child_ino]
    require(parent, uid, gid, W_OK | X_OK, path)
    if not sticky_allows(parent, child, uid):
        raise FsError(errno.EPERM, "sticky directory: not the owner", path=path)
    return parent, name, child


def _gone_file(t: Tables, inode: Inode, ts: int) -> tuple[dict[str, Any] | None, list[Any]]:
    """(attr after losing one link or None when the inode goes, freed slices)."""
    if inode.is_dir:
        return None, []
    if inode.nlink > 1:
        return replace(inode, nlink=inode.nlink - 1, ctime_ms=ts).to_dict(), []
    gone = [ref for _, refs in t.chunks.of_file(inode.ino) for ref in refs]
    return None, t.freed(gone)


def unlink(t: Tables, path: str, *, ts: int, uid: int, gid: int) -> Effect:
    """Remove a file or symlink entry; the inode and its slices go with its last link.
    Errors: ENOENT, EISDIR (a directory, or the root), ENOTDIR, EACCES, EPERM (sticky)."""
    check_caller(ts, uid, gid)
    parent, name, child = _removable(t, path, uid, gid, errno.EISDIR)
    if child.is_dir:
        raise FsError(errno.EISDIR, "is a directory", path=path)
    attr, freed = _gone_file(t, child, ts)
    effect: Effect = {
        "ino": child.ino,
        "parent": parent.ino,
        "name": name,
        "parent_attr": replace(parent, mtime_ms=ts, ctime_ms=ts).to_dict(),
        "attr": attr,
        "freed": freed,
    }
    t.replay("unlink", effect)
    return effect


def rmdir(t: Tables, path: str, *, ts: int, uid: int, gid: int) -> Effect:
    """Remove an empty directory. Errors: ENOENT, ENOTDIR, ENOTEMPTY, EBUSY (the root),
    EACCES, EPERM (sticky)."""
    check_caller(ts, uid, gid)
    parent, name, child = _removable(t, path, uid, gid, errno.EBUSY)
    if not child.is_dir:
        raise FsError(errno.ENOTDIR, "not a directory", path=path)
    if t.entries[child.ino]:
        raise FsError(errno.ENOTEMPTY, "directory not empty", path=path)
    parent_attr = replace(parent, mtime_ms=ts, ctime_ms=ts, nlink=parent.nlink - 1)
    effect: Effect = {
        "ino": child.ino,
        "parent": parent.ino,
        "name": name,
        "parent_attr": parent_attr.to_dict(),
    }
    t.replay("rmdir", effect)
    return effect


def rename(t: Tables, src: str, dst: str, *, ts: int, uid: int, gid: int) -> Effect:
    """Move the entry at `src` to `dst`, replacing what is there like rename(2).

    A file or symlink replaces a file or symlink; a directory replaces an empty directory
    (ENOTEMPTY otherwise); file over directory EISDIR, directory over file ENOTDIR; a
    directory into its own subtree EINVAL; the root EBUSY; same entry: success, no change.
    Moving a directory to another parent needs w on it (its ".." changes).
    """
    check_caller(ts, uid, gid)
    s_chain, s_name = parent_of(t, src, uid, gid, root_errno=errno.EBUSY)
    d_chain, d_name = parent_of(t, dst, uid, gid, root_errno=errno.EBUSY)
    s_parent, d_parent = t.inodes[s_chain[-1]], t.inodes[d_chain[-1]]
    s_ino = t.entries[s_parent.ino].get(s_name)
    if s_ino is None:
        raise FsError(errno.ENOENT, "no such file or directory", path=src)
    moved = t.inodes[s_ino]
    d_ino = t.entries[d_parent.ino].get(d_name)
    effect: Effect = {
        "noop": d_ino == s_ino,
        "ino": s_ino,
        "src_parent": s_parent.ino,
        "src_name": s_name,
        "dst_parent": d_parent.ino,
        "dst_name": d_name,
    }
    if d_ino == s_ino:
        effect.update(
            attr=moved.to_dict(),
            src_parent_attr=s_parent.to_dict(),
            dst_parent_attr=d_parent.to_dict(),
            replaced=None,
            freed=[],
        )
        return effect
    require(s_parent, uid, gid, W_OK | X_OK, src)
    require(d_parent, uid, gid, W_OK | X_OK, dst)
    if not sticky_allows(s_parent, moved, uid):
        raise FsError(errno.EPERM, "sticky directory: not the owner", path=src)
    if moved.is_dir and s_ino in d_chain:
        raise FsError(errno.EINVAL, "cannot move a directory into itself", path=dst)
    if moved.is_dir and s_parent.ino != d_parent.ino:
        require(moved, uid, gid, W_OK, src)
    nlink = {s_parent.ino: 0, d_parent.ino: 0}
    if moved.is_dir:
        nlink[s_parent.ino] -= 1
        nlink[d_parent.ino] += 1
    replaced: dict[str, Any] | None = None
    freed: list[Any] = []
    if d_ino is not None:
        victim = t.inodes[d_ino]
        if not sticky_allows(d_parent, victim, uid):
            raise FsError(errno.EPERM, "sticky directory: not the owner", path=dst)
        if moved.is_dir and not victim.is_dir:
            raise FsError(
                errno.ENOTDIR, "cannot replace a non-directory with a directory", path=dst
            )
        if not moved.is_dir and victim.is_dir:
            raise FsError(errno.EISDIR, "cannot replace a directory with a file", path=dst)
        if victim.is_dir and t.entries[d_ino]:
            raise FsError(errno.ENOTEMPTY, "directory not empty", path=dst)
        if victim.is_dir:
            nlink[d_parent.ino] -= 1
        victim_attr, freed = _gone_file(t, victim, ts)
        replaced = {"ino": d_ino, "kind": victim.kind, "attr": victim_attr}
    s_attr = replace(s_parent, mtime_ms=ts, ctime_ms=ts, nlink=s_parent.nlink + nlink[s_parent.ino])
    d_attr = replace(d_parent, mtime_ms=ts, ctime_ms=ts, nlink=d_parent.nlink + nlink[d_parent.ino])
    effect.update(
        attr=replace(moved, ctime_ms=ts).to_dict(),
        src_parent_attr=s_attr.to_dict(),
        dst_parent_attr=d_attr.to_dict(),
        replaced=replaced,
        freed=freed,
    )
    t.replay("rename", effect)
    return effect
