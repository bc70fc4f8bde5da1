"""A tiny replicated append-log node, run as a subprocess by the journal tests and benchmark.

As a program (`python -m tests.changelog.raft_counter_node --self ADDR --partner ADDR ...`) it
runs one pysyncobj member and answers JSON requests, one per stdin line, with one JSON line on
stdout carrying the same "id"; events (`started`, `ack` of a streamed write) are lines without an
id. EOF on stdin makes it exit, so a crashed test leaves no node behind.

As a module it is the driver: NodeProcess (one node) and Cluster (three on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- the node program


def _node_main(argv: list[str]) -> None:
    import structlog

    # stdout is the control channel; structlog's default logger would print there
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

    from changelog.raft.conf import DurableSyncObj, make_conf

    class AppendLog(SyncObjConsumer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.values: list[str] = []

        @replicated  # type: ignore[untyped-decorator]
        def append(self, value: str) -> int:
            self.values.append(value)
            return len(self.values)

    p = argparse.ArgumentParser()
    p.add_argument("--self", dest="self_addr", required=True)
    p.add_argument("--partner", action="append", default=[])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--password", default="")
    p.add_argument("--journal", choices=["durable", "file"], default="durable")
    p.add_argument("--compact-min-entries", type=int, default=50_000)
    p.add_argument("--compact-min-time-s", type=float, default=600.0)
    args = p.parse_args(argv)

    out_lock = threading.Lock()

    def emit(msg: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(msg) + "\n")
            sys.stdout.flush()

    data = Path(args.data_dir)
    journal_file, dump_file = str(data / "journal"), str(data / "dump")
    applog = AppendLog()
    durable = bool(args.password) and args.journal == "durable"
    node: Any
    if not args.password:  # the insecure control: what pysyncobj does without a password
        conf = SyncObjConf(
            journalFile=journal_file, fullDumpFile=dump_file, appendEntriesUseBatch=False
        )
        node = SyncObj(args.self_addr, args.partner, conf, consumers=[applog])
    else:
        conf = make_conf(
            journal_file=journal_file,
            dump_file=dump_file,
            password=args.password,
            log_compaction_min_entries=args.compact_min_entries,
            log_compaction_min_time_s=args.compact_min_time_s,
        )
        if durable:
            node = DurableSyncObj(args.self_addr, args.partner, conf, consumers=[applog])
        else:
            node = SyncObj(args.self_addr, args.partner, conf, consumers=[applog])
    node.waitBinded()
    emit({"event": "started", "pid": os.getpid()})

    def submit_window(
        values: list[str], inflight: int, on_done: Callable[[str, int], None]
    ) -> None:
        slots = threading.Semaphore(inflight)
        for value in values:
            slots.acquire()

            def done(_res: Any, err: int, value: str = value) -> None:
                slots.release()
                on_done(value, err)

            applog.append(value, callback=done)

    def stream(prefix: str, count: int, inflight: int) -> None:
        def on_done(value: str, err: int) -> None:
            if err == FAIL_REASON.SUCCESS:
                emit({"event": "ack", "value": value})

        submit_window([f"{prefix}{i}" for i in range(count)], inflight, on_done)

    def bench_seq(n: int) -> dict[str, Any]:
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            applog.append(f"s{i}", sync=True, timeout=10)
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99) - 1]}

    def bench_conc(n: int, inflight: int) -> dict[str, Any]:
        finished = threading.Event()
        counts = {"ok": 0, "failed": 0}
        lock = threading.Lock()

        def on_done(_value: str, err: int) -> None:
            with lock:
                counts["ok" if err == FAIL_REASON.SUCCESS else "failed"] += 1
                if counts["ok"] + counts["failed"] == n:
                    finished.set()

        t0 = time.perf_counter()
        submit_window([f"c{i}" for i in range(n)], inflight, on_done)
        finished.wait(120)
        elapsed = time.perf_counter() - t0
        return {**counts, "commits_per_s": counts["ok"] / elapsed}

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "status":
            st = node.getStatus()
            leader = st["leader"]
            return {
                "leader": leader.address if leader is not None else None,
                "is_leader": bool(node._isLeader()),
                "commit": st["commit_idx"],
                "applied": st["last_applied"],
                "log_len": st["log_len"],
                "term": st["raft_term"],
                "count": len(applog.values),
                "dump_exists": os.path.exists(dump_file),
                "fsyncs": node.durable_journal().sync_count if durable else None,
            }
        if op == "values":
            return {"values": list(applog.values)}
        if op == "append":
            try:
                return {"index": applog.append(req["value"], sync=True, timeout=req["wait_s"])}
            except Exception as exc:  # SyncObjException: no leader, timeout, ...
                return {"error": repr(exc)}
        if op == "stream":
            args = (req["prefix"], req["count"], req["inflight"])
            threading.Thread(target=stream, args=args, daemon=True).start()
            return {}
        if op == "compact":
            node.forceLogCompaction()
            return {}
        if op == "bench_seq":
            return bench_seq(req["n"])
        if op == "bench_conc":
            return bench_conc(req["n"], req["inflight"])
        raise ValueError(f"unknown op {op!r}")

    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "stop":
            break
        try:
            emit({"id": req["id"], **handle(req)})
        except Exception as exc:
            emit({"id": req["id"], "error": repr(exc)})
    node.destroy_synchronous()
    emit({"event": "stopped"})


# --------------------------------------------------------------------------- the driver


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class NodeProcess:
    addr: str
    partners: list[str]
    data_dir: Path
    password: str
    journal: str = "durable"
    compact_min_entries: int = 50_000
    compact_min_time_s: float = 600.0
    acks: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tests.changelog.raft_counter_node", "--self", self.addr]
        for partner in self.partners:
            cmd += ["--partner", partner]
        cmd += ["--data-dir", str(self.data_dir), "--password", self.password]
        cmd += ["--journal", self.journal, "--compact-min-entries", str(self.compact_min_entries)]
        cmd += ["--compact-min-time-s", str(self.compact_min_time_s)]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        stderr = open(self.data_dir / "stderr.log", "a")  # noqa: SIM115 - child owns it
        self._responses: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._next_id = 0
        self._started = False
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, text=True, bufsize=1,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
        stderr.close()
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        with self._cond:
            ok = self._cond.wait_for(lambda: self._started or not self.alive, timeout_s)
        if not (ok and self._started):
            self.kill()
            raise AssertionError(f"node {self.addr} did not start; see {self.data_dir}")

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:  # not ours: keep it for the failure message
                self.noise.append(line)
                continue
            with self._cond:
                if "id" in msg:
                    self._responses[msg["id"]] = msg
                elif msg.get("event") == "ack":
                    self.acks.append(msg["value"])
                elif msg.get("event") == "started":
                    self._started = True
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, op: str, timeout_s: float = DEFAULT_TIMEOUT_S, **kw: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        with self._cond:
            self._next_id += 1
            rid = self._next_id
        self.proc.stdin.write(json.dumps({"op": op, "id": rid, **kw}) + "\n")
        self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._responses or not self.alive, timeout_s):
                raise AssertionError(
                    f"{self.addr}: no answer to {op} in {timeout_s}s; stdout noise: {self.noise}"
                )
            if rid not in self._responses:
                raise AssertionError(f"{self.addr} died while answering {op}")
            return self._responses.pop(rid)

    def kill(self) -> None:
        """SIGKILL (a crash: no flush, no destructor) and reap. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
            self._reader.join(10)  # every line the node wrote before dying is read

    def stop(self) -> None:
        """Graceful stop, SIGKILL if it does not exit in 10 s. Idempotent."""
        if self.alive:
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class Cluster:
    """Three NodeProcesses on 127.0.0.1 with free ports; `close` stops them all."""

    def __init__(self, base_dir: Path, *, password: str = "volume-secret", **node_kw: Any):
        addrs = [f"127.0.0.1:{port}" for port in free_ports(3)]
        self.nodes = [
            NodeProcess(a, [b for b in addrs if b != a], base_dir / f"n{i}", password, **node_kw)
            for i, a in enumerate(addrs)
        ]

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def kill_all(self) -> None:
        for node in self.nodes:  # signal every node first: they die within microseconds
            if node.alive and node.proc is not None:
                os.kill(node.proc.pid, signal.SIGKILL)
        for node in self.nodes:
            node.kill()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()

    def live(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.alive]

    def wait_leader(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> NodeProcess:
        """The live node every live node agrees is the leader."""

        def agreed() -> NodeProcess | None:
            live = self.live()
            seen = {n.addr: n.request("status") for n in live}
            leaders = {s["leader"] for s in seen.values()}
            if len(leaders) != 1 or None in leaders:
                return None
            leader = next(iter(leaders))
            return next((n for n in live if n.addr == leader and seen[n.addr]["is_leader"]), None)

        result: NodeProcess = wait_for(agreed, timeout_s, "an agreed leader")
        return result


if __name__ == "__main__":
    _node_main(sys.argv[1:])
