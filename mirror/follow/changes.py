"""The net change a run of records makes to the replica tables, computed in memory first.

Applying record by record would cost a dozen round trips per record; instead `BatchChanges`
folds a whole batch into final row states (a file created and removed within the batch never
reaches SQL), which the applier then writes with one statement per table and kind of change.
`BatchChanges` is the mirror's `EffectSink`: the effect table (volume/effects.py) drives it
through the same steps, in the same order, as the source's own tables, so folding gives the
same final state as replaying each record.

Rows that existed before the batch ("pre-existing") and rows the batch created are kept apart:
the first are updated or deleted in SQL (with row counts checked), the second only inserted.
"""

from __future__ import annotations

from typing import Any

from mirror.errors import MalformedRecordError, ReplicaDivergedError
from objstore.keys import BLOCK_SIZE, block_sizes
from volume.effects import MalformedEffectError, apply_effect
from volume.inode import KINDS
from volume.records import Record

InodeRow = tuple[int, str, int, int, int, int, int, int, int, str | None]
# ino, chunk_index, ord, slice_id, size, off, len, pos
RefRow = list[int]
DentryKey = tuple[int, str]


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

    # -- folding records -------------------------------------------------------------------

    def add(self, record: Record) -> None:
        """Fold one record in. Raises MalformedRecordError for an unknown op or a bad effect
        (this object is then unusable), ReplicaDivergedError for a row conflict it can see."""
        try:
            apply_effect(self, record.op, record.effect, record.version)
        except MalformedEffectError as exc:
            raise MalformedRecordError(
                f"record {record.version}: {exc.message}", version=record.version, op=record.op
            ) from exc

    # -- EffectSink ------------------------------------------------------------------------

    def add_slice(
        self, ino: int, chunk_index: int, ref: dict[str, Any], checksums: list[str], version: int
    ) -> None:
        slice_id, size = int(ref["id"]), int(ref["size"])
        _check_blocks(slice_id, size, checksums)
        if slice_id in self.slice_new:
            raise ReplicaDivergedError(f"record {version} commits slice {slice_id} twice")
        self.slice_new[slice_id] = (size, checksums)
        row = [
            ino,
            chunk_index,
            version,
            slice_id,
            size,
            int(ref["off"]),
            int(ref["len"]),
            int(ref["pos"]),
        ]
        self.ref_new[slice_id] = row
        self._new_refs_of.setdefault(ino, set()).add(slice_id)

    def reserve_slices(self, first: int, count: int) -> None:
        return  # slice id allocation is the source's business; readers never see it

    def put_inode(self, attr: dict[str, Any], *, new: bool = False) -> None:
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

    def drop_inode(self, ino: int) -> None:
        for slice_id in self._new_refs_of.pop(ino, ()):
            self.ref_new.pop(slice_id, None)
        if self.inode_new.pop(ino, None) is None:
            self.inode_set.pop(ino, None)
            self.inode_del.add(ino)

    def link(self, parent: int, name: str, ino: int) -> None:
        key = (parent, name)
        if key in self.dentry_new:
            raise ReplicaDivergedError(f"entry {name!r} in directory {parent} is created twice")
        self.dentry_new[key] = ino

    def unlink(self, parent: int, name: str) -> None:
        key = (parent, name)
        if self.dentry_new.pop(key, None) is not None:
            return
        if key in self.dentry_del:
            raise ReplicaDivergedError(f"entry {name!r} in directory {parent} is removed twice")
        self.dentry_del.add(key)

    def edit_refs(
        self, ino: int, dropped: list[dict[str, Any]], clipped: list[dict[str, Any]]
    ) -> None:
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

    def free_slices(self, freed: list[dict[str, Any]], version: int) -> None:
        for item in freed:
            slice_id, size = int(item["id"]), int(item["size"])
            _check_blocks(slice_id, size, item["checksums"])
            gc = self.gc
            for idx, block_size in enumerate(block_sizes(size)):
                gc[(slice_id, idx)] = (block_size, version)
            if self.slice_new.pop(slice_id, None) is None:
                self.slice_del.add(slice_id)
