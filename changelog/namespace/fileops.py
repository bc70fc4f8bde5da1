"""Planning of the ops that change file contents and attributes: write, truncate, setattr,
and the slice id bookkeeping: alloc_slices, expire_slices.

Each function validates everything, computes the complete effect without touching the tables,
then replays it (see volume/effects.py for the effect shapes). A raised FsError therefore
always means nothing changed.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import Any

from changelog.namespace.lookup import check_caller, target, writable_file
from changelog.namespace.tables import Tables
from volume.checks import check_int
from volume.effects import Effect
from volume.errors import FsError
from volume.extents import clip_chunk, covered_by_last, invisible_indices
from volume.inode import (
    CHUNK_SIZE,
    MAX_FILE_SIZE,
    MAX_ID,
    Inode,
    SliceRef,
    block_count,
)

MAX_ALLOC_COUNT = 1 << 20
MAX_EXPIRE_RANGES = 10_000  # per expire_slices record: bounds its size; the rest waits a pass
MAX_CHECKSUM_CHARS = 128


def plan_resize(
    t: Tables, inode: Inode, size: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(dropped, clipped, freed) for cutting the file at `size`; nothing when growing.

    Dropped: refs past the cut, and refs the cut left fully covered (as they were before).
    """
    dropped: list[dict[str, Any]] = []
    clipped: list[dict[str, Any]] = []
    gone: list[SliceRef] = []
    if size >= inode.size:
        return dropped, clipped, []
    for index, refs in t.chunks.of_file(inode.ino):
        boundary = size - index * CHUNK_SIZE
        if boundary >= CHUNK_SIZE:
            continue
        kept, cut, short = clip_chunk(refs, max(boundary, 0))
        if short:  # a clipped ref may now hide behind newer ones cut at the same place
            dead = {kept[i].id for i in invisible_indices(kept, CHUNK_SIZE)}
            cut += [ref for ref in refs if ref.id in dead]
            short = [ref for ref in short if ref.id not in dead]
        gone.extend(cut)
        dropped.extend({"chunk_index": index, **ref.to_dict()} for ref in cut)
        clipped.extend({"chunk_index": index, **ref.to_dict()} for ref in short)
    return dropped, clipped, t.freed(gone)


# -- mutations ----------------------------------------------------------------------------


def write(
    t: Tables,
    path: str,
    chunk_index: int,
    pos: int,
    slice_id: int,
    size: int,
    checksums: list[str],
    *,
    ts: int,
    uid: int,
    gid: int,
) -> Effect:
    """Commit slice `slice_id` (blocks already in the bucket) at `pos` of chunk `chunk_index`.

    The id must come from alloc_slices and not be committed yet, so a duplicated or replayed
    request fails with EINVAL instead of committing twice. Errors: EISDIR, EINVAL (bad
    range, checksum count, slice id, not a regular file), EFBIG, EACCES, ENOENT, ENOTDIR.
    """
    check_caller(ts, uid, gid)
    check_int(chunk_index, "chunk_index", 0, MAX_FILE_SIZE // CHUNK_SIZE, path=path)
    check_int(pos, "pos", 0, CHUNK_SIZE - 1, path=path)
    check_int(size, "size", 1, CHUNK_SIZE - pos, path=path)
    check_int(slice_id, "slice_id", 0, 2**63 - 1, path=path)
    end = chunk_index * CHUNK_SIZE + pos + size
    if end > MAX_FILE_SIZE:
        raise FsError(errno.EFBIG, "write past the largest file size", path=path)
    if not isinstance(checksums, list | tuple) or len(checksums) != block_count(size):
        raise FsError(errno.EINVAL, "need one checksum per block", path=path)
    for c in checksums:
        if not isinstance(c, str) or not c.isascii() or not 0 < len(c) <= MAX_CHECKSUM_CHARS:
            raise FsError(errno.EINVAL, "a checksum must be a short ASCII string", path=path)
    inode = writable_file(t, path, uid, gid)
    if slice_id not in t.pending:
        if t.pending.is_expired(slice_id):
            raise FsError(
                errno.EINVAL, f"slice {slice_id} expired: not committed within the upload grace"
            )
        raise FsError(
            errno.EINVAL,
            f"slice {slice_id} is not pending: never allocated, already committed,"
            " or expired (not committed within the upload grace)",
        )
    new = SliceRef(id=slice_id, size=size, off=0, len=size, pos=pos)
    refs = [*t.chunks.get(inode.ino, chunk_index), new]
    gone = [refs[i] for i in covered_by_last(refs, CHUNK_SIZE)]
    attr = replace(inode, size=max(inode.size, end), mtime_ms=ts, ctime_ms=ts)
    effect: Effect = {
        "ino": inode.ino,
        "chunk_index": chunk_index,
        "slice": new.to_dict(),
        "checksums": list(checksums),
        "attr": attr.to_dict(),
        "dropped": [{"chunk_index": chunk_index, **ref.to_dict()} for ref in gone],
        "freed": t.freed(gone),
    }
    t.replay("write", effect)
    return effect


def truncate(t: Tables, path: str, size: int, *, ts: int, uid: int, gid: int) -> Effect:
    """Set a file's size. Shrinking cuts refs past `size` (a later grow reads zeros there)
    and frees slices left without refs; growing only sets the size. mtime/ctime change
    only when the size does. Errors: EISDIR, EINVAL, EFBIG, EACCES, ENOENT, ENOTDIR.
    """
    check_caller(ts, uid, gid)
    check_int(size, "size", 0, 2**63 - 1, path=path)
    if size > MAX_FILE_SIZE:
        raise FsError(errno.EFBIG, "size past the largest file size", path=path)
    inode = writable_file(t, path, uid, gid)
    dropped, clipped, freed = plan_resize(t, inode, size)
    attr = inode if size == inode.size else replace(inode, size=size, mtime_ms=ts, ctime_ms=ts)
    effect: Effect = {
        "ino": inode.ino,
        "attr": attr.to_dict(),
        "dropped": dropped,
        "clipped": clipped,
        "freed": freed,
    }
    t.replay("truncate", effect)
    return effect


def setattr(
    t: Tables,
    path: str,
    *,
    mode: int | None = None,
    owner_uid: int | None = None,
    owner_gid: int | None = None,
    mtime_ms: int | None = None,
    size: int | None = None,
    ts: int,
    uid: int,
    gid: int,
) -> Effect:
    """Change any of mode, owner (owner_uid/owner_gid), mtime and size in one step.

    chown to another owner or group: root only (EPERM); chmod and setting mtime: the owner
    or root (EPERM); size: truncate semantics and rules. ctime becomes `ts` when anything
    is given; an explicit mtime_ms wins over the one a size change sets.
    """
    check_caller(ts, uid, gid)
    inode = target(t, path, uid, gid)
    changes: dict[str, Any] = {}
    if mode is not None:
        check_int(mode, "mode", 0, 0o7777, path=path)
        if uid not in (0, inode.uid):
            raise FsError(errno.EPERM, "only the owner may chmod", path=path)
        changes["mode"] = mode
    for key, value, current in (("uid", owner_uid, inode.uid), ("gid", owner_gid, inode.gid)):
        if value is None:
            continue
        check_int(value, f"owner_{key}", 0, MAX_ID, path=path)
        if value != current and uid != 0:
            raise FsError(errno.EPERM, "only root may chown", path=path)
        changes[key] = value
    dropped: list[dict[str, Any]] = []
    clipped: list[dict[str, Any]] = []
    freed: list[dict[str, Any]] = []
    if size is not None:
        check_int(size, "size", 0, 2**63 - 1, path=path)
        if size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, "size past the largest file size", path=path)
        writable_file(t, path, uid, gid)
        dropped, clipped, freed = plan_resize(t, inode, size)
        if size != inode.size:
            changes.update(size=size, mtime_ms=ts)
    if mtime_ms is not None:
        check_int(mtime_ms, "mtime_ms", 0, 2**63 - 1, path=path)
        if uid not in (0, inode.uid):
            raise FsError(errno.EPERM, "only the owner may set times", path=path)
        changes["mtime_ms"] = mtime_ms
    given = any(v is not None for v in (mode, owner_uid, owner_gid, mtime_ms, size))
    attr = replace(inode, **changes, ctime_ms=ts) if given else inode
    effect: Effect = {
        "ino": inode.ino,
        "attr": attr.to_dict(),
        "dropped": dropped,
        "clipped": clipped,
        "freed": freed,
    }
    t.replay("setattr", effect)
    return effect


def alloc_slices(t: Tables, count: int, *, ts: int, uid: int, gid: int) -> Effect:
    """Reserve `count` consecutive slice ids (1..2**20) for a client to upload blocks under.

    An id is consumed by the one write that commits it; the ids are stamped with `ts`, and
    the upload sweeper expires them (`expire_slices`) if they are still uncommitted a grace
    later, after which a write of one fails with EINVAL.
    """
    check_caller(ts, uid, gid)
    check_int(count, "count", 1, MAX_ALLOC_COUNT)
    effect: Effect = {"first": t.next_slice_id, "count": count, "ts": ts}
    t.replay("alloc_slices", effect)
    return effect


def expire_slices(
    t: Tables, before_ts: int, forget: list[list[int]] | None = None, *, ts: int, uid: int, gid: int
) -> Effect:
    """Expire the pending id ranges reserved at or before `before_ts` (at most
    MAX_EXPIRE_RANGES of them, oldest first) and forget the `forget` ranges of expired ids.

    The upload sweeper's op (changelog/sweeper.py; the HTTP API refuses it from clients): once
    this commits, no write can commit an expired id (EINVAL), so the sweeper may delete their
    blocks. Computed here, in log order, so an id committed just before is never expired.
    Errors: EPERM unless uid 0, EINVAL for a `before_ts` after `ts` or a bad range.
    """
    check_caller(ts, uid, gid)
    if uid != 0:
        raise FsError(errno.EPERM, "only the source itself expires slice ids")
    check_int(before_ts, "before_ts", 0, ts)
    ranges = forget or []
    if len(ranges) > MAX_EXPIRE_RANGES:
        raise FsError(errno.EINVAL, f"forget at most {MAX_EXPIRE_RANGES} ranges at once")
    for r in ranges:
        if len(r) != 2 or not 0 <= r[0] < r[1] <= 2**63:
            raise FsError(errno.EINVAL, f"bad id range {r!r}: need [first, end) with first < end")
    effect: Effect = {
        "expired": t.pending.expirable(before_ts, MAX_EXPIRE_RANGES),
        "forgotten": t.pending.expired_overlap(ranges),
    }
    t.replay("expire_slices", effect)
    return effect
