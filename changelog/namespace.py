"""The source region's metadata model: a deterministic namespace with POSIX-style rules.

One `Namespace` runs inside the Raft state machine on every node. Determinism is the whole
contract: the same ops in the same order with the same `ts` give the same state and the same
effects on every node (no clock, no randomness, no output that depends on set order). Each
successful mutation returns its effect (documented in changelog/effects.py, with the snapshot
row format in changelog/nsdump.py); a failed one raises FsError and changes nothing.

Layers: NamespaceState (tables + replay, effects.py) < NamespaceDump (dump/snapshot, nsdump.py)
< FileOps (write/truncate/setattr/alloc_slices, fileops.py) < Namespace (entries, reads, apply).

Conventions: paths are absolute, not normalised, and symlinks are never followed (see
changelog/paths.py); `ts` is the source clock in ms and becomes mtime/ctime; `uid`/`gid` are the
caller's, uid 0 passes every permission check. Searching a directory needs x; adding or
removing an entry needs w+x on its directory (and, in a sticky directory, owning the entry or
the directory); writing or truncating a file needs w on it; readdir needs r.
"""

from __future__ import annotations

import errno
from bisect import bisect_right
from dataclasses import replace
from typing import Any

from changelog.effects import Effect
from changelog.errors import FsError
from changelog.fileops import FileOps, check_caller, check_int
from changelog.inode import MAX_SYMLINK_BYTES, Inode, SliceInfo, SliceRef
from changelog.paths import R_OK, W_OK, X_OK, require, split_path, sticky_allows

# op -> {arg: (type, required)}; every op also requires "uid" and "gid" (the caller).
_ARGS: dict[str, dict[str, tuple[str, bool]]] = {
    "mkdir": {"path": ("str", True), "mode": ("int", True)},
    "create": {"path": ("str", True), "mode": ("int", True), "exclusive": ("bool", False)},
    "symlink": {"path": ("str", True), "target": ("str", True)},
    "write": {
        "path": ("str", True),
        "chunk_index": ("int", True),
        "pos": ("int", True),
        "slice_id": ("int", True),
        "size": ("int", True),
        "checksums": ("strs", True),
    },
    "truncate": {"path": ("str", True), "size": ("int", True)},
    "rename": {"src": ("str", True), "dst": ("str", True)},
    "unlink": {"path": ("str", True)},
    "rmdir": {"path": ("str", True)},
    "setattr": {
        "path": ("str", True),
        "mode": ("int?", False),
        "owner_uid": ("int?", False),
        "owner_gid": ("int?", False),
        "mtime_ms": ("int?", False),
        "size": ("int?", False),
    },
    "alloc_slices": {"count": ("int", True)},
}
OPS = tuple(_ARGS)


def _type_ok(value: object, kind: str) -> bool:
    if kind == "int?" and value is None:
        return True
    if kind in ("int", "int?"):
        return type(value) is int
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


class Namespace(FileOps):
    """Directories, files and symlinks with their slices; see the module docstring."""

    def apply(self, op: str, args: dict[str, Any], ts: int) -> Effect:
        """Run mutation `op` with request `args` (plus "uid"/"gid" of the caller) at time `ts`.

        Returns the effect. Raises only FsError: EINVAL for an unknown op, a missing or unknown
        key or a value of the wrong type, and whatever the op itself raises. Nothing changes
        when it raises.
        """
        spec = _ARGS.get(op) if isinstance(op, str) else None
        if spec is None:
            raise FsError(errno.EINVAL, f"unknown op {op!r}")
        if not isinstance(args, dict):
            raise FsError(errno.EINVAL, f"{op}: args must be a map")
        full = {**spec, "uid": ("int", True), "gid": ("int", True)}
        for key, value in args.items():
            if key not in full:
                raise FsError(errno.EINVAL, f"{op}: unknown argument {key!r}")
            if not _type_ok(value, full[key][0]):
                raise FsError(errno.EINVAL, f"{op}: {key} must be {full[key][0]}")
        missing = [key for key, (_, required) in full.items() if required and key not in args]
        if missing:
            raise FsError(errno.EINVAL, f"{op}: missing {', '.join(missing)}")
        if type(ts) is not int:
            raise FsError(errno.EINVAL, "ts must be an int")
        method = getattr(self, op)
        effect: Effect = method(**args, ts=ts)
        return effect

    # -- reads --------------------------------------------------------------------------------

    def lookup(self, path: str, uid: int, gid: int) -> Inode:
        """The inode at `path` (the symlink itself if it is one), checking search permission.

        Errors: ENOENT, ENOTDIR, EACCES, EINVAL/ENAMETOOLONG for a bad path.
        """
        return self._target(path, uid, gid)

    def resolve(self, path: str) -> Inode:
        """The inode at `path` without permission checks; no symlink is followed (a symlink in
        the middle of the path is ENOTDIR, a final one is returned as itself)."""
        return self._target(path, 0, 0)

    def getattr(self, ino: int) -> Inode:
        """Attributes by inode number; ENOENT if there is no such inode."""
        inode = self.inodes.get(ino) if type(ino) is int else None
        if inode is None:
            raise FsError(errno.ENOENT, f"no inode {ino!r}")
        return inode

    def readdir(
        self, path: str, uid: int, gid: int, after: str = "", limit: int = 1000
    ) -> list[tuple[str, Inode]]:
        """Up to `limit` entries with names sorted after `after`, in code point (= UTF-8 byte)
        order; page on by passing the last name returned. No "." or "..".

        Errors: ENOTDIR, EACCES (needs r on the directory), ENOENT, EINVAL (limit < 1).
        """
        check_int(limit, "limit", 1, 2**31)
        if not isinstance(after, str):
            raise FsError(errno.EINVAL, "after must be a name (str)", path=path)
        inode = self._target(path, uid, gid)
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory", path=path)
        require(inode, uid, gid, R_OK, path)
        names = self._sorted_names.get(inode.ino)
        entries = self.entries[inode.ino]
        if names is None:
            names = self._sorted_names[inode.ino] = sorted(entries)
        start = bisect_right(names, after) if after else 0
        return [(name, self.inodes[entries[name]]) for name in names[start : start + limit]]

    def chunk_slices(self, ino: int, chunk_index: int) -> list[SliceRef]:
        """The refs of one chunk in write order (newer later); [] for an unwritten chunk."""
        self.getattr(ino)
        return list(self.chunks.get(ino, chunk_index))

    def slice_info(self, slice_id: int) -> SliceInfo:
        """Size and block checksums of a live slice; ENOENT once it is freed."""
        info = self.slices.get(slice_id)
        if info is None:
            raise FsError(errno.ENOENT, f"no live slice {slice_id}")
        return info

    # -- entry ops ----------------------------------------------------------------------------

    def _parent(self, path: str, uid: int, gid: int, *, root_errno: int) -> tuple[list[int], str]:
        """(inos from the root to the parent directory, final name), with x on the parent
        checked too. The root itself has no parent: FsError(root_errno)."""
        parts = split_path(path)
        if not parts:
            raise FsError(root_errno, "not allowed on the root", path=path)
        chain = self._walk(parts[:-1], uid, gid, path)
        parent = self.inodes[chain[-1]]
        if not parent.is_dir:
            raise FsError(errno.ENOTDIR, "a path component is not a directory", path=path)
        require(parent, uid, gid, X_OK, path)
        return chain, parts[-1]

    def _new_entry(
        self,
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
        chain, name = self._parent(path, uid, gid, root_errno=errno.EEXIST)
        parent = self.inodes[chain[-1]]
        existing = self.entries[parent.ino].get(name)
        if existing is not None:
            current = self.inodes[existing]
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
        ino = self.next_ino
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
        self.replay(op, effect)
        return effect

    def mkdir(self, path: str, mode: int, *, ts: int, uid: int, gid: int) -> Effect:
        """Make a directory owned by the caller. Errors: EEXIST, ENOENT, ENOTDIR, EACCES,
        EINVAL/ENAMETOOLONG (bad name or mode)."""
        return self._new_entry("mkdir", path, "dir", mode, None, ts=ts, uid=uid, gid=gid)

    def create(
        self, path: str, mode: int, exclusive: bool = True, *, ts: int, uid: int, gid: int
    ) -> Effect:
        """Make an empty regular file. With exclusive=False an existing file is not an error:
        the effect carries existed=true and its current attrs, and nothing changes (an existing
        directory is EISDIR, a symlink EEXIST: it is not followed)."""
        return self._new_entry(
            "create", path, "file", mode, None, ts=ts, uid=uid, gid=gid, exclusive=exclusive
        )

    def symlink(self, path: str, target: str, *, ts: int, uid: int, gid: int) -> Effect:
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
        return self._new_entry("symlink", path, "symlink", 0o777, target, ts=ts, uid=uid, gid=gid)

    def _removable(
        self, path: str, uid: int, gid: int, root_errno: int
    ) -> tuple[Inode, str, Inode]:
        """(parent, name, child) for removing the entry at `path`, permission checked."""
        chain, name = self._parent(path, uid, gid, root_errno=root_errno)
        parent = self.inodes[chain[-1]]
        child_ino = self.entries[parent.ino].get(name)
        if child_ino is None:
            raise FsError(errno.ENOENT, "no such file or directory", path=path)
        child = self.inodes[child_ino]
        require(parent, uid, gid, W_OK | X_OK, path)
        if not sticky_allows(parent, child, uid):
            raise FsError(errno.EPERM, "sticky directory: not the owner", path=path)
        return parent, name, child

    def _gone_file(self, inode: Inode, ts: int) -> tuple[dict[str, Any] | None, list[Any]]:
        """(attr after losing one link or None when the inode goes, freed slices)."""
        if inode.is_dir:
            return None, []
        if inode.nlink > 1:
            return replace(inode, nlink=inode.nlink - 1, ctime_ms=ts).to_dict(), []
        gone = [ref for _, refs in self.chunks.of_file(inode.ino) for ref in refs]
        return None, self._freed(gone)

    def unlink(self, path: str, *, ts: int, uid: int, gid: int) -> Effect:
        """Remove a file or symlink entry; the inode and its slices go with its last link.
        Errors: ENOENT, EISDIR (a directory, or the root), ENOTDIR, EACCES, EPERM (sticky)."""
        check_caller(ts, uid, gid)
        parent, name, child = self._removable(path, uid, gid, errno.EISDIR)
        if child.is_dir:
            raise FsError(errno.EISDIR, "is a directory", path=path)
        attr, freed = self._gone_file(child, ts)
        effect: Effect = {
            "ino": child.ino,
            "parent": parent.ino,
            "name": name,
            "parent_attr": replace(parent, mtime_ms=ts, ctime_ms=ts).to_dict(),
            "attr": attr,
            "freed": freed,
        }
        self.replay("unlink", effect)
        return effect

    def rmdir(self, path: str, *, ts: int, uid: int, gid: int) -> Effect:
        """Remove an empty directory. Errors: ENOENT, ENOTDIR, ENOTEMPTY, EBUSY (the root),
        EACCES, EPERM (sticky)."""
        check_caller(ts, uid, gid)
        parent, name, child = self._removable(path, uid, gid, errno.EBUSY)
        if not child.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory", path=path)
        if self.entries[child.ino]:
            raise FsError(errno.ENOTEMPTY, "directory not empty", path=path)
        parent_attr = replace(parent, mtime_ms=ts, ctime_ms=ts, nlink=parent.nlink - 1)
        effect: Effect = {
            "ino": child.ino,
            "parent": parent.ino,
            "name": name,
            "parent_attr": parent_attr.to_dict(),
        }
        self.replay("rmdir", effect)
        return effect

    def rename(self, src: str, dst: str, *, ts: int, uid: int, gid: int) -> Effect:
        """Move the entry at `src` to `dst`, replacing what is there like rename(2).

        A file or symlink replaces a file or symlink; a directory replaces an empty directory
        (ENOTEMPTY otherwise); file over directory EISDIR, directory over file ENOTDIR; a
        directory into its own subtree EINVAL; the root EBUSY; same entry: success, no change.
        Moving a directory to another parent needs w on it (its ".." changes).
        """
        check_caller(ts, uid, gid)
        s_chain, s_name = self._parent(src, uid, gid, root_errno=errno.EBUSY)
        d_chain, d_name = self._parent(dst, uid, gid, root_errno=errno.EBUSY)
        s_parent, d_parent = self.inodes[s_chain[-1]], self.inodes[d_chain[-1]]
        s_ino = self.entries[s_parent.ino].get(s_name)
        if s_ino is None:
            raise FsError(errno.ENOENT, "no such file or directory", path=src)
        moved = self.inodes[s_ino]
        d_ino = self.entries[d_parent.ino].get(d_name)
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
            victim = self.inodes[d_ino]
            if not sticky_allows(d_parent, victim, uid):
                raise FsError(errno.EPERM, "sticky directory: not the owner", path=dst)
            if moved.is_dir and not victim.is_dir:
                raise FsError(
                    errno.ENOTDIR, "cannot replace a non-directory with a directory", path=dst
                )
            if not moved.is_dir and victim.is_dir:
                raise FsError(errno.EISDIR, "cannot replace a directory with a file", path=dst)
            if victim.is_dir and self.entries[d_ino]:
                raise FsError(errno.ENOTEMPTY, "directory not empty", path=dst)
            if victim.is_dir:
                nlink[d_parent.ino] -= 1
            victim_attr, freed = self._gone_file(victim, ts)
            replaced = {"ino": d_ino, "kind": victim.kind, "attr": victim_attr}
        s_attr = replace(
            s_parent, mtime_ms=ts, ctime_ms=ts, nlink=s_parent.nlink + nlink[s_parent.ino]
        )
        d_attr = replace(
            d_parent, mtime_ms=ts, ctime_ms=ts, nlink=d_parent.nlink + nlink[d_parent.ino]
        )
        effect.update(
            attr=replace(moved, ctime_ms=ts).to_dict(),
            src_parent_attr=s_attr.to_dict(),
            dst_parent_attr=d_attr.to_dict(),
            replaced=replaced,
            freed=freed,
        )
        self.replay("rename", effect)
        return effect
