"""A mirror region for tests: `mirror create` through the API, the daemon as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from changelog.namespace import Namespace
from cli.mirror import fetch_status
from cli.source import free_ports
from mirror.audit import dump_tree
from mirror.create import create_mirror
from mirror.db import Database
from mirror.embedded import attach_embedded
from mirror.replica import Replica
from tests.changelog.cluster import SourceCluster
from volume.config import MirrorConfig, load_config
from volume.snapshot import read_snapshot_records


async def source_dump(cluster: SourceCluster) -> tuple[int, dict[str, Any]]:
    """(version, full namespace dump) of the source, from a snapshot."""
    async with cluster.client() as c:
        chunks = [chunk async for chunk in c.snapshot()]
    records = read_snapshot_records(iter(chunks))
    header = next(records)
    ns = Namespace.from_snapshot([r.effect for r in records])
    return header.version, ns.dump_tree()


class MirrorRegion:
    def __init__(self, cluster: SourceCluster, name: str, dsn: str) -> None:
        self.cluster = cluster
        self.name = name
        self.dsn = dsn
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = cluster.directory / f"mirror-{name}.log"

    async def create(self) -> int:
        cfg = load_config(self.cluster.config_path)
        mcfg = MirrorConfig(
            bucket=(self.cluster.directory / "mirrors" / self.name / "bucket").as_uri(),
            api=f"http://127.0.0.1:{free_ports(1)[0]}",
            data_dir=f"mirrors/{self.name}",
            dsn=self.dsn,
        )
        created = await create_mirror(cfg, mcfg, self.name)
        return created.version

    @property
    def api(self) -> str:
        return load_config(self.cluster.config_path).mirror(self.name).api

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "--config",
                str(self.cluster.config_path),
                "mirror",
                "run",
                self.name,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MIRRORFS_LOG": "info"},
        )
        log.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    async def status(self) -> dict[str, Any]:
        return await fetch_status(self.api, self.cluster.cfg.token)

    @property
    def pg_dir(self) -> Path:
        """The embedded server's data directory (used when `dsn` is "")."""
        return self.cluster.config_path.parent / "mirrors" / self.name / "pg"

    @contextlib.asynccontextmanager
    async def database(self) -> AsyncIterator[Database]:
        """The replica, for a look: the DSN's, or the embedded server attached (and started if
        the daemon does not run it) for the block only, so this process never keeps it up."""
        if self.dsn:
            async with await Database.connect(self.dsn) as db:
                yield db
            return
        server = await attach_embedded(self.pg_dir, who="test")
        try:
            async with await Database.connect(server.dsn) as db:
                yield db
        finally:
            await server.detach()

    async def watermark(self) -> tuple[int, int]:
        async with self.database() as db:
            return await Replica(db).watermark()

    async def dump(self) -> dict[str, Any]:
        async with self.database() as db:
            return await dump_tree(db)

    async def block_rows(self) -> int:
        """Rows in the block table (the copy queue), whatever their state."""
        async with self.database() as db, db.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM blocks"))

    async def wait_applied(self, version: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (await self.watermark())[0] < version:
            if time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise TimeoutError(f"mirror {self.name} did not reach {version}\n{tail}")
            await asyncio.sleep(0.05)

    async def assert_equal_to_source(self) -> None:
        version, expected = await source_dump(self.cluster)
        await self.wait_applied(version)
        assert await self.dump() == expected


async def make_files(cluster: SourceCluster, prefix: str, count: int, batch: int = 100) -> int:
    """Directories, files and slices at the source (metadata only); returns the last version."""
    version = 0
    async with cluster.client() as c:
        await c.op("mkdir", path=f"/{prefix}", mode=0o755)
        alloc = await c.op("alloc_slices", count=count)
        first = alloc["effect"]["first"]
        for start in range(0, count, batch):
            ops: list[dict[str, Any]] = []
            for i in range(start, min(count, start + batch)):
                path = f"/{prefix}/f{i}"
                ops.append({"op": "create", "args": {"path": path, "mode": 0o644}})
                ops.append(
                    {
                        "op": "write",
                        "args": {
                            "path": path,
                            "chunk_index": 0,
                            "pos": 0,
                            "slice_id": first + i,
                            "size": 100 + i,
                            "checksums": [f"xxh3:{i:016x}"],
                        },
                    }
                )
            res = await c.ops(ops)
            res.raise_first_error()
            version = res.version
    return version
