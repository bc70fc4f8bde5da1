"""The replica database: migrations, and one clear error per way of failing to reach it."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from mirror.db import Database, load_migrations, mask_dsn, migration_objects
from mirror.errors import MirrorDbError
from tests.servers.ports import free_ports
from tests.servers.postgres import PostgresServer, short_data_dir

PASSWORD = "s3cret-pw"
DEADLINE_S = 15.0


async def test_migrate_is_idempotent(pg_dsn: str) -> None:
    versions = [m.version for m in load_migrations()]
    assert versions[0] == 1 and versions == sorted(set(versions))
    async with await Database.connect(pg_dsn) as db:
        assert await db.schema_version() == 0
        assert await db.migrate() == versions
        assert await db.migrate() == []
        assert await db.schema_version() == versions[-1]


async def test_the_migrations_name_every_table_they_create_and_wipe_drops_them(
    pg_dsn: str,
) -> None:
    tables, _ = migration_objects()
    async with await Database.connect(pg_dsn) as db:
        await db.migrate()
        assert set(await db.tables()) == tables  # nothing a migration made goes unnamed
        assert await db.foreign_tables() == []
        async with db.acquire() as conn:
            await conn.execute("INSERT INTO meta VALUES ('mirror', 'eu')")
        assert sorted(await db.wipe()) == sorted(tables)
        assert await db.tables() == []
        assert await db.migrate() == [m.version for m in load_migrations()]  # from scratch
        assert await db.get_meta("mirror") is None


async def test_wipe_never_drops_a_table_mirrorfs_did_not_create(pg_dsn: str) -> None:
    async with await Database.connect(pg_dsn) as db:
        await db.migrate()
        async with db.acquire() as conn:
            await conn.execute("CREATE TABLE orders (id int)")
        with pytest.raises(MirrorDbError, match=r"tables mirrorfs did not create \(orders\)"):
            await db.wipe()
        assert "orders" in await db.tables() and "watermark" in await db.tables()


async def test_concurrent_migrators_apply_each_migration_once(pg_dsn: str) -> None:
    dbs = [await Database.connect(pg_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(db.migrate() for db in dbs))
        assert sorted(results, key=len) == [[], [], [m.version for m in load_migrations()]]
        async with dbs[0].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM watermark") == 1
    finally:
        for db in dbs:
            await db.aclose()


async def test_schema_newer_than_the_code_is_refused(pg_dsn: str) -> None:
    async with await Database.connect(pg_dsn) as db:
        await db.migrate()
        async with db.acquire() as conn:
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'x')")
        with pytest.raises(MirrorDbError) as info:
            await db.migrate()
        assert "9999" in str(info.value) and info.value.hint


async def test_meta_round_trip(pg_dsn: str) -> None:
    async with await Database.connect(pg_dsn) as db:
        await db.migrate()
        assert await db.get_meta("mirror") is None
        await db.set_meta("mirror", "eu-1")
        await db.set_meta("mirror", "eu-2")
        assert await db.get_meta("mirror") == "eu-2"


async def test_query_before_migrate_says_so(pg_dsn: str) -> None:
    async with await Database.connect(pg_dsn) as db:
        with pytest.raises(MirrorDbError) as info:
            await db.get_meta("mirror")
        assert "schema" in str(info.value) and info.value.hint and "migrat" in info.value.hint


def test_mask_dsn_hides_passwords() -> None:
    assert mask_dsn("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert mask_dsn("postgresql://u@h/db?password=pw&sslmode=x") == (
        "postgresql://u@h/db?password=%2A%2A%2A&sslmode=x"
    )
    assert mask_dsn("postgresql://h/db") == "postgresql://h/db"
    assert mask_dsn("postgresql://u:@/db?host=/x") == "postgresql://u:@/db?host=/x"
    assert "pw" not in mask_dsn("postgresql://u:pw@[bad")


@pytest.fixture(scope="module")
def auth_server() -> Iterator[PostgresServer]:
    """A private server where role mfs_pw must log in with a password (others are trusted)."""
    data_dir = short_data_dir()
    server = PostgresServer.start(data_dir)
    try:
        server.psql(f"CREATE ROLE mfs_pw LOGIN PASSWORD '{PASSWORD}'")
        hba = Path(data_dir) / "pg_hba.conf"
        hba.write_text("local all mfs_pw scram-sha-256\n" + hba.read_text())
        server.psql("SELECT pg_reload_conf()")
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _socket_dsn(server: PostgresServer, userinfo: str, database: str = "postgres") -> str:
    return f"postgresql://{userinfo}@/{database}?host={server.data_dir}"


async def _connect_error(dsn: str) -> MirrorDbError:
    with pytest.raises(MirrorDbError) as info:
        db = await Database.connect(dsn, connect_timeout_s=5)
        await db.aclose()
    return info.value


async def test_wrong_password(auth_server: PostgresServer) -> None:
    good = _socket_dsn(auth_server, f"mfs_pw:{PASSWORD}")
    bad = _socket_dsn(auth_server, "mfs_pw:not-the-password")
    # the reload that turns on password auth is asynchronous: wait until it bites
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            conn = await asyncpg.connect(bad)
        except asyncpg.InvalidPasswordError:
            break
        await conn.close()
        assert time.monotonic() < deadline, "pg_hba.conf reload did not take effect"
        await asyncio.sleep(0.05)
    err = await _connect_error(bad)
    assert "password" in str(err) and mask_dsn(bad) in str(err)
    assert "not-the-password" not in str(err) and err.hint and not err.temporary
    async with await Database.connect(good) as db, db.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == "mfs_pw"


async def test_unknown_role(auth_server: PostgresServer) -> None:
    dsn = _socket_dsn(auth_server, "nobody_here")
    err = await _connect_error(dsn)
    assert "nobody_here" in str(err) and dsn in str(err) and err.hint


async def test_missing_database(postgres: PostgresServer) -> None:
    dsn = postgres.dsn_for("no_such_db")
    err = await _connect_error(dsn)
    assert "no_such_db" in str(err) and "does not exist" in str(err)
    assert err.hint and "CREATE DATABASE" in err.hint and not err.temporary


@pytest.mark.parametrize(
    "dsn", ["mysql://u:pw@localhost/db", "postgresql://u:pw@host:notaport/db", "not a dsn"]
)
async def test_bad_dsn(dsn: str) -> None:
    err = await _connect_error(dsn)
    assert str(err).startswith(f"invalid PostgreSQL DSN {mask_dsn(dsn)}")
    assert ":pw@" not in str(err) and err.hint and not err.temporary
    assert "\n" not in str(err)


async def test_unreachable_tcp_server() -> None:
    (port,) = free_ports(1)
    dsn = f"postgresql://u:pw@127.0.0.1:{port}/db"
    err = await _connect_error(dsn)
    assert str(err).startswith(f"cannot reach PostgreSQL at postgresql://u:***@127.0.0.1:{port}/db")
    assert err.temporary and err.hint and ":pw@" not in str(err)


async def test_unreachable_socket_dir(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres@/postgres?host={tmp_path}"
    err = await _connect_error(dsn)
    assert str(err).startswith(f"cannot reach PostgreSQL at {dsn}") and err.temporary


async def test_server_gone_while_in_use() -> None:
    data_dir = short_data_dir()
    server = PostgresServer.start(data_dir)
    try:
        db = await Database.connect(server.dsn, min_size=1, max_size=1)
        async with db.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        server.stop()
        with pytest.raises(MirrorDbError) as info:
            async with db.acquire() as conn:
                await conn.fetchval("SELECT 1")
        assert info.value.temporary and str(info.value).startswith(
            f"lost the connection to PostgreSQL at {server.dsn}"
        )
        await db.aclose()  # closing connections to a stopped server must not hang or raise
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_a_server_restarting_under_load_only_ever_raises_mirror_db_error() -> None:
    """Connections cut mid-statement (a fast shutdown under load) come out as temporary
    MirrorDbError, never as a raw asyncpg error (seen: InternalClientError "cannot switch to
    state 15" killed a daemon), and the pool works again once the server is back."""
    data_dir = short_data_dir()
    server = PostgresServer.start(data_dir)
    seen: list[BaseException] = []
    try:
        db = await Database.connect(server.dsn, max_size=8)
        for _ in range(4):
            stop = asyncio.Event()

            async def load(db: Database = db, stop: asyncio.Event = stop) -> None:
                while not stop.is_set():
                    try:
                        async with db.acquire() as conn, conn.transaction():
                            await conn.fetchval("SELECT count(*) FROM generate_series(1, 20000)")
                    except MirrorDbError as exc:
                        assert exc.temporary, exc
                        await asyncio.sleep(0.01)
                    except Exception as exc:  # collected: the test fails on it
                        seen.append(exc)
                        await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(load()) for _ in range(8)]
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.start_again)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
        assert seen == []
        async with db.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        await db.aclose()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
