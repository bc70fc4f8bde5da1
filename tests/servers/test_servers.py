"""The test servers themselves: they start, keep data, stop without leftovers, inject faults."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from tests.servers.faultproxy import FaultProxy, ProxiedRequest
from tests.servers.ports import GRPC_PORT_OFFSET, free_ports
from tests.servers.postgres import PostgresServer, PsqlError, short_data_dir
from tests.servers.seaweed import SeaweedPorts, SeaweedServer, make_s3_client

REPO_ROOT = Path(__file__).resolve().parents[2]
CONNECTION_ERRORS = (ConnectionClosedError, EndpointConnectionError)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


def is_gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


# -- ports -----------------------------------------------------------------------------------


def test_free_ports_are_distinct_bindable_and_leave_room_for_grpc_twins() -> None:
    ports = free_ports(6, max_port=50000, with_grpc_twin=True)
    every = ports + [p + GRPC_PORT_OFFSET for p in ports]
    assert len(set(every)) == len(every)
    assert all(p < 50000 for p in ports)
    for port in every:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


# -- SeaweedFS -------------------------------------------------------------------------------


def test_seaweed_keeps_object_across_restart_and_leaves_nothing_behind(tmp_path: Path) -> None:
    server = SeaweedServer.start(tmp_path)
    try:
        ports, first_pid = server.ports, server.pid
        server.create_bucket("keep-me")
        server.s3.put_object(Bucket="keep-me", Key="a/b", Body=b"survives")
        assert server.socket_paths(), "weed should have created its unix sockets"

        server.restart()

        assert server.ports == ports
        assert first_pid is not None and server.pid != first_pid and is_gone(first_pid)
        got = server.s3.get_object(Bucket="keep-me", Key="a/b")["Body"].read()
        assert got == b"survives"
    finally:
        pid = server.pid
        server.stop()
    assert pid is not None and is_gone(pid)
    assert not server.is_running
    assert server.socket_paths() == []


def test_seaweed_killed_keeps_acknowledged_writes(tmp_path: Path) -> None:
    with SeaweedServer.start(tmp_path) as server:
        server.create_bucket("crash")
        server.s3.put_object(Bucket="crash", Key="k", Body=b"acked")
        server.kill()
        assert not server.is_running
        with pytest.raises(CONNECTION_ERRORS):
            make_s3_client(server.endpoint, timeout_s=1.0).list_buckets()
        server.restart()
        assert server.s3.get_object(Bucket="crash", Key="k")["Body"].read() == b"acked"


def weed_pids_on(ports: SeaweedPorts) -> list[int]:
    flag = f"-s3.port={ports.s3}"
    return [
        p.pid
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "weed" and flag in (p.info["cmdline"] or []) and not is_gone(p.pid)
    ]


def test_seaweed_start_failure_raises_with_the_log(tmp_path: Path) -> None:
    ports = SeaweedPorts.allocate()
    # Hold the master port: weed cannot start.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports.master))
        blocker.listen()
        with pytest.raises(RuntimeError, match="weed") as info:
            SeaweedServer.start(tmp_path, ports=ports, timeout_s=10.0)
    log_end = (tmp_path / "weed.log").read_bytes()[-200:].decode(errors="replace")
    assert log_end in str(info.value)
    assert weed_pids_on(ports) == []


def test_seaweed_not_ready_in_time_is_stopped(tmp_path: Path) -> None:
    ports = SeaweedPorts.allocate()
    # S3 needs master, volume and filer up first: it cannot answer within 50 ms.
    with pytest.raises(RuntimeError, match="did not get ready"):
        SeaweedServer.start(tmp_path, ports=ports, timeout_s=0.05)
    assert weed_pids_on(ports) == []
    assert SeaweedServer(tmp_path, ports).socket_paths() == []


def test_seaweed_factory_starts_independent_servers(
    seaweed: SeaweedServer, seaweed_factory: Callable[[], SeaweedServer]
) -> None:
    extra = seaweed_factory()
    assert extra.endpoint != seaweed.endpoint and extra.is_running
    extra.create_bucket("only-here")
    names = {b["Name"] for b in seaweed.s3.list_buckets()["Buckets"]}
    assert "only-here" not in names


_CHILD = """
import json, sys, time
from tests.servers.seaweed import SeaweedServer
server = SeaweedServer.start(sys.argv[1])
print(json.dumps({"pid": server.pid, "ports": server.ports.__dict__}), flush=True)
time.sleep(600)
"""


def test_seaweed_dies_with_a_killed_test_process(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        info = json.loads(child.stdout.readline())
        assert not is_gone(info["pid"])
    finally:
        child.kill()
        child.wait()
    orphan = SeaweedServer(tmp_path, SeaweedPorts(**info["ports"]))
    try:
        wait_until(lambda: is_gone(info["pid"]))
    finally:
        orphan.stop()  # nobody else will remove the dead child's socket files
    assert orphan.socket_paths() == []


# -- PostgreSQL ------------------------------------------------------------------------------


async def test_two_postgres_servers_side_by_side() -> None:
    dirs = [short_data_dir(), short_data_dir()]
    servers: list[PostgresServer] = []
    try:
        for d in dirs:
            servers.append(PostgresServer.start(d))
        assert servers[0].pid != servers[1].pid
        for server in servers:
            conn = await asyncpg.connect(server.dsn)
            try:
                assert await conn.fetchval("select 1") == 1
            finally:
                await conn.close()
    finally:
        pids = [s.pid for s in servers]
        for server in servers:
            server.stop()
        sockets_left = [d for d in dirs if (d / ".s.PGSQL.5432").exists()]
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    assert all(pid is not None and is_gone(pid) for pid in pids)
    assert not any(s.is_running for s in servers)
    assert sockets_left == []


async def test_pg_dsn_is_a_fresh_database_dropped_afterwards(postgres: PostgresServer) -> None:
    dsn = postgres.create_database("t_fresh_check")
    try:
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("select current_database()") == "t_fresh_check"
            assert (
                await conn.fetchval("select count(*) from pg_tables where schemaname='public'") == 0
            )
        finally:
            await conn.close()
        with pytest.raises(PsqlError, match="already exists"):
            postgres.create_database("t_fresh_check")
    finally:
        postgres.drop_database("t_fresh_check")
    assert (
        postgres.psql("select count(*) from pg_database where datname='t_fresh_check'").strip()
        == "0"
    )
    with pytest.raises(ValueError):
        postgres.create_database('x"; drop database postgres; --')


async def test_pg_dsn_fixture_gives_an_empty_database_of_its_own(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        name = await conn.fetchval("select current_database()")
        assert name.startswith("t_") and f"/{name}?" in pg_dsn
        await conn.execute("create table t (x int)")  # a database of its own: no clash
    finally:
        await conn.close()


# -- FaultProxy against SeaweedFS ------------------------------------------------------------


@pytest.fixture
def proxied_s3(fault_proxy: FaultProxy) -> Any:
    """botocore client through the proxy, retries off: the test sees every injected fault."""
    return make_s3_client(fault_proxy.url, timeout_s=5.0)


def test_s3_url_names_bucket_and_endpoint(
    s3_url: str, s3_bucket: str, seaweed: SeaweedServer
) -> None:
    assert s3_url == f"s3://{s3_bucket}?endpoint={seaweed.endpoint}"


def test_proxy_forwards_large_objects_unchanged(
    fault_proxy: FaultProxy, proxied_s3: Any, s3_bucket: str
) -> None:
    body = os.urandom(4 << 20)
    key = "dir/with space+plus"
    proxied_s3.put_object(Bucket=s3_bucket, Key=key, Body=body)
    assert proxied_s3.head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == len(body)
    assert proxied_s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
    ranged = proxied_s3.get_object(Bucket=s3_bucket, Key=key, Range="bytes=10-19")
    assert ranged["Body"].read() == body[10:20]
    assert fault_proxy.stats().requests_forwarded == 4


def test_proxy_injects_three_slowdowns_then_passes(
    fault_proxy: FaultProxy, proxied_s3: Any, s3_bucket: str
) -> None:
    fault_proxy.fail_next(3)
    for _ in range(3):
        with pytest.raises(ClientError) as info:
            proxied_s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x" * 100_000)
        assert error_code(info.value) == "SlowDown"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    proxied_s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x" * 100_000)
    stats = fault_proxy.stats()
    assert (stats.requests_seen, stats.errors_injected, stats.requests_forwarded) == (4, 3, 1)


def test_proxy_status_rule_hits_only_matching_requests(
    fault_proxy: FaultProxy, proxied_s3: Any, s3_bucket: str
) -> None:
    proxied_s3.put_object(Bucket=s3_bucket, Key="bad", Body=b"1")
    proxied_s3.put_object(Bucket=s3_bucket, Key="good", Body=b"2")

    def is_get_of_bad(req: ProxiedRequest) -> bool:
        return req.method == "GET" and req.path.endswith("/bad")

    fault_proxy.set_status_for(is_get_of_bad, status=500, code="InternalError")
    with pytest.raises(ClientError) as info:
        proxied_s3.get_object(Bucket=s3_bucket, Key="bad")
    assert error_code(info.value) == "InternalError"
    assert proxied_s3.get_object(Bucket=s3_bucket, Key="good")["Body"].read() == b"2"
    fault_proxy.set_status_for(None)
    assert proxied_s3.get_object(Bucket=s3_bucket, Key="bad")["Body"].read() == b"1"


def test_proxy_drop_next_closes_connection_without_answer(
    fault_proxy: FaultProxy, proxied_s3: Any, s3_bucket: str
) -> None:
    fault_proxy.drop_next(1)
    with pytest.raises(CONNECTION_ERRORS):
        proxied_s3.put_object(Bucket=s3_bucket, Key="dropped", Body=b"x")
    with pytest.raises(ClientError) as info:  # the request never reached the server
        proxied_s3.head_object(Bucket=s3_bucket, Key="dropped")
    assert error_code(info.value) == "404"
    assert fault_proxy.stats().drops_injected == 1


def test_proxy_drop_after_upstream_loses_only_the_answer(
    fault_proxy: FaultProxy, proxied_s3: Any, s3_bucket: str
) -> None:
    fault_proxy.drop_next(1, after_upstream=True)
    with pytest.raises(CONNECTION_ERRORS):
        proxied_s3.put_object(Bucket=s3_bucket, Key="applied", Body=b"yes")
    assert proxied_s3.get_object(Bucket=s3_bucket, Key="applied")["Body"].read() == b"yes"


def test_proxy_latency_delays_each_request(
    fault_proxy: FaultProxy, proxied_s3: Any, s3_bucket: str
) -> None:
    fault_proxy.set_latency(0.3)
    started = time.monotonic()
    proxied_s3.head_bucket(Bucket=s3_bucket)
    assert time.monotonic() - started >= 0.3
    fault_proxy.set_latency(0.0)


def test_proxy_down_resets_or_answers_503(
    fault_proxy: FaultProxy, proxied_s3: Any, s3_bucket: str
) -> None:
    fault_proxy.set_down(True)
    with pytest.raises(CONNECTION_ERRORS):
        proxied_s3.head_bucket(Bucket=s3_bucket)
    fault_proxy.set_down(True, mode="503")
    with pytest.raises(ClientError) as info:
        proxied_s3.list_objects_v2(Bucket=s3_bucket)
    assert error_code(info.value) == "ServiceUnavailable"
    fault_proxy.set_down(False)
    proxied_s3.head_bucket(Bucket=s3_bucket)
    assert fault_proxy.stats().faults_injected == 2


async def test_proxy_serves_async_clients_on_the_test_loop(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=fault_proxy.url,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}),
    ) as client:
        fault_proxy.fail_next(1)
        with pytest.raises(ClientError) as info:
            await client.put_object(Bucket=s3_bucket, Key="a", Body=b"async")
        assert error_code(info.value) == "SlowDown"
        await client.put_object(Bucket=s3_bucket, Key="a", Body=b"async")
        got = await client.get_object(Bucket=s3_bucket, Key="a")
        async with got["Body"] as stream:
            assert await stream.read() == b"async"


def test_proxy_reports_a_stopped_upstream_as_a_connection_error(
    seaweed: SeaweedServer, fault_proxy: FaultProxy, proxied_s3: Any
) -> None:
    seaweed.kill()
    try:
        with pytest.raises(CONNECTION_ERRORS):
            proxied_s3.list_buckets()
        assert fault_proxy.stats().upstream_failures == 1
    finally:
        seaweed.restart()
    proxied_s3.list_buckets()  # no stale pooled connection to the old process


# -- FaultProxy header handling, against a recording upstream --------------------------------


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]] = []

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        _Recorder.seen.append(
            {"headers": dict(self.headers.items()), "body": body, "path": self.path}
        )
        reply = b"recorded"
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recording_upstream() -> Iterator[str]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_proxy_keeps_host_and_raw_path_and_drops_hop_by_hop_headers(
    recording_upstream: str,
) -> None:
    with FaultProxy(recording_upstream) as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as conn:
            conn.sendall(
                b"PUT /b/a%2Fb%20c?x=1&y=%2B HTTP/1.1\r\n"
                b"Host: bucket.example:9000\r\n"
                b"Connection: keep-alive, X-Private\r\n"
                b"Keep-Alive: timeout=5\r\n"
                b"Expect: 100-continue\r\n"
                b"x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n"
                b"Content-Length: 5\r\n\r\n"
            )
            conn.sendall(b"hello")
            reply = b""
            while b"recorded" not in reply:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                reply += chunk
    assert b"recorded" in reply
    [got] = _Recorder.seen
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert got["path"] == "/b/a%2Fb%20c?x=1&y=%2B"
    assert headers["host"] == "bucket.example:9000"
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert "keep-alive" not in headers and "expect" not in headers
    assert "content-type" not in headers and "user-agent" not in headers
    assert got["body"] == b"hello"


def test_proxy_stop_is_idempotent_and_frees_the_port(recording_upstream: str) -> None:
    proxy = FaultProxy(recording_upstream).start()
    port = int(proxy.url.rsplit(":", 1)[1])
    proxy.stop()
    proxy.stop()
    assert not proxy.is_running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
