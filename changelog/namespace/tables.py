"""The namespace's tables, and the one code path that changes them: taking an effect.

Every mutation first validates and plans (changing nothing, raising FsError on any failure),
then hands its effect to `Tables.replay`, which takes it through the effect contract
(volume/effects.py) exactly as a mirror does. So an effect can never lean on state the record
does not carry. `Tables` is the source's `EffectSink`.
"""

from __future__ import annotations

import errno
from bisect import bisect_left, insort
from typing import Any

from changelog.namespace.chunks import ChunkTable, PendingIds
from volume.effects import Effect, MalformedEffectError, apply_effect
from volume.errors import FsError
from volume.inode import ROOT_INO, Inode, SliceInfo, SliceRef

ROOT_MODE = 0o755


class Tables:
    """Inodes, entries, chunks, slices and id counters. Outside changelog's namespace, read only."""

    def __init__(self, *, root_ts: int = 0) -> None:
        self.inodes: dict[int, Inode] = {
            ROOT_INO: Inode(ROOT_INO, "dir", ROOT_MODE, 0, 0, 0, root_ts, root_ts, 2)
        }
        self.entries: dict[int, dict[str, int]] = {ROOT_INO: {}}
        self.chunks = ChunkTable()
        self.slices: dict[int, SliceInfo] = {}
        # A live slice (one in `slices`) has 1 + extra_refs.get(id, 0) refs. Every write
        # commits a new id, so today no slice has a second ref: storing the common count of 1
        # for every slice would cost ~70 bytes per slice for nothing.
        self.extra_refs: dict[int, int] = {}
        self.pending = PendingIds()
        self.next_ino = ROOT_INO + 1
        self.next_slice_id = 1
        # readdir paging cache: built on first readdir of a directory, kept sorted on change
        self.sorted_names: dict[int, list[str]] = {}

    # -- reads shared by the planners ------------------------------------------------------

    def refcount(self, slice_id: int) -> int:
        """How many refs point at a slice; 0 once it is freed (or was never committed)."""
        if slice_id not in self.slices:
            return 0
        return 1 + self.extra_refs.get(slice_id, 0)

    def freed(self, gone: list[SliceRef]) -> list[dict[str, Any]]:
        """Slice entries whose refcount reaches 0 when the refs in `gone` disappear."""
        drops: dict[int, int] = {}
        for ref in gone:
            drops[ref.id] = drops.get(ref.id, 0) + 1
        return [
            self.slices[slice_id].to_dict(slice_id)
            for slice_id, n in drops.items()
            if self.refcount(slice_id) <= n
        ]

    # -- taking an effect ------------------------------------------------------------------

    def replay(self, op: str, effect: Effect) -> None:
        """Apply one record's effect exactly as the op's planner did.

        Effects come from planning on tables in the same state, never from users: a malformed
        effect raises FsError(EINVAL) and may leave these tables partly changed.
        """
        try:
            apply_effect(self, op, effect)
        except MalformedEffectError as exc:
            raise FsError(errno.EINVAL, f"cannot replay: {exc.message}") from exc

    # -- EffectSink ------------------------------------------------------------------------

    def put_inode(self, attr: dict[str, Any], *, new: bool = False) -> None:
        inode = Inode.from_dict(attr)
        self.inodes[inode.ino] = inode
        if new:
            if inode.is_dir:
                self.entries[inode.ino] = {}
            self.next_ino = max(self.next_ino, inode.ino + 1)

    def link(self, parent: int, name: str, ino: int) -> None:
        self.entries[parent][name] = ino
        names = self.sorted_names.get(parent)
        if names is not None:
            insort(names, name)

    def unlink(self, parent: int, name: str) -> None:
        del self.entries[parent][name]
        names = self.sorted_names.get(parent)
        if names is not None:
            del names[bisect_left(names, name)]

    def drop_inode(self, ino: int) -> None:
        inode = self.inodes.pop(ino)
        if inode.is_dir:
            del self.entries[ino]
            self.sorted_names.pop(ino, None)
        for _, refs in self.chunks.pop_file(ino):
            for ref in refs:
                self._deref(ref.id)

    def add_slice(
        self, ino: int, chunk_index: int, ref: dict[str, Any], checksums: list[str], version: int
    ) -> None:
        new = SliceRef.from_dict(ref)
        if new.id in self.pending:
            self.pending.remove(new.id)
        if new.id in self.slices:  # never for effects from planning: ids are committed once
            self.extra_refs[new.id] = self.extra_refs.get(new.id, 0) + 1
        self.slices[new.id] = SliceInfo(new.size, tuple(checksums))
        self.chunks.put(ino, chunk_index, [*self.chunks.get(ino, chunk_index), new])

    def edit_refs(
        self, ino: int, dropped: list[dict[str, Any]], clipped: list[dict[str, Any]]
    ) -> None:
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

    def free_slices(self, freed: list[dict[str, Any]], version: int) -> None:
        for item in freed:
            slice_id = int(item["id"])
            self.slices.pop(slice_id, None)
            self.extra_refs.pop(slice_id, None)

    def reserve_slices(self, first: int, count: int) -> None:
        self.reserve_pending(first, count, 0)

    # -- SliceIdSink (volume/effects.py): the source's own id bookkeeping ------------------

    def reserve_pending(self, first: int, count: int, ts: int) -> None:
        self.pending.add(first, first + count, ts)
        self.next_slice_id = max(self.next_slice_id, first + count)

    def expire_pending(self, expired: list[list[int]], forgotten: list[list[int]]) -> None:
        self.pending.expire(expired)
        self.pending.forget(forgotten)

    def _deref(self, slice_id: int) -> None:
        """One ref of the slice is gone; at zero the effect's `freed` list removes the entry."""
        extra = self.extra_refs.get(slice_id, 0)
        if extra > 1:
            self.extra_refs[slice_id] = extra - 1
        elif extra == 1:
            del self.extra_refs[slice_id]
