"""The source region's metadata model: a deterministic namespace with POSIX-style rules.

One `Namespace` runs inside the Raft state machine on every node. Determinism is the whole
contract: the same ops in the same order with the same `ts` give the same state and the same
effects on every node (no clock, no randomness, no output that depends on set order). Each
successful mutation returns its effect (the contract is volume/effects.py, the snapshot row
format volume/snapshot.py); a failed one raises FsError and changes nothing.

Parts, composed rather than inherited: `Tables` (the data, and the effect sink every mutation
replays into), the planners of entry ops (entries.py) and file ops (fileops.py) as functions
over the tables, path walks (lookup.py), permission bits (permissions.py), whole-namespace
dumps (dump.py). `Namespace` is the face: request validation, dispatch, and reads.

Requests are transactions: `with ns.transaction():` around a request's ops makes them commit
all or nothing (each op still plans on what the ops before it did; see tables.py).

Conventions: paths are absolute, not normalised, and symlinks are never followed (see
volume/paths.py); `ts` is the source clock in ms and becomes mtime/ctime; `uid`/`gid` are the
caller's, uid 0 passes every permission check. Searching a directory needs x; adding or
removing an entry needs w+x on its directory (and, in a sticky directory, owning the entry or
the directory); writing or truncating a file needs w on it; readdir needs r.
"""

from __future__ import annotations

import contextlib
import errno
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

from changelog.namespace import dump, entries, fileops
from changelog.namespace.lookup import target
from changelog.namespace.permissions import R_OK, require
from changelog.namespace.tables import Tables
from volume.checks import check_int
from volume.effects import Effect
from volume.errors import FsError
from volume.inode import Inode, SliceInfo, SliceRef

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
    "expire_slices": {"before_ts": ("int", True), "forget": ("ranges", False)},
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
    if kind == "ranges":
        return isinstance(value, list | tuple) and all(
            isinstance(r, list | tuple) and all(type(i) is int for i in r) for r in value
        )
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


class Namespace:
    """Directories, files and symlinks with their slices; see the module docstring."""

    def __init__(self, tables: Tables | None = None) -> None:
        self.tables = tables if tables is not None else Tables()

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
        effect: Effect = _PLANNERS[op](self.tables, **args, ts=ts)
        return effect

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Ops applied inside commit together, or, if anything raises out of the block, are
        all undone exactly (tables, caches and counters) before the exception propagates.
        RuntimeError if a transaction is already open."""
        self.tables.begin()
        try:
            yield
        except BaseException:
            self.tables.rollback()
            raise
        self.tables.commit()

    def replay(self, op: str, effect: Effect) -> None:
        """Apply a record's effect (what a replica does); see `Tables.replay`."""
        self.tables.replay(op, effect)

    # -- reads --------------------------------------------------------------------------------

    def lookup(self, path: str, uid: int, gid: int) -> Inode:
        """The inode at `path` (the symlink itself if it is one), checking search permission.

        Errors: ENOENT, ENOTDIR, EACCES, EINVAL/ENAMETOOLONG for a bad path.
        """
        return target(self.tables, path, uid, gid)

    def resolve(self, path: str) -> Inode:
        """The inode at `path` without permission checks; no symlink is followed (a symlink in
        the middle of the path is ENOTDIR, a final one is returned as itself)."""
        return target(self.tables, path, 0, 0)

    def getattr(self, ino: int) -> Inode:
        """Attributes by inode number; ENOENT if there is no such inode."""
        inode = self.tables.inodes.get(ino) if type(ino) is int else None
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
        t = self.tables
        inode = target(t, path, uid, gid)
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory", path=path)
        require(inode, uid, gid, R_OK, path)
        names = t.sorted_names.get(inode.ino)
        children = t.entries[inode.ino]
        if names is None:
            names = t.sorted_names[inode.ino] = sorted(children)
        start = bisect_right(names, after) if after else 0
        return [(name, t.inodes[children[name]]) for name in names[start : start + limit]]

    def chunk_slices(self, ino: int, chunk_index: int) -> list[SliceRef]:
        """The refs of one chunk in write order (newer later); [] for an unwritten chunk."""
        self.getattr(ino)
        return list(self.tables.chunks.get(ino, chunk_index))

    def slice_info(self, slice_id: int) -> SliceInfo:
        """Size and block checksums of a live slice; ENOENT once it is freed."""
        info = self.tables.slices.get(slice_id)
        if info is None:
            raise FsError(errno.ENOENT, f"no live slice {slice_id}")
        return info

    # -- whole-namespace views (dump.py) -----------------------------------------------------

    def dump_tree(self) -> dict[str, dict[str, Any]]:
        """Canonical content keyed by path, for equality checks (see dump.dump_tree)."""
        return dump.dump_tree(self.tables)

    def iter_snapshot(self) -> Iterator[dict[str, Any]]:
        """The snapshot rows of volume/snapshot.py, in order."""
        return dump.iter_snapshot(self.tables)

    @classmethod
    def from_snapshot(cls, rows: Iterable[dict[str, Any]]) -> Self:
        """Rebuild a namespace from snapshot rows; FsError(EINVAL) for a bad stream."""
        return cls(dump.tables_from_snapshot(rows))


_PLANNERS: dict[str, Callable[..., Effect]] = {
    "mkdir": entries.mkdir,
    "create": entries.create,
    "symlink": entries.symlink,
    "unlink": entries.unlink,
    "rmdir": entries.rmdir,
    "rename": entries.rename,
    "write": fileops.write,
    "truncate": fileops.truncate,
    "setattr": fileops.setattr,
    "alloc_slices": fileops.alloc_slices,
    "expire_slices": fileops.expire_slices,
}
assert _PLANNERS.keys() == _ARGS.keys(), "every op has a planner and an argument spec"
