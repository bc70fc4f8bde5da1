"""The net change a run of records makes to the replica tables, computed in memory first.

Applying record by record would cost a dozen round trips per record; instead `BatchChanges`
folds a whole batch into final row states (a file created and removed within the batch never
reaches SQL), which `mirror.applier` then writes with one statement per table and kind of change.
Handlers follow the replay order of changelog/effects.py step by step, so folding gives the
same final state as replaying each record.

Rows that existed before the batch ("pre-existing") and rows the batch created are kept apart:
the first are updated or deleted in SQL (with row counts checked), the second only inserted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from changelog.inode import KINDS
from changelog.records import TICK, Record
from changelog.state import MIRROR_OPS
from mirror.errors import MalformedRecordError, ReplicaDivergedError
from objstore.keys import BLOCK_SIZE, block_sizes

Effect = dict[str, Any]
InodeRow = tuple[int, str, int, int, int, int, int, int, int, str | None]
# ino, chunk_index, ord, slice_id, size, off, len, pos
RefRow = list[int]
DentryKey = tuple[int, str]

# Records that only move the watermark: source-side bookkeeping with no namespace effect.
WATERMARK_ONLY_OPS = frozenset({TICK, "alloc_slices", *MIRROR_OPS})


def inode_row(attr: dict[str, Any]) -> InodeRow:
    """The `inodes` row for an effect's attr dict; ValueError for an unknown kind."""
    kind = str(attr["kind"])
    if kind not in KINDS:
        raise ValueError(f"unknown inode kind {kind!r}")
    target = attr["target"]
    return (
        int(attr["ino"]),
        kind,
        int(attr["mode"]),
        int(attr["uid"]),
        int(attr["gid"]),
        int(attr["size"]),
        int(attr["mtime_ms"]),
        int(attr["ctime_ms"]),
        int(attr["nlink"]),
        None if target is None else str(target),
    )


def slice_blocks(slice_id: int, size: int, checksums: list[str]) -> list[tuple[int, int, int, str]]:
    """(slice_id, idx, size, checksum) of each block; ValueError unless one checksum per block."""
    sizes = block_sizes(size)
    if len(sizes) != len(checksums):
        raise ValueError(f"slice {slice_id}: {len(checksums)} checksums for {len(sizes)} blocks")
    return [(slice_id, i, n, str(c)) for i, (n, c) in enumerate(zip(sizes, checksums, strict=True))]


def _check_blocks(slice_id: int, size: int, checksums: list[Any]) -> None:
    if size < 0 or len(checksums) != -(-size // BLOCK_SIZE):
        raise ValueError(f"slice {slice_id} of {size} bytes has {len(checksums)} checksums")


class BatchChanges:
    """Final row states after a run of records; see the module docstring."""

    def __init__(self) -> None:
        self.inode_new: dict[int, InodeRow] = {}
        self.inode_set: dict[int, InodeRow] = {}
        self.inode_del: set[int] = set()
        self.dentry_new: dict[DentryKey, int] = {}
        self.dentry_del: set[DentryKey] = set()
        self.ref_new: dict[int, RefRow] = {}
        self._new_refs_of: dict[int, set[int]] = {}
        self.ref_len: dict[int, tuple[int, int, int]] = {}  # id -> (ino, chunk_index, len)
        self.ref_del: dict[int, tuple[int, int]] = {}  # id -> (ino, chunk_index)
        self.slice_new: dict[int, tuple[int, list[str]]] = {}
        self.slice_del: set[int] = set()
        self.gc: dict[tuple[int, int], tuple[int, int]] = {}  # (id, idx) -> (size, version)

    # -- record handlers --------------------------------------------------------------------

    def add(self, record: Record) -> None:
        """Fold one record in. Raises MalformedRecordError for an unknown op or a bad effect
        (this object is then unusable), ReplicaDivergedError for a row conflict it can see."""
        op = record.op
        if op in WATERMARK_ONLY_OPS:
            return
        handler = _HANDLERS.get(op)
        if handler is None:
            raise MalformedRecordError(
                f"record {record.version} has unknown op {op!r}", version=record.version, op=op
            )
        try:
            handler(self, record.effect, record.version)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedRecordError(
                f"record {record.version} ({op}) has a malformed effect: {exc!r}",
                version=record.version,
                op=op,
            ) from exc

    def _new(self, e: Effect, version: int) -> None:
        if e.get("existed"):
            return
        self._put(e["attr"], new=True)
        self._link(int(e["parent"]), str(e["name"]), int(e["attr"]["ino"]))
        self._put(e["parent_attr"])

    def _write(self, e: Effect, version: int) -> None:
        ino, index = int(e["ino"]), int(e["chunk_index"])
        ref = e["slice"]
        slice_id, size = int(ref["id"]), int(ref["size"])
        checksums = [str(c) for c in e["checksums"]]
        _check_blocks(slice_id, size, checksums)
        if slice_id in self.slice_new:
            raise ReplicaDivergedError(f"record {version} commits slice {slice_id} twice")
        self.slice_new[slice_id] = (size, checksums)
        row = [
            ino,
            index,
            version,
            slice_id,
            size,
            int(ref["off"]),
            int(ref["len"]),
            int(ref["pos"]),
        ]
        self.ref_new[slice_id] = row
        self._new_refs_of.setdefault(ino, set()).add(slice_id)
        self._edit_refs(ino, e["dropped"], [])
        self._free(e["freed"], version)
        self._put(e["attr"])

    def _resize(self, e: Effect, version: int) -> None:
        self._edit_refs(int(e["ino"]), e["dropped"], e["clipped"])
        self._free(e["freed"], version)
        self._put(e["attr"])

    def _unlink(self, e: Effect, version: int) -> None:
        ino = int(e["ino"])
        self._unlink_name(int(e["parent"]), str(e["name"]))
        self._put(e["parent_attr"])
        if e["attr"] is None:
            self._drop_inode(ino)
        else:
            self._put(e["attr"])
        self._free(e["freed"], version)

    def _rmdir(self, e: Effect, version: int) -> None:
        self._unlink_name(int(e["parent"]), str(e["name"]))
        self._drop_inode(int(e["ino"]))
        self._put(e["parent_attr"])

    def _rename(self, e: Effect, version: int) -> None:
        if e["noop"]:
            return
        dst = (int(e["dst_parent"]), str(e["dst_name"]))
        replaced = e["replaced"]
        if replaced is not None:
            self._unlink_name(*dst)
            if replaced["attr"] is None:
                self._drop_inode(int(replaced["ino"]))
            else:
                self._put(replaced["attr"])
        self._unlink_name(int(e["src_parent"]), str(e["src_name"]))
        self._link(*dst, int(e["ino"]))
        self._put(e["attr"])
        self._put(e["src_parent_attr"])
        self._put(e["dst_parent_attr"])
        self._free(e["freed"], version)

    # -- primitives -------------------------------------------------------------------------

    def _put(self, attr: dict[str, Any], *, new: bool = False) -> None:
        row = inode_row(attr)
        ino = row[0]
        if new:
            if ino in self.inode_new:
                raise ReplicaDivergedError(f"inode {ino} is created twice")
            self.inode_new[ino] = row
        elif ino in self.inode_new:
            self.inode_new[ino] = row
        else:
            self.inode_set[ino] = row

    def _drop_inode(self, ino: int) -> None:
        for slice_id in self._new_refs_of.pop(ino, ()):
            self.ref_new.pop(slice_id, None)
        if self.inode_new.pop(ino, None) is None:
            self.inode_set.pop(ino, None)
            self.inode_del.add(ino)

    def _link(self, parent: int, name: str, ino: int) -> None:
        key = (parent, name)
        if key in self.dentry_new:
            raise ReplicaDivergedError(f"entry {name!r} in directory {parent} is created twice")
        self.dentry_new[key] = ino

    def _unlink_name(self, parent: int, name: str) -> None:
        key = (parent, name)
        if self.dentry_new.pop(key, None) is not None:
            return
        if key in self.dentry_del:
            raise ReplicaDivergedError(f"entry {name!r} in directory {parent} is removed twice")
        self.dentry_del.add(key)

    def _edit_refs(self, ino: int, dropped: list[Any], clipped: list[Any]) -> None:
        for item in dropped:
            slice_id, index = int(item["id"]), int(item["chunk_index"])
            row = self.ref_new.get(slice_id)
            if row is not None:
                if row[0] == ino and row[1] == index:
                    del self.ref_new[slice_id]
                    self._new_refs_of[ino].discard(slice_id)
                continue
            self.ref_len.pop(slice_id, None)
            self.ref_del[slice_id] = (ino, index)
        for item in clipped:
            slice_id, index, length = int(item["id"]), int(item["chunk_index"]), int(item["len"])
            row = self.ref_new.get(slice_id)
            if row is not None:
                if row[0] == ino and row[1] == index:
                    row[6] = length
                continue
            self.ref_len[slice_id] = (ino, index, length)

    def _free(self, freed: list[Any], version: int) -> None:
        for item in freed:
            slice_id, size = int(item["id"]), int(item["size"])
            _check_blocks(slice_id, size, item["checksums"])
            gc = self.gc
            for idx, block_size in enumerate(block_sizes(size)):
                gc[(slice_id, idx)] = (block_size, version)
            if self.slice_new.pop(slice_id, None) is None:
                self.slice_del.add(slice_id)


_HANDLERS: dict[str, Callable[[BatchChanges, Effect, int], None]] = {
    "mkdir": BatchChanges._new,
    "create": BatchChanges._new,
    "symlink": BatchChanges._new,
    "write": BatchChanges._write,
    "truncate": BatchChanges._resize,
    "setattr": BatchChanges._resize,
    "unlink": BatchChanges._unlink,
    "rmdir": BatchChanges._rmdir,
    "rename": BatchChanges._rename,
}
