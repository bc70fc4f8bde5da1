"""Fixtures shared by every test: real SeaweedFS S3, real PostgreSQL, a fault-injecting proxy.

Servers are session-scoped (started once, on first use) and always stopped: by the fixture's
teardown, by an atexit hook if pytest is interrupted, and, for SeaweedFS, by a parent-death
signal if pytest is killed outright. Isolation per test comes from a fresh bucket or database.

At the end of the session, tests/leaks.py fails the run if any process the tests started is
still running (a PostgreSQL, weed, a source node, a region daemon), and kills it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from objstore import ObjectStore, open_store
from objstore.local import LocalStore
from tests.leaks import pytest_sessionfinish  # noqa: F401 - the session-end process leak check
from tests.servers.faultproxy import FaultProxy
from tests.servers.postgres import PostgresServer, short_data_dir
from tests.servers.seaweed import SeaweedServer

# botocore/aiobotocore look credentials up from the environment; SeaweedFS accepts any pair.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "mirrorfs")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "mirrorfs-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def unique_name(prefix: str, sep: str = "-") -> str:
    """A name no other test uses: `prefix` + separator + 12 hex digits."""
    return f"{prefix}{sep}{uuid.uuid4().hex[:12]}"


def _ensure_running(server: SeaweedServer) -> None:
    # A test that stops or kills the shared server and fails before bringing it back must not
    # take every later test down with it.
    if not server.is_running:
        server.restart()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """The session's SeaweedFS S3 server. A test may stop/kill/restart it; see `s3_bucket`."""
    server = SeaweedServer.start(tmp_path_factory.mktemp("seaweed"))
    atexit.register(server.stop)
    try:
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)


@pytest.fixture
def seaweed_factory(tmp_path: Path) -> Iterator[Callable[[], SeaweedServer]]:
    """Start extra SeaweedFS servers (e.g. one per region); all are stopped after the test."""
    started: list[SeaweedServer] = []

    def start() -> SeaweedServer:
        server = SeaweedServer.start(tmp_path / f"seaweed-{len(started)}")
        started.append(server)
        atexit.register(server.stop)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
            atexit.unregister(server.stop)


@pytest.fixture
def s3_bucket(seaweed: SeaweedServer) -> Iterator[str]:
    """A fresh, empty bucket on `seaweed`; deleted with its objects after the test."""
    _ensure_running(seaweed)
    name = unique_name("mfs")
    seaweed.create_bucket(name)
    try:
        yield name
    finally:
        # Deleting frees the SeaweedFS volume behind the bucket; the supply of volumes is finite.
        _ensure_running(seaweed)
        seaweed.delete_bucket(name)


@pytest.fixture
def s3_url(seaweed: SeaweedServer, s3_bucket: str) -> str:
    """The bucket URL objstore understands: `s3://BUCKET?endpoint=http://127.0.0.1:PORT`."""
    return f"s3://{s3_bucket}?endpoint={seaweed.endpoint}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (unix socket in a short dir under /tmp)."""
    data_dir = short_data_dir()
    server = PostgresServer.start(data_dir)
    atexit.register(server.stop)
    try:
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> Iterator[str]:
    """DSN of a fresh database on `postgres`, dropped (sessions cut) after the test."""
    name = unique_name("t", sep="_")
    dsn = postgres.create_database(name)
    try:
        yield dsn
    finally:
        postgres.drop_database(name)


@pytest.fixture
def fault_proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of `seaweed`; point an S3 client at `fault_proxy.url`."""
    _ensure_running(seaweed)
    with FaultProxy(seaweed.endpoint) as proxy:
        yield proxy


@pytest.fixture(params=["file", "s3"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """A bucket on each backend in turn: a local directory, then real S3 (SeaweedFS)."""
    if request.param == "file":
        store: ObjectStore = LocalStore(tmp_path / "any-bucket", fsync=False)
    else:
        store = await open_store(request.getfixturevalue("s3_url"), name="test")
    try:
        yield store
    finally:
        await store.aclose()
