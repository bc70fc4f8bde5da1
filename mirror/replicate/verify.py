"""`mirrorfs mirror verify NAME [PATH] [--repair]`: prove the mirror bucket holds what the
replica says it holds.

Every block the replica marks 'copied' (of the files under PATH, or of the whole volume) is read
back from the mirror bucket and checked against the checksum the changelog recorded: it is
*missing* or *corrupt*, or fine. Blocks still pending or failed are not expected in the bucket
yet; they are counted, not checked (`mirror status` says why they wait). With `repair`, each
bad block is copied again from the source bucket (verified on the way); one that cannot be
repaired goes back to the copy queue with the reason, so the replicator keeps trying and
readers fall back to the source meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from mirror.db import Database
from mirror.replica import Replica
from mirror.replicate.copier import BlockCopier, CopyError
from mirror.replicate.queue import SQL_SUBTREE_SLICES, BlockState, Claim
from objstore import NotFoundError, ObjectStore
from objstore.checksum import checksum

DEFAULT_VERIFY_CONCURRENCY = 16
PAGE_BLOCKS = 1000
MAX_PATHS_RESOLVED = 100  # a path costs a walk up the dentries (no index by child): cap it
MISSING = "missing"
CORRUPT = "corrupt"

_SQL_PATHS = (
    "WITH RECURSIVE up(ino, path, depth) AS ("
    " SELECT d.parent, '/' || d.name, 0 FROM chunk_refs r JOIN dentries d ON d.ino = r.ino"
    " WHERE r.slice_id = $1"
    " UNION ALL SELECT d.parent, '/' || d.name || u.path, u.depth + 1"
    " FROM up u JOIN dentries d ON d.ino = u.ino WHERE u.ino <> 1 AND u.depth < 4096)"
    " SELECT DISTINCT path FROM up WHERE ino = 1 ORDER BY path"
)


@dataclass(frozen=True)
class BlockProblem:
    """One block the replica says is copied that the mirror bucket does not hold right."""

    slice_id: int
    idx: int
    key: str
    problem: str  # missing | corrupt
    detail: str
    paths: tuple[str, ...] = ()
    repaired: bool = False
    repair_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "slice_id": self.slice_id,
            "idx": self.idx,
            "key": self.key,
            "problem": self.problem,
            "detail": self.detail,
            "paths": list(self.paths),
            "repaired": self.repaired,
            "repair_error": self.repair_error,
        }


@dataclass
class VerifyReport:
    path: str | None
    repair: bool
    blocks_checked: int = 0
    bytes_checked: int = 0
    blocks_not_copied: int = 0  # pending or failed: not expected in the mirror bucket yet
    problems: list[BlockProblem] = field(default_factory=list)

    @property
    def missing(self) -> list[BlockProblem]:
        return [p for p in self.problems if p.problem == MISSING]

    @property
    def corrupt(self) -> list[BlockProblem]:
        return [p for p in self.problems if p.problem == CORRUPT]

    @property
    def repaired(self) -> list[BlockProblem]:
        return [p for p in self.problems if p.repaired]

    @property
    def unrepaired(self) -> list[BlockProblem]:
        return [p for p in self.problems if not p.repaired]

    @property
    def is_ok(self) -> bool:
        """Nothing missing or corrupt is left (the CLI exits non-zero otherwise)."""
        return not self.unrepaired

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "repair": self.repair,
            "ok": self.is_ok,
            "blocks_checked": self.blocks_checked,
            "bytes_checked": self.bytes_checked,
            "blocks_not_copied": self.blocks_not_copied,
            "blocks_missing": len(self.missing),
            "blocks_corrupt": len(self.corrupt),
            "blocks_repaired": len(self.repaired),
            "problems": [p.as_dict() for p in self.problems],
        }


async def verify(
    db: Database,
    mirror_store: ObjectStore,
    path: str | None = None,
    *,
    repair: bool = False,
    source_store: ObjectStore | None = None,
    concurrency: int = DEFAULT_VERIFY_CONCURRENCY,
    on_progress: Callable[[VerifyReport], None] | None = None,
) -> VerifyReport:
    """Check every copied block under `path` (None or "/": the whole volume); with `repair`,
    re-copy the bad ones from `source_store`.

    Reads every checked block whole from the mirror bucket. Without `repair` nothing is
    written anywhere. Raises the replica's FsError for a bad path, ValueError for repair
    without a source store, and StoreError if the mirror bucket cannot be read at all
    (a block that is merely absent is a finding, not an error).
    """
    if repair and source_store is None:
        raise ValueError("repair needs the source store to copy from")
    report = VerifyReport(path, repair)
    todo: asyncio.Queue[Claim | None] = asyncio.Queue(maxsize=2 * concurrency)
    found: list[BlockProblem] = []

    async def checker() -> None:
        while (block := await todo.get()) is not None:
            problem = await _check(mirror_store, block)
            report.blocks_checked += 1
            report.bytes_checked += block.size
            if problem is not None:
                found.append(problem)

    slice_ids = await _scope(db, path)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(checker()) for _ in range(concurrency)]
            async for page in _pages(db, slice_ids):
                for block, state in page:
                    if state == BlockState.COPIED:
                        await todo.put(block)
                    else:
                        report.blocks_not_copied += 1
                if on_progress is not None:
                    on_progress(report)
            for _ in tasks:
                await todo.put(None)
    except BaseExceptionGroup as group:
        # Callers (the CLI) handle StoreError/MirrorError, not groups: raise the first cause.
        raise group.exceptions[0] from None
    report.problems = await _still_live(db, found)
    if repair:
        assert source_store is not None
        copier = BlockCopier(source_store, mirror_store)
        report.problems = [await _repair(db, copier, p) for p in report.problems]
    report.problems = await _with_paths(db, report.problems)
    if on_progress is not None:
        on_progress(report)
    return report


async def _check(store: ObjectStore, block: Claim) -> BlockProblem | None:
    try:
        data = await store.get(block.key)
    except NotFoundError:
        return BlockProblem(block.slice_id, block.idx, block.key, MISSING, "not in the bucket")
    got = checksum(data)
    if len(data) == block.size and got == block.checksum:
        return None
    detail = (
        f"holds {len(data)} bytes {got}; the replica recorded {block.size} bytes {block.checksum}"
    )
    return BlockProblem(block.slice_id, block.idx, block.key, CORRUPT, detail)


async def _scope(db: Database, path: str | None) -> list[int] | None:
    """The slice ids of the files under `path`; None for the whole volume."""
    if path is None or path.strip("/") == "":
        return None
    ino = (await Replica(db).lookup(path)).ino
    async with db.acquire() as conn:
        return sorted(r["slice_id"] for r in await conn.fetch(SQL_SUBTREE_SLICES, ino))


async def _pages(
    db: Database, slice_ids: list[int] | None
) -> AsyncIterator[list[tuple[Claim, str]]]:
    """(block, state) of every block in scope, a page at a time, in (slice, index) order."""
    cols = "slice_id, idx, size, checksum, state"
    if slice_ids is None:
        last = (-1, -1)
        while True:
            async with db.acquire() as conn:
                rows = await conn.fetch(
                    f"SELECT {cols} FROM blocks WHERE (slice_id, idx) > ($1, $2)"
                    " ORDER BY slice_id, idx LIMIT $3",
                    *last,
                    PAGE_BLOCKS,
                )
            if not rows:
                return
            last = (rows[-1]["slice_id"], rows[-1]["idx"])
            yield [_row(r) for r in rows]
        return
    step = max(1, PAGE_BLOCKS // 4)
    for start in range(0, len(slice_ids), step):
        async with db.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {cols} FROM blocks WHERE slice_id = any($1::bigint[])"
                " ORDER BY slice_id, idx",
                slice_ids[start : start + step],
            )
        yield [_row(r) for r in rows]


def _row(r: Any) -> tuple[Claim, str]:
    return Claim(r["slice_id"], r["idx"], r["size"], r["checksum"]), r["state"]


async def _still_live(db: Database, problems: list[BlockProblem]) -> list[BlockProblem]:
    """Drop findings about blocks that left the replica during the scan (their slice was freed
    and GC may already have deleted the mirror copy: not a problem)."""
    if not problems:
        return []
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT b.slice_id, b.idx FROM blocks b"
            " JOIN unnest($1::bigint[], $2::integer[]) AS x(slice_id, idx)"
            " ON b.slice_id = x.slice_id AND b.idx = x.idx WHERE b.state = 'copied'",
            [p.slice_id for p in problems],
            [p.idx for p in problems],
        )
    live = {(r["slice_id"], r["idx"]) for r in rows}
    return sorted(
        (p for p in problems if (p.slice_id, p.idx) in live), key=lambda p: (p.slice_id, p.idx)
    )


async def _repair(db: Database, copier: BlockCopier, p: BlockProblem) -> BlockProblem:
    async with db.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT size, checksum FROM blocks WHERE slice_id = $1 AND idx = $2", p.slice_id, p.idx
        )
    if row is None:  # freed meanwhile: nothing to repair
        return replace(p, repaired=True)
    block = Claim(p.slice_id, p.idx, row["size"], row["checksum"])
    try:
        await copier.copy(block, check_existing=False)
    except CopyError as exc:
        # Back to the queue with the reason: the replicator keeps trying (or fails it for good,
        # e.g. the source copy is gone too), and readers fall back to the source meanwhile.
        async with db.acquire() as conn:
            await conn.execute(
                "UPDATE blocks SET state = 'pending', next_attempt_at = now(), last_error = $3"
                " WHERE slice_id = $1 AND idx = $2 AND state = 'copied'",
                p.slice_id,
                p.idx,
                f"{exc.reason}: {p.problem} in the mirror bucket (found by verify) and the"
                f" repair failed: {exc.detail}",
            )
        return replace(p, repair_error=str(exc))
    async with db.acquire() as conn:
        await conn.execute(
            "UPDATE blocks SET copied_at = now(), last_error = NULL"
            " WHERE slice_id = $1 AND idx = $2 AND checksum = $3",
            p.slice_id,
            p.idx,
            block.checksum,
        )
    return replace(p, repaired=True)


async def _with_paths(db: Database, problems: list[BlockProblem]) -> list[BlockProblem]:
    out: list[BlockProblem] = []
    async with db.acquire() as conn:
        for i, p in enumerate(problems):
            if i < MAX_PATHS_RESOLVED:
                rows = await conn.fetch(_SQL_PATHS, p.slice_id)
                p = replace(p, paths=tuple(r["path"] for r in rows))
            out.append(p)
    return out
