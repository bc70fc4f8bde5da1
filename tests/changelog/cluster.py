"""A real source region for tests: N `mirrorfs source serve` processes on 127.0.0.1.

Each node is its own process (kill -9 is a real crash); every process started is stopped by
`stop_all`, which fixtures call even when a test fails.
"""

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

from cli.source import new_volume
from tests.servers.netns import HostNetwork
from volume.client import SourceClient
from volume.config import VolumeConfig, write_config

NETNS_RAFT_PORT = 7000
NETNS_API_PORT = 8000


class SourceCluster:
    """With `network`, node i runs on host i of it (its own network namespace), so a test can
    partition a node for real; otherwise every node is on 127.0.0.1."""

    def __init__(
        self,
        directory: Path,
        *,
        nodes: int = 3,
        bucket: str | None = None,
        network: HostNetwork | None = None,
        **source_overrides: Any,
    ) -> None:
        self.directory = directory
        self.network = network
        base = new_volume(directory, nodes=nodes, bucket=bucket, name="test")
        if network is not None:
            placed = [
                n.model_copy(
                    update={
                        "raft": f"{network.address(n.id)}:{NETNS_RAFT_PORT}",
                        "api": f"http://{network.address(n.id)}:{NETNS_API_PORT}",
                    }
                )
                for n in base.source.nodes
            ]
            source_overrides = {"nodes": placed, **source_overrides}
        source = base.source.model_copy(update=source_overrides)
        self.cfg: VolumeConfig = base.model_copy(update={"source": source})
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "mirrorfs.toml"
        write_config(self.cfg, self.config_path)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, directory: Path, **kwargs: Any) -> AsyncIterator[SourceCluster]:
        """A started cluster with an agreed leader; every node is killed on exit."""
        cluster = cls(directory, **kwargs)
        cluster.start_all()
        try:
            await cluster.wait_leader()
            yield cluster
        finally:
            cluster.kill_all()

    @property
    def node_ids(self) -> list[int]:
        return [n.id for n in self.cfg.source.nodes]

    def start_node(self, node_id: int) -> None:
        assert node_id not in self.procs or self.procs[node_id].poll() is not None
        log = open(self.directory / f"node{node_id}.log", "ab")  # noqa: SIM115 - owned by Popen
        env = {**os.environ, "MIRRORFS_LOG": os.environ.get("MIRRORFS_LOG", "info")}
        prefix = self.network.exec_prefix(node_id) if self.network is not None else []
        self.procs[node_id] = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "cli",
                "--config",
                str(self.config_path),
                "source",
                "serve",
                "--node",
                str(node_id),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()

    def start_all(self) -> None:
        for i in self.node_ids:
            self.start_node(i)

    def kill_node(self, node_id: int) -> None:
        """kill -9: no cleanup, no flush, like a crash."""
        proc = self.procs[node_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_node(self, node_id: int, timeout_s: float = 15.0) -> None:
        proc = self.procs.get(node_id)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for i in list(self.procs):
            self.stop_node(i)

    def kill_all(self) -> None:
        for i, proc in self.procs.items():
            if proc.poll() is None:
                self.kill_node(i)

    def api(self, node_id: int) -> str:
        return self.cfg.node(node_id).api

    def client(self, *node_ids: int, retry_s: float = 30.0) -> SourceClient:
        ids = node_ids or tuple(self.node_ids)
        return SourceClient([self.api(i) for i in ids], self.cfg.token, retry_s=retry_s)

    def log_tail(self, node_id: int, lines: int = 30) -> str:
        path = self.directory / f"node{node_id}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def statuses(self, node_ids: list[int] | None = None) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        async with SourceClient(self.cfg.api_urls, self.cfg.token, timeout_s=2) as c:
            for i in node_ids or self.node_ids:
                if i in self.procs and self.procs[i].poll() is None:
                    with contextlib.suppress(Exception):  # not up yet
                        out[i] = await c.status(self.api(i))
        return out

    async def wait_leader(self, timeout_s: float = 30.0, among: list[int] | None = None) -> int:
        """The id of a node that says it leads, once every live node agrees on it."""
        deadline = time.monotonic() + timeout_s
        live = among or [i for i, p in self.procs.items() if p.poll() is None]
        while time.monotonic() < deadline:
            st = await self.statuses(live)
            leaders = {i for i, s in st.items() if s["role"] == "leader"}
            if len(st) == len(live) and len(leaders) == 1:
                (leader,) = leaders
                if all(s["leader"] == self.api(leader) for s in st.values()):
                    return leader
            await asyncio.sleep(0.1)
        tails = "\n".join(f"--- node {i}\n{self.log_tail(i)}" for i in live)
        raise TimeoutError(f"no agreed leader within {timeout_s}s\n{tails}")

    async def wait_applied(
        self, version: int, node_ids: list[int], timeout_s: float = 30.0
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = await self.statuses(node_ids)
            if len(st) == len(node_ids) and all(
                s["applied_version"] >= version for s in st.values()
            ):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"nodes {node_ids} did not apply version {version} in {timeout_s}s")
