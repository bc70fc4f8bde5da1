"""Writing a file: check the destination, upload blocks to the source bucket, then commit.

The order is the whole point: a committed record never names a block that is not in the source
bucket, so no reader anywhere can find metadata pointing at nothing. (A put in a mirror region
with `copy_writes` also copies each block into the region's bucket after the source has it:
fallback/mirror_copy.py.)

Nothing leaks, in three layers:
- The destination is checked before anything is uploaded (a directory, a trailing slash, a bad
  name, a file where a directory should be, a missing parent when `parents` is off): a clear
  FsError and an untouched bucket. Missing parent directories are made before the upload, as
  `mkdir -p` does (a put that then fails removes the ones it made, when still empty).
- A put that fails after uploading (its commit refused, the local file unreadable, the bucket
  failing) deletes the blocks it uploaded that no committed op names, best effort. When the
  commit's outcome is unknown (the source did not answer) they stay: they may be committed.
- Whatever is left (a client killed between upload and commit) belongs to the source's upload
  sweeper (changelog/sweeper.py): slice ids not committed within the source's
  `upload_grace_s` are expired by a Raft op, so a late commit fails cleanly, and their blocks
  are deleted.

A file whose commit fits one request (`max_ops` ops: create, truncate and one write per piece
of at most a chunk) is committed in one request, replacing the destination's content in place.
A bigger one, or one whose upload outlasts `commit_interval_s` (slice ids must be committed
within the source's grace), is committed in several requests under a hidden temporary name in
the destination's directory, `.mirrorfs-put-<16 hex>-<name>`, then renamed over the destination
in a last request of its own: readers see the old file or the new one, never a part (it is a
new inode, with the writer's mode and owner). A writer that dies part-way leaves that temporary
file: it shows in listings under its recognisable name, and the next put into that directory
unlinks every such file whose mtime (refreshed by each of its commits) is older than the
source's upload grace; `rm` removes one at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import structlog

from fallback.mirror_copy import MirrorCopy
from fallback.source_view import SourceView
from objstore import ObjectStore
from objstore.checksum import checksum
from objstore.errors import StoreError
from objstore.keys import block_key, block_sizes
from volume.client import SourceClient
from volume.errors import ChangelogError, FsError
from volume.inode import BLOCK_SIZE, CHUNK_SIZE, MAX_NAME_BYTES, Inode
from volume.paths import join_path, split_path

log = structlog.get_logger(__name__)

DEFAULT_UPLOAD_CONCURRENCY = 16  # requests in flight to the source bucket per client
DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755
# The source refuses a request of more ops (changelog/api.py MAX_OPS_PER_BATCH).
DEFAULT_MAX_OPS_PER_REQUEST = 10_000
# The source's default `upload_grace_s` (volume/config.py): uncommitted slice ids expire then.
DEFAULT_UPLOAD_GRACE_S = 3600.0
TEMP_PREFIX = ".mirrorfs-put-"
TEMP_SCAN_FIRST_PAGE = 2
TEMP_SCAN_PAGE = 100
ALLOC_WHEN_SIZE_UNKNOWN = 16  # ids reserved at a time when the file's size is not knowable
# Answers that prove a request was not applied; any other failure leaves its outcome unknown.
_REFUSED_STATUSES = (400, 401, 403)


@dataclass(frozen=True)
class WritePolicy:
    """How a put cuts its commit into requests. Defaults suit production; tests lower them.

    `max_ops`: ops per request (the source's limit). `piece_bytes`: bytes per write op, a
    divisor of the chunk size. `commit_interval_s`: the longest a put holds uploaded, uncommitted
    slices before committing them (well below the source's `upload_grace_s`, after which they
    expire). `temp_grace_s`: age after which another put removes an abandoned temporary file.
    """

    max_ops: int = DEFAULT_MAX_OPS_PER_REQUEST
    piece_bytes: int = CHUNK_SIZE
    commit_interval_s: float = DEFAULT_UPLOAD_GRACE_S / 4
    temp_grace_s: float = DEFAULT_UPLOAD_GRACE_S

    def __post_init__(self) -> None:
        if self.max_ops < 3:
            raise ValueError(
                f"max_ops must be >= 3 (create, a write, a rename), not {self.max_ops}"
            )
        if not 0 < self.piece_bytes <= CHUNK_SIZE or CHUNK_SIZE % self.piece_bytes:
            raise ValueError(f"piece_bytes must divide the chunk size, not {self.piece_bytes}")

    @classmethod
    def for_grace(cls, upload_grace_s: float) -> WritePolicy:
        """The policy for a source whose uncommitted uploads expire after `upload_grace_s`."""
        return cls(commit_interval_s=upload_grace_s / 4, temp_grace_s=upload_grace_s)


@dataclass(frozen=True)
class WriteResult:
    path: str
    size: int
    version: int
    slices: int


@dataclass(frozen=True)
class Destination:
    """A checked put destination: `path` = `parent`/`name`; `missing` are the parent
    directories to make, outermost first (empty when the parent exists)."""

    path: str
    parent: str
    name: str
    missing: tuple[str, ...] = ()


@dataclass
class _Piece:
    slice_id: int
    offset: int
    size: int
    keys: list[str]
    checksums: list[str] = field(default_factory=list)
    mirrored: list[int] = field(default_factory=list)  # block indices also in a mirror bucket

    def write_op(self, path: str) -> dict[str, Any]:
        return {
            "op": "write",
            "args": {
                "path": path,
                "chunk_index": self.offset // CHUNK_SIZE,
                "pos": self.offset % CHUNK_SIZE,
                "slice_id": self.slice_id,
                "size": self.size,
                "checksums": self.checksums,
            },
        }


def _error(err: int, message: str, path: str, hint: str | None = None) -> FsError:
    exc = FsError(err, message, path=path)
    exc.hint = hint
    return exc


def _size_of(f: BinaryIO) -> int | None:
    """The bytes left in `f` if knowable (to reserve slice ids in one go), else None."""
    try:
        return os.fstat(f.fileno()).st_size - f.tell()
    except (OSError, AttributeError, io.UnsupportedOperation):
        pass
    try:
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
        return end - here
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


async def read_pieces(f: BinaryIO, piece_bytes: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """The file in pieces of exactly `piece_bytes` (the last one shorter), which never cross a
    chunk boundary since `piece_bytes` divides the chunk size. A short read is topped up."""
    while True:
        piece = await asyncio.to_thread(f.read, piece_bytes)
        if not piece:
            return
        while len(piece) < piece_bytes:
            more = await asyncio.to_thread(f.read, piece_bytes - len(piece))
            if not more:
                break
            piece += more
        yield piece


async def upload_slice(store: ObjectStore, slice_id: int, data: bytes | memoryview) -> list[str]:
    """PUT every block of one slice (at most a chunk: 16 blocks at once); returns their
    checksums in block order. The store's ConcurrencyLayer bounds requests across slices.
    On a failure every other PUT is let finish before the first error propagates: a cancelled
    PUT may still land (a thread, a request already sent), after the caller deleted the key."""
    view = memoryview(data)

    async def one(i: int) -> str:
        block = bytes(view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
        await store.put(block_key(slice_id, i, len(block)), block)
        return checksum(block)

    count = -(-len(view) // BLOCK_SIZE)
    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, str)]


async def check_destination(
    view: SourceView, path: str, *, parents: bool, min_version: int = 0
) -> Destination:
    """Check where a put will land, before anything is uploaded.

    Raises FsError (with a hint): EINVAL for a relative path, a trailing slash or a bad name,
    ENAMETOOLONG, EISDIR for a directory (or the root), EEXIST for a symlink (never followed),
    ENOTDIR for a file where a directory should be, ENOENT for a missing parent when `parents`
    is off. Permissions are the source's to check at commit.
    """
    if isinstance(path, str) and len(path) > 1 and path.endswith("/"):
        raise _error(
            errno.EINVAL,
            "a destination ending in '/' names no file",
            path,
            f"name the file, e.g. {path}NAME",
        )
    parts = split_path(path)
    if not parts:
        raise _error(errno.EISDIR, "the root is a directory", path, "name a file under it")
    parent = "/" + "/".join(parts[:-1])
    try:
        _, inode = await view.lookup(path, min_version=min_version)
    except FsError as exc:
        if exc.errno != errno.ENOENT:
            raise
    else:
        _check_target(inode, path)
        return Destination(path, parent, parts[-1])
    missing: list[str] = []
    for depth in range(len(parts) - 1, 0, -1):
        here = "/" + "/".join(parts[:depth])
        try:
            _, inode = await view.lookup(here, min_version=min_version)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            missing.insert(0, here)
            continue
        if not inode.is_dir:
            raise _error(errno.ENOTDIR, "a path component is not a directory", here)
        break
    if missing and not parents:
        raise _error(
            errno.ENOENT,
            "parent directory does not exist",
            missing[0],
            "create it first (mkdir -p), or let put make it (drop --no-parents)",
        )
    return Destination(path, parent, parts[-1], tuple(missing))


def _check_target(inode: Inode, path: str) -> None:
    if inode.is_dir:
        raise _error(errno.EISDIR, "is a directory", path, f"name the file, e.g. {path}/NAME")
    if not inode.is_file:
        raise _error(errno.EEXIST, "a symlink is in the way (symlinks are not followed)", path)


def temp_name(name: str) -> str:
    """The hidden name a multi-request put commits under: TEMP_PREFIX, 16 random hex digits,
    '-', then as much of `name` as fits in a name."""
    head = f"{TEMP_PREFIX}{secrets.token_hex(8)}-"
    room = MAX_NAME_BYTES - len(head.encode())
    return head + name.encode()[:room].decode(errors="ignore")


async def remove_stale_temps(
    client: SourceClient, view: SourceView, directory: str, *, grace_s: float, uid: int, gid: int
) -> int:
    """Unlink temporary files of dead puts in `directory` (mtime older than `grace_s`); returns
    how many. Best effort: errors (permissions, a race with their owner) are logged, never raised.
    """
    removed = 0
    cutoff_ms = time.time() * 1000 - grace_s * 1000
    after = TEMP_PREFIX
    # Temporary names sort together, from TEMP_PREFIX on; the first page is small because
    # there are almost never any, and a page of 100 entries' attributes on every put was 13%
    # of a small-file writer's CPU (and as much of the leader's) in a large directory.
    limit = TEMP_SCAN_FIRST_PAGE
    try:
        while True:
            _, rows = await view.readdir(directory, after=after, limit=limit)
            temps = [(n, a) for n, a in rows if n.startswith(TEMP_PREFIX)]
            for name, attr in temps:
                if attr.is_file and attr.mtime_ms < cutoff_ms:
                    with contextlib.suppress(FsError):
                        await client.op("unlink", path=join_path(directory, name), uid=uid, gid=gid)
                        removed += 1
                        log.info("put.stale_temp_removed", path=join_path(directory, name))
            if len(temps) < len(rows) or len(rows) < limit:
                return removed
            after, limit = rows[-1][0], TEMP_SCAN_PAGE
    except (ChangelogError, OSError) as exc:
        log.warning("put.stale_temp_scan_failed", directory=directory, error=str(exc))
        return removed


class _Put:
    """One put's state: uploaded pieces not yet committed, the temporary file if any."""

    def __init__(
        self,
        client: SourceClient,
        store: ObjectStore,
        dest: Destination,
        policy: WritePolicy,
        *,
        mode: int,
        uid: int,
        gid: int,
        mirror: MirrorCopy | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.mirror = mirror
        self.mirrored: list[tuple[int, int]] = []  # committed blocks also in the mirror bucket
        self.dest = dest
        self.policy = policy
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.made_dirs: list[str] = []  # parents this put made, outermost first
        self.uncommitted: list[_Piece] = []  # uploaded (or uploading), named by no commit
        self.group_started = 0.0  # monotonic time the uncommitted pieces' ids were reserved
        self.ids: list[int] = []  # reserved for this group, not used yet
        self.temp: str | None = None
        self.committed = 0
        self.size = 0
        self.version = 0

    # -- the steps ---------------------------------------------------------------------------

    def _limit(self) -> int:
        """Writes the next request may carry, leaving room for its other ops."""
        return self.policy.max_ops - 1  # room for the temp's create in the first flush

    async def add(self, piece: bytes, pieces_left: int | None) -> None:
        """Upload one piece (reserving ids first, committing the group before when it is full
        or has waited `commit_interval_s`)."""
        if self.uncommitted and (
            len(self.uncommitted) >= self._limit()
            or time.monotonic() - self.group_started >= self.policy.commit_interval_s
        ):
            await self._flush()
        if not self.ids:
            room = self._limit() - len(self.uncommitted)
            want = pieces_left if pieces_left is not None else ALLOC_WHEN_SIZE_UNKNOWN
            alloc = await self.client.op(
                "alloc_slices", count=max(1, min(want, room)), uid=self.uid, gid=self.gid
            )
            first, count = int(alloc["effect"]["first"]), int(alloc["effect"]["count"])
            self.ids = list(range(first, first + count))
            if not self.uncommitted:
                self.group_started = time.monotonic()
        slice_id = self.ids.pop(0)
        keys = [block_key(slice_id, i, n) for i, n in enumerate(block_sizes(len(piece)))]
        item = _Piece(slice_id, self.size, len(piece), keys)
        self.uncommitted.append(item)  # before the upload: a failed one leaves some blocks
        item.checksums = await upload_slice(self.store, slice_id, piece)
        if self.mirror is not None:  # after the source: a committed block is always there
            item.mirrored = await self.mirror.put_slice(slice_id, piece)
        self.size += len(piece)

    async def _flush(self) -> None:
        """Commit the uncommitted pieces into the temporary file (made by the first flush)."""
        ops: list[dict[str, Any]] = []
        if self.temp is None:
            self.temp = join_path(self.dest.parent, temp_name(self.dest.name))
            ops.append({"op": "create", "args": {"path": self.temp, "mode": self.mode}})
        await self._commit(ops, self.temp, [])
        self.ids = []  # ids reserved for this group and left over stay unused (they expire)

    async def finish(self) -> WriteResult:
        """The last request(s): everything in one when it fits; else the rest into the
        temporary file, then the rename alone, so that the destination changes only once every
        write has committed (whether or not the source applies a request all or nothing)."""
        if self.temp is None and len(self.uncommitted) + 2 <= self.policy.max_ops:
            path = self.dest.path
            ops = [
                {"op": "create", "args": {"path": path, "mode": self.mode, "exclusive": False}},
                {"op": "truncate", "args": {"path": path, "size": 0}},
            ]
            await self._commit(ops, path, [])
        else:
            if self.temp is None or self.uncommitted:
                await self._flush()
            assert self.temp is not None
            rename = {"op": "rename", "args": {"src": self.temp, "dst": self.dest.path}}
            await self._commit([], self.temp, [rename])
            self.temp = None
        return WriteResult(self.dest.path, self.size, self.version, self.committed)

    async def _commit(
        self, before: list[dict[str, Any]], path: str, after: list[dict[str, Any]]
    ) -> None:
        """One request: `before`, a write per uncommitted piece (onto `path`), `after`.

        Pieces whose write committed leave `uncommitted`; on a refusal the rest stay there (for
        `discard`). When the outcome is unknown, none stays: they may have been committed.
        """
        pieces = self.uncommitted
        ops = [*before, *(p.write_op(path) for p in pieces), *after]
        try:
            result = await self.client.ops(ops, uid=self.uid, gid=self.gid)
        except ChangelogError as exc:
            if exc.http_status not in _REFUSED_STATUSES:
                self.uncommitted = []
            raise
        except BaseException:
            self.uncommitted = []
            raise
        writes = result.results[len(before) : len(before) + len(pieces)]
        self.uncommitted = [p for p, r in zip(pieces, writes, strict=True) if not r.get("ok")]
        self.mirrored += [
            (p.slice_id, i)
            for p, r in zip(pieces, writes, strict=True)
            if r.get("ok")
            for i in p.mirrored
        ]
        self.committed += len(pieces) - len(self.uncommitted)
        self.version = max(self.version, result.version)
        result.raise_first_error()

    async def make_parents(self) -> None:
        """Make the missing parent directories, one request each like `mkdir -p` (one made by
        someone else meanwhile is fine; the commit checks what is there)."""
        for directory in self.dest.missing:
            try:
                await self.client.op(
                    "mkdir", path=directory, mode=DEFAULT_DIR_MODE, uid=self.uid, gid=self.gid
                )
            except FsError as exc:
                if exc.errno != errno.EEXIST:
                    raise
            else:
                self.made_dirs.append(directory)

    async def discard(self) -> None:
        """After a failure: delete the blocks no commit names, unlink the temporary file and
        remove the parents this put made if still empty; best effort (what is left is the
        sweeper's, or the next put's, to remove)."""
        keys = [key for piece in self.uncommitted for key in piece.keys]
        copies = [piece.keys[i] for piece in self.uncommitted for i in piece.mirrored]
        self.uncommitted = []
        for key in keys:
            try:
                await self.store.delete(key)
            except StoreError as exc:
                log.warning("put.cleanup_delete_failed", key=key, error=str(exc))
        if self.mirror is not None:
            await self.mirror.discard(copies)
        if self.temp is not None:
            try:
                await self.client.op("unlink", path=self.temp, uid=self.uid, gid=self.gid)
            except (ChangelogError, OSError) as exc:
                log.warning("put.cleanup_unlink_failed", path=self.temp, error=str(exc))
        for directory in reversed(self.made_dirs):
            try:
                await self.client.op("rmdir", path=directory, uid=self.uid, gid=self.gid)
            except (ChangelogError, OSError):
                break  # not empty (someone else uses it), or the source is away: keep it


async def write_file(
    client: SourceClient,
    store: ObjectStore,
    path: str,
    f: BinaryIO,
    *,
    mode: int = DEFAULT_FILE_MODE,
    uid: int = 0,
    gid: int = 0,
    parents: bool = True,
    policy: WritePolicy | None = None,
    min_version: int = 0,
    mirror: MirrorCopy | None = None,
) -> WriteResult:
    """Replace `path` with the contents of `f` (created if missing, parents too unless
    `parents` is off). Returns the version of the commit that made the new content visible.

    Raises FsError before uploading anything for a bad destination (see `check_destination`),
    or the op's FsError after (the put's blocks are deleted, nothing of it is visible); a read
    error of `f` or a bucket error likewise leaves nothing behind. Not idempotent: a retry is a
    new put (the destination ends with the content of the last one to commit).

    `mirror` (a put in a mirror region with `copy_writes`): each block also goes into the
    region's bucket, and once the local replica shows the write, is marked copied there
    (fallback/mirror_copy.py: best effort, never failing the put).
    """
    policy = policy or WritePolicy()
    view = SourceView(client, uid=uid, gid=gid)
    dest = await check_destination(view, path, parents=parents, min_version=min_version)
    put = _Put(client, store, dest, policy, mode=mode, uid=uid, gid=gid, mirror=mirror)
    sweep: asyncio.Task[int] | None = None
    if not dest.missing:  # beside the upload, so it costs the put no latency
        sweep = asyncio.create_task(
            remove_stale_temps(
                client, view, dest.parent, grace_s=policy.temp_grace_s, uid=uid, gid=gid
            )
        )
    size = _size_of(f)
    pieces_left = -(-size // policy.piece_bytes) if size else None
    try:
        await put.make_parents()
        async for piece in read_pieces(f, policy.piece_bytes):
            await put.add(piece, pieces_left)
            if pieces_left is not None:
                pieces_left = pieces_left - 1 or None  # past the size known: it grew
        result = await put.finish()
    except BaseException:
        if sweep is not None:
            sweep.cancel()
        await put.discard()
        raise
    if sweep is not None:
        await sweep
    if mirror is not None:
        await mirror.mark_copied(result.version, put.mirrored)
    return result
