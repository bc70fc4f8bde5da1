"""The effect contract: what each changelog record does to a namespace, written once.

A record carries the *effect* of an op, never the request, so every region applies it without
re-deriving anything. `EFFECTS` maps each op to the steps its effect takes, in order, against an
`EffectSink`; the source's in-memory tables (changelog/namespace/tables.py) and the mirror's
batch of row changes (mirror/follow/changes.py) are the two sinks. Neither side decides the
order of steps: this table does, so the two cannot drift apart.

Requests are the unit of change
-------------------------------
A client request is a list of ops (a `put` is create + truncate + writes on one path) that
commits all or nothing. The source plans op k on the namespace as ops 1..k-1 left it, so it
plans and applies them in order inside one transaction of its tables (undo journal:
changelog/namespace/tables.py) and rolls everything back if any op fails: a failed request
changes nothing, frees nothing, emits no record. A committed request yields one record per
op, contiguous versions and one `ts`; its last record has `ends_request` set
(volume/records.py). Each effect below still applies on its own, in version order; what a
sink adds is where it may stop: the mirror applies whole requests only, each batch of
requests plus the watermark in one PostgreSQL transaction (mirror/follow/applier.py refuses
a batch that stops inside a request), so no region ever shows half a request.

Shapes used below
-----------------
attr         Inode.to_dict(): {"ino", "kind" ("file"|"dir"|"symlink"), "mode" (perm bits,
             0..0o7777), "uid", "gid", "size" (bytes; 0 for dirs, the target's UTF-8 length
             for symlinks), "mtime_ms", "ctime_ms", "nlink" (dirs: 2 + subdirectories),
             "target" (str for symlinks, else None)}. Always the complete attributes *after*
             the op: a sink overwrites its row, it never computes a new value.
ref          {"id", "size", "off", "len", "pos"}: slice `id` (object of `size` bytes) shows its
             bytes [off, off+len) at chunk positions [pos, pos+len).
placed ref   ref + {"chunk_index"}.
freed slice  {"id", "size", "checksums": [str, one per block]}: the slice table entry that left
             the namespace. Its blocks, objstore.keys.slice_block_keys(id, size), are garbage
             for GC (behind the GC barrier: older records may still name them).

A chunk's refs are ordered by commit: newer refs cover older ones. `write` appends at the end;
nothing else reorders. Each slice id is committed once, so it has at most one ref in the whole
namespace: (ino, chunk_index, id) - or just id - names a ref. A sink that keys order by the
record version of the `write` that appended the ref, and by list index for refs loaded from a
snapshot at version v, stays ordered (a chunk holding n refs took n write records, so n <= v).

Effects, per op (all keys always present), and the steps they take
------------------------------------------------------------------
mkdir, symlink   {"ino", "parent", "name", "attr", "parent_attr"}
                 new inode `attr`; link (parent, name) -> ino; overwrite parent with
                 `parent_attr` (mtime/ctime, and nlink+1 for mkdir).
create           {"ino", "parent", "name", "attr", "parent_attr", "existed": bool}
                 existed=false: as mkdir. existed=true (non-exclusive create of an existing
                 file): nothing changed; attr/parent_attr are the current ones. Apply nothing.
write            {"ino", "chunk_index", "slice": ref, "checksums": [str], "attr",
                  "dropped": [placed ref], "freed": [freed slice]}
                 add slice table entry (slice.id, slice.size, checksums) and append `slice` to
                 chunk (ino, chunk_index); delete the `dropped` refs (now fully covered, all in
                 this chunk); free the `freed` slice entries; overwrite inode attributes.
truncate,        {"ino", "attr", "dropped": [placed ref], "clipped": [placed ref], "freed"}
setattr          delete `dropped` refs (past the new size, or left fully covered by refs cut
                 at the same place); for each `clipped` ref, set `len` of the ref with that
                 (ino, chunk_index, id) to the given len (off/pos/order unchanged); free
                 `freed`; overwrite inode attributes. setattr without a size has empty lists.
unlink           {"ino", "parent", "name", "parent_attr", "attr": attr | None, "freed"}
                 unlink (parent, name); overwrite the parent. attr None: the inode is gone -
                 drop it and every ref of it (all chunks); otherwise overwrite it (a remaining
                 hard link; does not happen yet). Free `freed`.
rmdir            {"ino", "parent", "name", "parent_attr"}
                 unlink the entry; drop the (empty) directory inode; overwrite the parent.
rename           {"noop": bool, "ino", "src_parent", "src_name", "dst_parent", "dst_name",
                  "attr", "src_parent_attr", "dst_parent_attr",
                  "replaced": None | {"ino", "kind", "attr": attr | None}, "freed"}
                 noop=true (source and destination are the same entry): apply nothing.
                 Otherwise, in this order: if `replaced`, unlink the destination entry and,
                 when replaced.attr is None, drop the replaced inode with all its refs (else
                 overwrite it); unlink (src_parent, src_name); link (dst_parent, dst_name) ->
                 ino; overwrite the moved inode with `attr` (ctime) and both parents (src first,
                 then dst: when they are the same directory the two attrs are equal); free.
alloc_slices     {"first", "count", "ts"}: ids [first, first+count) are reserved for one
                 client at `ts` (ms; 0 in records written before it was carried); next_slice_id
                 becomes first+count. No namespace change a reader can see.
expire_slices    {"expired": [[first, end), ...], "forgotten": [[first, end), ...]}: the upload
                 sweeper's record (changelog/sweeper.py). `expired` pending ranges (whole, as
                 reserved) leave the pending set, so no write can commit them any more, and
                 their blocks become the sweeper's to delete; `forgotten` ids are dropped from
                 that expired set (their blocks are gone). No namespace change a reader can see.
tick, mirror_register, mirror_ack, mirror_remove
                 source-side bookkeeping with no namespace effect: apply nothing.

Slice ids that are reserved but not committed are the source's business alone: a sink that
tracks them implements `SliceIdSink` too (the source's tables, with reservation times and
expiry); any other sink (a mirror's) gets only `reserve_slices` and skips `expire_slices`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from volume.errors import ChangelogError
from volume.records import MIRROR_OPS, TICK

Effect = dict[str, Any]


class MalformedEffectError(ChangelogError):
    """An effect names an op no sink knows, or lacks a field / has one of the wrong type.

    Effects come from the source's own planning, never from users: this means the two sides
    run different code (or the record was damaged past its checksum)."""

    def __init__(self, message: str, *, op: str) -> None:
        super().__init__(message)
        self.op = op


class EffectSink(Protocol):
    """A namespace store that takes effects step by step, in the order `EFFECTS` calls them.

    `version` is the record's version: a sink may key ref order and GC by it, or ignore it.
    A sink raises KeyError/TypeError/ValueError for a malformed value (it becomes
    MalformedEffectError) and its own error type for a row that does not fit.
    """

    def put_inode(self, attr: dict[str, Any], *, new: bool = False) -> None:
        """Insert (`new`) or overwrite the inode `attr` describes (a new dir has no entries)."""
        ...

    def link(self, parent: int, name: str, ino: int) -> None:
        """Add the directory entry (parent, name) -> ino."""
        ...

    def unlink(self, parent: int, name: str) -> None:
        """Remove the directory entry (parent, name)."""
        ...

    def drop_inode(self, ino: int) -> None:
        """Remove the inode and every ref of it, in every chunk."""
        ...

    def add_slice(
        self, ino: int, chunk_index: int, ref: dict[str, Any], checksums: list[str], version: int
    ) -> None:
        """Add the slice table entry of ref["id"] and append `ref` to chunk (ino, index)."""
        ...

    def edit_refs(
        self, ino: int, dropped: list[dict[str, Any]], clipped: list[dict[str, Any]]
    ) -> None:
        """Delete the `dropped` placed refs of `ino`; set `len` of the `clipped` ones."""
        ...

    def free_slices(self, freed: list[dict[str, Any]], version: int) -> None:
        """Remove the slice table entries of `freed` (their blocks become garbage)."""
        ...

    def reserve_slices(self, first: int, count: int) -> None:
        """Slice ids [first, first+count) are allocated to a client, not yet committed."""
        ...


@runtime_checkable
class SliceIdSink(Protocol):
    """The id bookkeeping of a sink that tracks uncommitted slice ids (the source's tables).

    Given this, the table calls these instead of `reserve_slices` (and for `expire_slices`)."""

    def reserve_pending(self, first: int, count: int, ts: int) -> None:
        """Slice ids [first, first+count) were reserved for a client at `ts` (ms)."""
        ...

    def expire_pending(self, expired: list[list[int]], forgotten: list[list[int]]) -> None:
        """The `expired` pending ranges can no longer be committed; `forgotten` expired ids
        need no more sweeping. ValueError if an expired range is not exactly a pending one."""
        ...


def _new(sink: EffectSink, e: Effect, version: int) -> None:
    if e.get("existed"):
        return
    sink.put_inode(e["attr"], new=True)
    sink.link(int(e["parent"]), str(e["name"]), int(e["attr"]["ino"]))
    sink.put_inode(e["parent_attr"])


def _write(sink: EffectSink, e: Effect, version: int) -> None:
    ino = int(e["ino"])
    checksums = [str(c) for c in e["checksums"]]
    sink.add_slice(ino, int(e["chunk_index"]), e["slice"], checksums, version)
    sink.edit_refs(ino, e["dropped"], [])
    sink.free_slices(e["freed"], version)
    sink.put_inode(e["attr"])


def _resize(sink: EffectSink, e: Effect, version: int) -> None:
    sink.edit_refs(int(e["ino"]), e["dropped"], e["clipped"])
    sink.free_slices(e["freed"], version)
    sink.put_inode(e["attr"])


def _unlink(sink: EffectSink, e: Effect, version: int) -> None:
    sink.unlink(int(e["parent"]), str(e["name"]))
    sink.put_inode(e["parent_attr"])
    if e["attr"] is None:
        sink.drop_inode(int(e["ino"]))
    else:
        sink.put_inode(e["attr"])
    sink.free_slices(e["freed"], version)


def _rmdir(sink: EffectSink, e: Effect, version: int) -> None:
    sink.unlink(int(e["parent"]), str(e["name"]))
    sink.drop_inode(int(e["ino"]))
    sink.put_inode(e["parent_attr"])


def _rename(sink: EffectSink, e: Effect, version: int) -> None:
    if e["noop"]:
        return
    dst_parent, dst_name = int(e["dst_parent"]), str(e["dst_name"])
    replaced = e["replaced"]
    if replaced is not None:
        sink.unlink(dst_parent, dst_name)
        if replaced["attr"] is None:
            sink.drop_inode(int(replaced["ino"]))
        else:
            sink.put_inode(replaced["attr"])
    sink.unlink(int(e["src_parent"]), str(e["src_name"]))
    sink.link(dst_parent, dst_name, int(e["ino"]))
    sink.put_inode(e["attr"])
    sink.put_inode(e["src_parent_attr"])
    sink.put_inode(e["dst_parent_attr"])
    sink.free_slices(e["freed"], version)


def _alloc(sink: EffectSink, e: Effect, version: int) -> None:
    first, count = int(e["first"]), int(e["count"])
    if isinstance(sink, SliceIdSink):
        sink.reserve_pending(first, count, int(e.get("ts", 0)))
    else:
        sink.reserve_slices(first, count)


def _ranges(value: Any) -> list[list[int]]:
    return [[int(start), int(end)] for start, end in value]


def _expire(sink: EffectSink, e: Effect, version: int) -> None:
    expired, forgotten = _ranges(e["expired"]), _ranges(e["forgotten"])
    if isinstance(sink, SliceIdSink):
        sink.expire_pending(expired, forgotten)


def _nothing(sink: EffectSink, e: Effect, version: int) -> None:
    return


EFFECTS: dict[str, Callable[[EffectSink, Effect, int], None]] = {
    "mkdir": _new,
    "create": _new,
    "symlink": _new,
    "write": _write,
    "truncate": _resize,
    "setattr": _resize,
    "unlink": _unlink,
    "rmdir": _rmdir,
    "rename": _rename,
    "alloc_slices": _alloc,
    "expire_slices": _expire,
    TICK: _nothing,
    **dict.fromkeys(MIRROR_OPS, _nothing),
}
# Ops a reader never sees change anything for: a batch of only these moves just the watermark.
NAMESPACE_NEUTRAL_OPS = frozenset(op for op, steps in EFFECTS.items() if steps is _nothing)


def apply_effect(sink: EffectSink, op: str, effect: Effect, version: int = 0) -> None:
    """Take one record's effect into `sink`, step by step as `EFFECTS` says.

    Raises MalformedEffectError for an unknown op or a malformed effect (the sink may then be
    partly changed: callers apply inside a transaction, or on a plan already validated);
    the sink's own errors pass through.
    """
    steps = EFFECTS.get(op)
    if steps is None:
        raise MalformedEffectError(f"unknown op {op!r}", op=op)
    try:
        steps(sink, effect, version)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedEffectError(f"malformed {op} effect: {exc!r}", op=op) from exc
