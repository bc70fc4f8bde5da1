"""The namespace's tables, and the one code path that changes them: taking an effect.

Every mutation first validates and plans (changing nothing, raising FsError on any failure),
then hands its effect to `Tables.replay`, which takes it through the effect contract
(volume/effects.py) exactly as a mirror does. So an effect can never lean on state the record
does not carry. `Tables` is the source's `EffectSink`.

Transactions: a request's ops commit all or nothing, yet op k must be planned on the tables
as ops 1..k-1 left them (a put is create, then truncate, then writes on one path). So ops are
planned and applied in order inside `begin()` ... `commit()`, and `rollback()` undoes them.
While a transaction is open every sink method journals the before-image of what it is about
to change (a dict entry, a chunk's ref list, a pending id, a readdir cache list), and `begin`
records the id counters; rollback replays the journal backwards, which restores the tables
exactly (the same entries, refs, pending ranges, caches and counters; only dicts' iteration
order may differ, which nothing reads). Outside a transaction nothing is journaled: a mirror's
replay and snapshot loading pay nothing. Transactions do not nest.
"""

from __future__ import annotations

import errno
from bisect import bisect_left, insort
from collections.abc import Callable
from functools import partial
from typing import Any

from changelog.namespace.chunks import ChunkTable, PendingIds
from volume.effects import Effect, MalformedEffectError, apply_effect
from volume.errors import FsError
from volume.inode import ROOT_INO, Inode, SliceInfo, SliceRef

ROOT_MODE = 0o755
_MISSING = object()  # a journaled dict entry that did not exist


def _restore(table: dict[Any, Any], key: Any, old: Any) -> None:
    if old is _MISSING:
        table.pop(key, None)
    else:
        table[key] = old


def _remove_name(names: list[str], name: str) -> None:
    del names[bisect_left(names, name)]


class Tables:
    """Inodes, entries, chunks, slices and id counters. Outside changelog's namespace, read only."""

    # The open transaction's undo steps and saved counters (None: no transaction). Class-level
    # defaults, so tables unpickled from a dump written before transactions existed work too.
    _undo: list[Callable[[], None]] | None = None
    _counters: tuple[int, int] = (0, 0)

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

    # -- transactions ----------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._undo is not None

    def begin(self) -> None:
        """Open a transaction: from now on every change is journaled until commit/rollback."""
        if self._undo is not None:
            raise RuntimeError("a transaction is already open (they do not nest)")
        self._undo = []
        self._counters = (self.next_ino, self.next_slice_id)

    def commit(self) -> None:
        """Keep every change since `begin` and drop the journal."""
        self._undo = None

    def rollback(self) -> None:
        """Undo every change since `begin`, newest first, and close the transaction."""
        undo, self._undo = self._undo, None
        if undo is None:
            raise RuntimeError("no transaction is open")
        for step in reversed(undo):
            step()
        self.next_ino, self.next_slice_id = self._counters

    def _keep(self, table: dict[Any, Any], key: Any) -> None:
        """Journal `table[key]` as it is now (or its absence)."""
        if self._undo is not None:
            self._undo.append(partial(_restore, table, key, table.get(key, _MISSING)))

    def _keep_chunk(self, ino: int, index: int) -> None:
        # Ref lists are never changed in place (ChunkTable.put swaps them), so the list itself
        # is the before-image.
        if self._undo is not None:
            self._undo.append(partial(self.chunks.put, ino, index, self.chunks.get(ino, index)))

    def _journal(self, step: Callable[[], None]) -> None:
        if self._undo is not None:
            self._undo.append(step)

    # -- taking an effect ------------------------------------------------------------------

    def replay(self, op: str, effect: Effect) -> None:
        """Apply one record's effect exactly as the op's planner did.

        Effects come from planning on tables in the same state, never from users: a malformed
        effect raises FsError(EINVAL) and may leave these tables partly changed, which is why
        the source applies requests inside a transaction and rolls back on any error.
        """
        try:
            apply_effect(self, op, effect)
        except MalformedEffectError as exc:
            raise FsError(errno.EINVAL, f"cannot replay: {exc.message}") from exc

    # -- EffectSink ------------------------------------------------------------------------

    def put_inode(self, attr: dict[str, Any], *, new: bool = False) -> None:
        inode = Inode.from_dict(attr)
        self._keep(self.inodes, inode.ino)
        self.inodes[inode.ino] = inode
        if new:
            if inode.is_dir:
                self._keep(self.entries, inode.ino)
                self.entries[inode.ino] = {}
            self.next_ino = max(self.next_ino, inode.ino + 1)

    def link(self, parent: int, name: str, ino: int) -> None:
        children = self.entries[parent]
        self._keep(children, name)
        children[name] = ino
        names = self.sorted_names.get(parent)
        if names is not None:
            insort(names, name)
            self._journal(partial(_remove_name, names, name))

    def unlink(self, parent: int, name: str) -> None:
        children = self.entries[parent]
        self._keep(children, name)
        del children[name]
        names = self.sorted_names.get(parent)
        if names is not None:
            del names[bisect_left(names, name)]
            self._journal(partial(insort, names, name))

    def drop_inode(self, ino: int) -> None:
        self._keep(self.inodes, ino)
        inode = self.inodes.pop(ino)
        if inode.is_dir:
            self._keep(self.entries, ino)
            self._keep(self.sorted_names, ino)
            del self.entries[ino]
            self.sorted_names.pop(ino, None)
        chunks = self.chunks.pop_file(ino)
        self._journal(partial(self._put_chunks, ino, chunks))
        for _, refs in chunks:
            for ref in refs:
                self._deref(ref.id)

    def _put_chunks(self, ino: int, chunks: list[tuple[int, list[SliceRef]]]) -> None:
        for index, refs in chunks:
            self.chunks.put(ino, index, refs)

    def add_slice(
        self, ino: int, chunk_index: int, ref: dict[str, Any], checksums: list[str], version: int
    ) -> None:
        new = SliceRef.from_dict(ref)
        reserved_at = self.pending.reserved_at(new.id)
        if reserved_at is not None:
            self.pending.remove(new.id)
            self._journal(partial(self.pending.put_back, new.id, reserved_at))
        if new.id in self.slices:  # never for effects from planning: ids are committed once
            self._keep(self.extra_refs, new.id)
            self.extra_refs[new.id] = self.extra_refs.get(new.id, 0) + 1
        info = SliceInfo(new.size, tuple(checksums))
        self._keep(self.slices, new.id)
        self.slices[new.id] = info
        self._keep_chunk(ino, chunk_index)
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
            self._keep_chunk(ino, index)
            for ref in refs:
                if ref.id in gone:
                    self._deref(ref.id)
                else:
                    kept.append(new.get(ref.id, ref))
            self.chunks.put(ino, index, kept)

    def free_slices(self, freed: list[dict[str, Any]], version: int) -> None:
        for item in freed:
            slice_id = int(item["id"])
            self._keep(self.slices, slice_id)
            self._keep(self.extra_refs, slice_id)
            self.slices.pop(slice_id, None)
            self.extra_refs.pop(slice_id, None)

    def reserve_slices(self, first: int, count: int) -> None:
        self.reserve_pending(first, count, 0)

    # -- SliceIdSink (volume/effects.py): the source's own id bookkeeping ------------------

    def reserve_pending(self, first: int, count: int, ts: int) -> None:
        self.pending.add(first, first + count, ts)
        self._journal(partial(self.pending.withdraw, first, first + count))
        self.next_slice_id = max(self.next_slice_id, first + count)

    def expire_pending(self, expired: list[list[int]], forgotten: list[list[int]]) -> None:
        # Rare (the sweeper's own request), so the whole before-image is a fine undo.
        self._journal(partial(self.pending.restore, self.pending.snapshot()))
        self.pending.expire(expired)
        self.pending.forget(forgotten)

    def _deref(self, slice_id: int) -> None:
        """One ref of the slice is gone; at zero the effect's `freed` list removes the entry."""
        extra = self.extra_refs.get(slice_id, 0)
        if extra:
            self._keep(self.extra_refs, slice_id)
        if extra > 1:
            self.extra_refs[slice_id] = extra - 1
        elif extra == 1:
            del self.extra_refs[slice_id]
