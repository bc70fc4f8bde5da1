"""Whose replica a database holds: the stamp in its `meta` table.

A replica database belongs to one mirror of one volume, and its `copied` block rows are true of
one bucket. The stamp says which: `volume_id`, `volume`, `mirror`, `bucket` (meta keys).

- `mirror create` writes it in the transaction that loads the snapshot (follow/loader.py), and
  refuses, before changing anything, a database stamped for another volume or mirror
  (`check_for_create`), unless `--force`, which wipes it first.
- The daemon refuses to run on a database stamped for anything else (`claim_for_daemon`).
- A bucket that differs from the stamp (the config moved the mirror to another bucket) makes
  every `copied` row pending again, in the transaction that re-stamps it: no `copied` row may
  point at an object the bucket in use does not have. The replicator's presence check then
  finds the blocks the new bucket already holds without copying them.

A database stamped before volume ids existed (`volume_id` empty, or only `mirror` and `volume`
written by an older `create`) matches on the names and is completed with the config's values;
its `copied` rows are taken to be true of the configured bucket (the only one it knew).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import structlog

from mirror.db import Database
from mirror.errors import MirrorError
from volume.config import MirrorRegion

log = structlog.get_logger(__name__)

STAMP_KEYS = ("volume_id", "volume", "mirror", "bucket")


@dataclass(frozen=True)
class Stamp:
    volume_id: str  # "" when unknown (an old config or an old stamp)
    volume: str
    mirror: str
    bucket: str  # "" when unknown (stamped by an older `create`)

    @classmethod
    def of(cls, region: MirrorRegion) -> Stamp:
        return cls(region.volume_id, region.volume, region.name, region.bucket)

    def describe(self) -> str:
        vid = f" (id {self.volume_id})" if self.volume_id else ""
        bucket = f", bucket {self.bucket}" if self.bucket else ""
        return f"mirror {self.mirror!r} of volume {self.volume!r}{vid}{bucket}"

    def is_same_owner(self, other: Stamp) -> bool:
        """Same mirror of the same volume (ids compared when both sides know theirs)."""
        ids_differ = bool(self.volume_id and other.volume_id and self.volume_id != other.volume_id)
        return self.mirror == other.mirror and self.volume == other.volume and not ids_differ


async def read_stamp(conn: asyncpg.Connection) -> Stamp | None:
    """The database's stamp; None if it has none (never loaded, or not a replica at all)."""
    if not await conn.fetchval("SELECT to_regclass('meta') IS NOT NULL"):
        return None
    rows = await conn.fetch("SELECT key, value FROM meta WHERE key = any($1::text[])", STAMP_KEYS)
    values = {r["key"]: r["value"] for r in rows}
    if not values.get("mirror"):
        return None
    return Stamp(**{k: values.get(k, "") for k in STAMP_KEYS})


async def write_stamp(conn: asyncpg.Connection, stamp: Stamp) -> None:
    """Write every key of the stamp (in the caller's transaction, if any)."""
    await conn.executemany(
        "INSERT INTO meta (key, value) VALUES ($1, $2)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [(k, getattr(stamp, k)) for k in STAMP_KEYS if getattr(stamp, k)],
    )


async def reset_copied(conn: asyncpg.Connection) -> int:
    """Every `copied` row back to pending (their objects are in another bucket); returns how
    many. Attempts start again; the replicator looks before it copies (PresenceCheck)."""
    status = await conn.execute(
        "UPDATE blocks SET state = 'pending', attempts = 0, next_attempt_at = now(),"
        " copied_at = NULL, claimed_by = NULL, lease_until = NULL, last_error = NULL"
        " WHERE state = 'copied'"
    )
    return int(status.rsplit(" ", 1)[-1])


class ForeignDatabaseError(MirrorError):
    """The replica database holds (or is stamped for) another mirror or volume; nothing was
    changed. `holds` is its stamp."""

    def __init__(self, message: str, *, holds: Stamp | None, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.holds = holds


async def check_for_create(db: Database, want: Stamp, *, force: bool) -> Stamp | None:
    """Before `mirror create` changes anything: may this database become `want`'s replica?

    Returns the stamp it holds now (None: none). Raises ForeignDatabaseError if it holds
    another mirror or volume and not `force` (then the caller wipes it), or if it holds tables
    that are not a mirrorfs replica at all (never wiped: they are not ours).
    """
    async with db.acquire() as conn:
        holds = await read_stamp(conn)
    foreign_tables = await db.foreign_tables()
    if foreign_tables:
        raise ForeignDatabaseError(
            f"database {db.dsn} holds tables that are not a mirrorfs replica"
            f" ({', '.join(foreign_tables[:5])}{'...' if len(foreign_tables) > 5 else ''})",
            holds=holds,
            hint="give each mirror an empty database of its own",
        )
    if holds is None or holds.is_same_owner(want) or force:
        return holds
    raise ForeignDatabaseError(
        f"database {db.dsn} already holds {holds.describe()}; refusing to make it the replica"
        f" of {want.describe()}",
        holds=holds,
        hint="give each mirror a database of its own, or pass --force to wipe this one"
        " (its replica is lost)",
    )


async def claim_for_daemon(db: Database, want: Stamp) -> None:
    """At daemon start: the database must be stamped for this very mirror of this volume.

    Completes an old stamp with the config's values; a bucket different from the stamp's
    resets the `copied` rows and re-stamps, in one transaction. Raises ForeignDatabaseError
    for a database of anything else, or one no `mirror create` loaded.
    """
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE meta IN EXCLUSIVE MODE")  # one claimer at a time
        holds = await read_stamp(conn)
        if holds is None:
            raise ForeignDatabaseError(
                f"database {db.dsn} holds no mirror replica (no stamp): `mirror create` did"
                f" not load it, refusing to run {want.describe()} on it",
                holds=None,
                hint=f"create the mirror first (`mirrorfs mirror create {want.mirror}`), or fix"
                " the DSN in the config",
            )
        if not holds.is_same_owner(want):
            raise ForeignDatabaseError(
                f"database {db.dsn} holds {holds.describe()}, not {want.describe()}; refusing"
                " to run on it",
                holds=holds,
                hint="fix the mirror's DSN (or data_dir) in the config",
            )
        if holds.bucket and holds.bucket != want.bucket:
            reset = await reset_copied(conn)
            log.warning(
                "mirror.bucket_changed",
                mirror=want.mirror,
                stamped=holds.bucket,
                bucket=want.bucket,
                copied_rows_reset=reset,
            )
        if holds != want:
            await write_stamp(conn, want)
