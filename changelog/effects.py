"""The namespace's tables and the one code path that changes them: applying an effect.

Every mutation of `Namespace` first validates and plans (changing nothing, raising FsError on
any failure), then hands its effect to `replay`, the same code a replica runs on a record. So an
effect can never lean on state the record does not carry. This docstring is the contract for
replicas (the mirror's SQL appliers are written from it).

Shapes used below
-----------------
attr         Inode.to_dict(): {"ino", "kind" ("file"|"dir"|"symlink"), "mode" (perm bits,
             0..0o7777), "uid", "gid", "size" (bytes; 0 for dirs, the target's UTF-8 length
             for symlinks), "mtime_ms", "ctime_ms", "nlink" (dirs: 2 + subdirectories),
             "target" (str for symlinks, else None)}. Always the complete attributes *after*
             the op: a replica overwrites its row, it never computes a new value.
ref          {"id", "size", "off", "len", "pos"}: slice `id` (object of `size` bytes) shows its
             bytes [off, off+len) at chunk positions [pos, pos+len).
placed ref   ref + {"chunk_index"}.
freed slice  {"id", "size", "checksums": [str, one per block]}: the slice table entry that left
             the namespace. Its blocks, objstore.keys.slice_block_keys(id, size), are garbage
             for GC (behind the GC barrier: older records may still name them).

A chunk's refs are ordered by commit: newer refs cover older ones. `write` appends at the end;
nothing else reorders. Each slice id is committed once, so it has at most one ref in the whole
namespace: (ino, chunk_index, id) - or just id - names a ref. A replica that keys order by the
record version of the `write` that appended the ref, and by list index for refs loaded from a
snapshot at version v, stays ordered (a chunk holding n refs took n write records, so n <= v).

Effects, per op (all keys always present)
-----------------------------------------
mkdir, symlink   {"ino", "parent", "name", "attr", "parent_attr"}
                 Insert inode `attr` and dentry (parent, name) -> ino; overwrite the parent's
                 attributes with `parent_attr` (mtime/ctime, and nlink+1 for mkdir).
create           {"ino", "parent", "name", "attr", "parent_attr", "existed": bool}
                 existed=false: as mkdir. existed=true (non-exclusive create of an existing
                 file): nothing changed; attr/parent_attr are the current ones. Apply nothing.
write            {"ino", "chunk_index", "slice": ref, "checksums": [str], "attr",
                  "dropped": [placed ref], "freed": [freed slice]}
                 Insert slice table entry (slice.id, slice.size, checksums); append `slice` to
                 chunk (ino, chunk_index); delete the `dropped` refs (now fully covered, all in
                 this chunk); delete `freed` slice entries; overwrite inode attributes.
truncate,        {"ino", "attr", "dropped": [placed ref], "clipped": [placed ref], "freed"}
setattr          Delete `dropped` refs (past the new size, or left fully covered by refs cut
                 at the same place); for each `clipped` ref, set `len` of the ref with that
                 (ino, chunk_index, id) to the given len (off/pos/order unchanged); delete
                 `freed` slice entries; overwrite inode attributes. setattr without a size has
                 empty lists.
unlink           {"ino", "parent", "name", "parent_attr", "attr": attr | None, "freed"}
                 Delete dentry (parent, name); overwrite the parent's attributes. attr None: the
                 inode is gone - delete it and every ref of it (all chunks); otherwise overwrite
                 it (a remaining hard link; does not happen yet). Delete `freed` slice entries.
rmdir            {"ino", "parent", "name", "parent_attr"}
                 Delete dentry and the (empty) directory inode; overwrite the parent.
rename           {"noop": bool, "ino", "src_parent", "src_name", "dst_parent", "dst_name",
                  "attr", "src_parent_attr", "dst_parent_attr",
                  "replaced": None | {"ino", "kind", "attr": attr | None}, "freed"}
                 noop=true (source and destination are the same entry): apply nothing.
                 Otherwise, in this order: if `replaced`, remove the destination entry and,
                 when replaced.attr is None, the replaced inode with all its refs (else overwrite
                 it); delete dentry (src_parent, src_name); insert (dst_parent, dst_name) -> ino;
                 overwrite the moved inode with `attr` (ctime) and both parents (src first, then
                 dst: when they are the same directory the two attrs are equal); delete `freed`.
alloc_slices     {"first", "count"}: ids [first, first+count) are reserved for one client;
                 next_slice_id becomes first+count. No namespace change for a replica.
tick             {} (records with no namespace effect); apply nothing.
"""

from __future__ import annotations

import errno
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable
from typing import Any

from changelog.errors import FsError
from changelog.inode import ROOT_INO, Inode, SliceInfo, SliceRef
from changelog.records import TICK
from changelog.slices import ChunkTable, PendingIds

Effect = dict[str, Any]

ROOT_MODE = 0o755


class NamespaceState:
    """The tables of a namespace and `replay`. Outside changelog's namespace modules, read only."""

    def __init__(self, *, root_ts: int = 0) -> None:
        self.inodes: dict[int, Inode] = {
            ROOT_INO: Inode(ROOT_INO, "dir", ROOT_MODE, 0, 0, 0, root_ts, root_ts, 2)
        }
        self.entries: dict[int, dict[str, int]] = {ROOT_INO: {}}
        self.chunks = ChunkTable()
        self.slices: dict[int, SliceInfo] = {}
        # A live slice (one in `slices`) has 1 + _extra_refs.get(id, 0) refs. Every write
        # commits a new id, so today no slice has a second ref: storing the common count of 1
        # for every slice would cost ~70 bytes per slice for nothing.
        self._extra_refs: dict[int, int] = {}
        self.pending = PendingIds()
        self.next_ino = ROOT_INO + 1
        self.next_slice_id = 1
        # readdir paging cache: built on first readdir of a directory, kept sorted on change
        self._sorted_names: dict[int, list[str]] = {}

    # -- primitives shared by replay and snapshot loading --------------------------------------

    def _link(self, parent: int, name: str, ino: int) -> None:
        self.entries[parent][name] = ino
        names = self._sorted_names.get(parent)
        if names is not None:
            insort(names, name)

    def _unlink_name(self, parent: int, name: str) -> None:
        del self.entries[parent][name]
        names = self._sorted_names.get(parent)
        if names is not None:
            del names[bisect_left(names, name)]

    def refcount(self, slice_id: int) -> int:
        """How many refs point at a slice; 0 once it is freed (or was never committed)."""
        if slice_id not in self.slices:
            return 0
        return 1 + self._extra_refs.get(slice_id, 0)

    def _deref(self, slice_id: int) -> None:
        """One ref of the slice is gone; at zero the effect's `freed` list removes the entry."""
        extra = self._extra_refs.get(slice_id, 0)
        if extra > 1:
            self._extra_refs[slice_id] = extra - 1
        elif extra == 1:
            del self._extra_refs[slice_id]

    def _drop_inode(self, ino: int) -> None:
        inode = self.inodes.pop(ino)
        if inode.is_dir:
            del self.entries[ino]
            self._sorted_names.pop(ino, None)
        for _, refs in self.chunks.pop_file(ino):
            for ref in refs:
                self._deref(ref.id)

    def _free(self, freed: Iterable[dict[str, Any]]) -> None:
        for item in freed:
            slice_id = int(item["id"])
            self.slices.pop(slice_id, None)
            self._extra_refs.pop(slice_id, None)

    def _put(self, attr: dict[str, Any]) -> int:
        inode = Inode.from_dict(attr)
        self.inodes[inode.ino] = inode
        return inode.ino

    def _edit_refs(self, ino: int, dropped: list[Any], clipped: list[Any]) -> None:
        """Remove `dropped` and apply `clipped` (both placed refs); forget emptied chunks."""
        drop_ids: dict[int, set[int]] = {}
        for item in dropped:
            drop_ids.setdefault(int(item["chunk_index"]), set()).add(int(item["id"]))
        clips: dict[int, dict[int, SliceRef]] = {}
        for item in clipped:
            clips.setdefault(int(item["chunk_index"]), {})[int(item["id"])] = SliceRef.from_dict(
                item
            )
        for index in sorted(drop_ids.keys() | clips.keys()):
            refs = self.chunks.get(ino, index)
            gone = drop_ids.get(index, set())
            new = clips.get(index, {})
            kept = []
            for ref in refs:
                if ref.id in gone:
                    self._deref(ref.id)
                else:
                    kept.append(new.get(ref.id, ref))
            self.chunks.put(ino, index, kept)

    # -- replay ---------------------------------------------------------------------------------

    def replay(self, op: str, effect: Effect) -> None:
        """Apply one record's effect (see the module docstring), exactly as `apply` did.

        Effects come from `apply` on a namespace in the same state, never from users: a
        malformed effect raises FsError(EINVAL) and may leave this namespace partly changed.
        """
        handler = _REPLAYERS.get(op)
        if handler is None:
            raise FsError(errno.EINVAL, f"cannot replay unknown op {op!r}")
        try:
            handler(self, effect)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FsError(errno.EINVAL, f"malformed {op} effect: {exc!r}") from exc

    def _replay_new(self, e: Effect) -> None:
        if e.get("existed"):
            return
        ino = self._put(e["attr"])
        if self.inodes[ino].is_dir:
            self.entries[ino] = {}
        self._link(int(e["parent"]), str(e["name"]), ino)
        self._put(e["parent_attr"])
        self.next_ino = max(self.next_ino, ino + 1)

    def _replay_write(self, e: Effect) -> None:
        ino, index = int(e["ino"]), int(e["chunk_index"])
        ref = SliceRef.from_dict(e["slice"])
        if ref.id in self.pending:
            self.pending.remove(ref.id)
        if ref.id in self.slices:  # never for effects from `apply`: ids are committed once
            self._extra_refs[ref.id] = self._extra_refs.get(ref.id, 0) + 1
        self.slices[ref.id] = SliceInfo(ref.size, tuple(str(c) for c in e["checksums"]))
        self.chunks.put(ino, index, [*self.chunks.get(ino, index), ref])
        self._edit_refs(ino, e["dropped"], [])
        self._free(e["freed"])
        self._put(e["attr"])

    def _replay_resize(self, e: Effect) -> None:
        ino = int(e["ino"])
        self._edit_refs(ino, e["dropped"], e["clipped"])
        self._free(e["freed"])
        self._put(e["attr"])

    def _replay_unlink(self, e: Effect) -> None:
        ino = int(e["ino"])
        self._unlink_name(int(e["parent"]), str(e["name"]))
        self._put(e["parent_attr"])
        if e["attr"] is None:
            self._drop_inode(ino)
        else:
            self._put(e["attr"])
        self._free(e["freed"])

    def _replay_rmdir(self, e: Effect) -> None:
        self._unlink_name(int(e["parent"]), str(e["name"]))
        self._drop_inode(int(e["ino"]))
        self._put(e["parent_attr"])

    def _replay_rename(self, e: Effect) -> None:
        if e["noop"]:
            return
        dst_parent, dst_name = int(e["dst_parent"]), str(e["dst_name"])
        replaced = e["replaced"]
        if replaced is not None:
            self._unlink_name(dst_parent, dst_name)
            if replaced["attr"] is None:
                self._drop_inode(int(replaced["ino"]))
            else:
                self._put(replaced["attr"])
        self._unlink_name(int(e["src_parent"]), str(e["src_name"]))
        self._link(dst_parent, dst_name, int(e["ino"]))
        self._put(e["attr"])
        self._put(e["src_parent_attr"])
        self._put(e["dst_parent_attr"])
        self._free(e["freed"])

    def _replay_alloc(self, e: Effect) -> None:
        first, count = int(e["first"]), int(e["count"])
        self.pending.add(first, first + count)
        self.next_slice_id = max(self.next_slice_id, first + count)

    def _replay_tick(self, e: Effect) -> None:
        return


_REPLAYERS: dict[str, Callable[[NamespaceState, Effect], None]] = {
    "mkdir": NamespaceState._replay_new,
    "create": NamespaceState._replay_new,
    "symlink": NamespaceState._replay_new,
    "write": NamespaceState._replay_write,
    "truncate": NamespaceState._replay_resize,
    "setattr": NamespaceState._replay_resize,
    "unlink": NamespaceState._replay_unlink,
    "rmdir": NamespaceState._replay_rmdir,
    "rename": NamespaceState._replay_rename,
    "alloc_slices": NamespaceState._replay_alloc,
    TICK: NamespaceState._replay_tick,
}
