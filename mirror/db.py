"""The mirror replica's PostgreSQL: opening it (DSN or embedded), the pool, migrations, errors.

asyncpg and OS errors are translated here and nowhere else: every module that talks to the
replica goes through `Database.acquire()` or `translating()`, so callers only ever see
`MirrorDbError` (or another `MirrorError` raised on purpose inside the block).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from mirror.embedded import EmbeddedPostgres, attach_embedded
from mirror.errors import MirrorDbError, MirrorError
from volume.config import MirrorRegion
from volume.errors import ChangelogError

DEFAULT_CONNECT_TIMEOUT_S = 10.0
# 0: with a floor, asyncpg's pool keeps reconnecting while the server is away and logs a
# traceback each time; connections come back on demand anyway (`connect` probes one).
DEFAULT_MIN_POOL_SIZE = 0
DEFAULT_MAX_POOL_SIZE = 8
# pg_advisory_xact_lock key serialising migrations: "mirrorfs" in ASCII.
MIGRATION_LOCK_KEY = 0x6D6972726F726673
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_CREATED = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:UNLOGGED\s+)?(TABLE|FUNCTION)\s+"
    r"(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
    re.IGNORECASE | re.MULTILINE,
)
_PASSWORD_IN_URL = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@")

# SQLSTATE classes worth retrying: connection exceptions, operator intervention (shutdown,
# starting up), transaction rollbacks (serialization failure, deadlock), insufficient resources.
_TEMPORARY_SQLSTATE_CLASSES = ("08", "57", "40", "53")


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by `***`, safe for messages and logs."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, sep, password = userinfo.partition(":")
            if password:
                userinfo = f"{user}{sep}***"
            netloc = f"{userinfo}@{host}"
        query = parts.query
        if "password" in query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="/")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return _PASSWORD_IN_URL.sub(r"\1***@", dsn)


def translate(exc: BaseException, dsn: str) -> MirrorDbError:
    """One clear `MirrorDbError` for an asyncpg or OS error; `dsn` is already masked."""
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return MirrorDbError(
            f"{exc} at {dsn}",
            dsn=dsn,
            hint="create the database (CREATE DATABASE ...) or fix the database name in the DSN",
        )
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return MirrorDbError(
            f"PostgreSQL rejected the password ({exc}) at {dsn}",
            dsn=dsn,
            hint="check the user and password in the DSN",
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return MirrorDbError(
            f"PostgreSQL refused the login ({exc}) at {dsn}",
            dsn=dsn,
            hint="check the user in the DSN and the server's pg_hba.conf",
        )
    if isinstance(exc, asyncpg.UndefinedTableError):
        return MirrorDbError(
            f"the replica schema is missing ({exc}) at {dsn}",
            dsn=dsn,
            hint="run the mirror's schema migration first",
        )
    if isinstance(exc, asyncpg.PostgresConnectionError):
        return MirrorDbError(
            f"lost the connection to PostgreSQL at {dsn}: {exc}",
            dsn=dsn,
            hint="is the server still running? the operation may be retried",
            temporary=True,
        )
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return MirrorDbError(
            f"PostgreSQL error {state} at {dsn}: {exc}",
            dsn=dsn,
            temporary=state[:2] in _TEMPORARY_SQLSTATE_CLASSES,
        )
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError):
        return MirrorDbError(
            f"invalid PostgreSQL DSN {dsn}: {exc}",
            dsn=dsn,
            hint="expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or ?host=/socket/dir)",
        )
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        # "connection is closed" and friends; InternalClientError ("cannot switch to state
        # 15; another operation is in progress") is a connection the server cut mid-statement
        # (seen under a fast shutdown). `Database.acquire` drops such a connection, so the
        # pool hands out a fresh one next time.
        return MirrorDbError(f"PostgreSQL client error at {dsn}: {exc}", dsn=dsn, temporary=True)
    if isinstance(exc, OSError | TimeoutError):
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return MirrorDbError(
            f"cannot reach PostgreSQL at {dsn}: {reason}",
            dsn=dsn,
            hint="is the server running and listening at that host/port (or socket dir)?",
            temporary=True,
        )
    return MirrorDbError(f"PostgreSQL client error at {dsn}: {exc!r}", dsn=dsn)


_TRANSLATED = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
    ValueError,
)
# Errors after which a connection may be mid-protocol: it must not go back to the pool.
_BROKEN = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


@contextlib.contextmanager
def translating(dsn: str) -> Iterator[None]:
    """Turn asyncpg/OS errors raised inside the block into MirrorDbError (`dsn` masked).

    A MirrorError raised inside passes through unchanged, and so does the volume's own error
    tree (a replica read's FsError is an OSError too, and must stay an FsError). ValueError is
    translated too: asyncpg raises it for a malformed DSN and for arguments it cannot encode,
    never our own code here.
    """
    try:
        yield
    except (MirrorError, ChangelogError):
        raise
    except _TRANSLATED as exc:
        raise translate(exc, dsn) from exc


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """The SQL files of mirror/migrations in version order; a misnamed or duplicate file raises."""
    found: dict[int, Migration] = {}
    for entry in resources.files("mirror.migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _MIGRATION_FILE.match(entry.name)
        if m is None:
            raise MirrorError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise MirrorError(f"two migration files have version {version}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def migration_objects() -> tuple[set[str], set[str]]:
    """(tables, functions) that the migrations create, read from the migration files, so they
    stay the one place the schema is declared; schema_migrations (made by `migrate`) included."""
    tables: set[str] = {"schema_migrations"}
    functions: set[str] = set()
    for m in load_migrations():
        for kind, name in _CREATED.findall(m.sql):
            (tables if kind.upper() == "TABLE" else functions).add(name.lower())
    return tables, functions


class Database:
    """A pool of connections to one replica database. Use `await Database.connect(dsn)`."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self.dsn = dsn  # masked
        # The embedded server this pool runs on, if open_database attached one.
        self.server: EmbeddedPostgres | None = None

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = DEFAULT_MIN_POOL_SIZE,
        max_size: int = DEFAULT_MAX_POOL_SIZE,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> Database:
        """Open the pool (min_size connections now, and one probed in any case). Raises
        MirrorDbError naming the masked DSN: bad DSN, unreachable server (temporary), missing
        database, rejected login."""
        masked = mask_dsn(dsn)
        with translating(masked):
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout_s,
                # JIT compiling costs tens of ms on the big unnest statements and buys nothing
                # for short OLTP queries.
                server_settings={"jit": "off", "application_name": "mirrorfs-mirror"},
            )
            try:
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            except BaseException:
                pool.terminate()
                raise
        return cls(pool, masked)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; asyncpg/OS errors inside the block become MirrorDbError. A
        connection that failed at the protocol level is terminated, not pooled again."""
        with translating(self.dsn):
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except _BROKEN:
                    with contextlib.suppress(asyncpg.InterfaceError):  # already released
                        if not conn.is_closed():
                            conn.terminate()
                    raise

    async def migrate(self) -> list[int]:
        """Bring the schema up to date; return the versions applied now ([] if none were due).

        Idempotent and safe to run from several processes at once: one transaction under an
        advisory lock, so a second migrator waits and then finds nothing to do. Raises
        MirrorDbError if the database has a version this code does not know (a newer mirrorfs
        migrated it).
        """
        migrations = load_migrations()
        known = {m.version for m in migrations}
        applied: list[int] = []
        async with self.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                int(r["version"]) for r in await conn.fetch("SELECT version FROM schema_migrations")
            }
            unknown = sorted(done - known)
            if unknown:
                raise MirrorDbError(
                    f"replica schema at {self.dsn} has migration {unknown[-1]}, newer than this "
                    f"mirrorfs knows (up to {max(known, default=0)})",
                    dsn=self.dsn,
                    hint="upgrade mirrorfs on this host",
                )
            for m in migrations:
                if m.version in done:
                    continue
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    m.version,
                    m.name,
                )
                applied.append(m.version)
        return applied

    async def schema_version(self) -> int:
        """The highest applied migration; 0 for a database never migrated."""
        async with self.acquire() as conn:
            exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not exists:
                return 0
            return int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            )

    async def tables(self) -> list[str]:
        """The tables of the connection's current schema (where `migrate` puts the replica)."""
        async with self.acquire() as conn:
            rows = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " ORDER BY tablename"
            )
        return [str(r["tablename"]) for r in rows]

    async def foreign_tables(self) -> list[str]:
        """Tables of the current schema that no migration of mirrorfs creates."""
        ours, _ = migration_objects()
        return [t for t in await self.tables() if t not in ours]

    async def wipe(self) -> list[str]:
        """Drop the whole replica (every table and function the migrations create), so the next
        `migrate` starts from an empty schema; returns the tables dropped. One transaction,
        under the migration lock. Raises MirrorDbError, changing nothing, if the schema also
        holds tables mirrorfs did not create: those are not ours to drop."""
        foreign = await self.foreign_tables()
        if foreign:
            raise MirrorDbError(
                f"database {self.dsn} holds tables mirrorfs did not create"
                f" ({', '.join(foreign[:5])}{'...' if len(foreign) > 5 else ''}); not wiping it",
                dsn=self.dsn,
                hint="use a database of its own for each mirror",
            )
        tables, functions = migration_objects()
        async with self.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            present = [t for t in await self.tables() if t in tables]
            if present:
                await conn.execute(f"DROP TABLE {', '.join(present)} CASCADE")
            for fn in sorted(functions):
                await conn.execute(f"DROP FUNCTION IF EXISTS {fn} CASCADE")
        return present

    async def get_meta(self, key: str) -> str | None:
        async with self.acquire() as conn:
            value: str | None = await conn.fetchval("SELECT value FROM meta WHERE key = $1", key)
            return value

    async def set_meta(self, key: str, value: str) -> None:
        """Insert or overwrite one meta entry (the mirror's name, the source volume...)."""
        async with self.acquire() as conn:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                key,
                value,
            )

    async def aclose(self) -> None:
        """Close every pooled connection (waits for the ones in use to be released)."""
        with translating(self.dsn):
            await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def open_database(
    region: MirrorRegion, *, max_size: int = DEFAULT_MAX_POOL_SIZE, who: str = "mirrorfs"
) -> AsyncIterator[Database]:
    """The region's replica database: its DSN, or the embedded server under its data directory.

    Embedded: attached for the duration (mirror/embedded.py): started if no one runs it, and
    stopped at the end only if no other live process still uses it, so a CLI verb never stops
    the server under a daemon. `who` names this user in the server's users file; `db.server`
    is the attachment (None for a DSN).
    """
    server: EmbeddedPostgres | None = None
    dsn = region.dsn
    if not dsn:
        server = await attach_embedded(region.embedded_pg_dir, who=who)
        dsn = server.dsn
    try:
        db = await Database.connect(dsn, max_size=max_size)
        db.server = server
        try:
            yield db
        finally:
            await db.aclose()
    finally:
        if server is not None:
            await server.detach()
