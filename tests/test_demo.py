"""`mirrorfs demo` as the README runs it: up, answering, stopped cleanly, resumed with data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil

from tests.test_cli import mfs
from volume.config import load_config


def start_demo(directory: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "demo", "--dir", str(directory), "--mirrors", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MIRRORFS_LOG": "info"},  # every line a daemon logs: see below
        )


def wait_for_text(log: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"demo exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in time:\n{log.read_text()}"
        time.sleep(0.2)


def stop_demo(proc: subprocess.Popen[bytes], sig: int) -> float:
    children = psutil.Process(proc.pid).children(recursive=True)
    start = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    took = time.monotonic() - start
    deadline = time.monotonic() + 10
    while (alive := [p for p in children if is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"left running: {alive}"
    return took


def test_demo_runs_answers_stops_and_resumes(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    log = tmp_path / "demo.log"
    proc = start_demo(directory, log)
    try:
        wait_for_text(log, "mirrorfs demo is running", proc, 180)
        cfg = directory / "mirrorfs.toml"
        deadline = time.monotonic() + 60
        while True:  # the sample data reaches the mirror bucket
            st = orjson.loads(mfs("mirror", "status", "eu", "--json", config=cfg).stdout)
            if st["state"] == "following" and st["blocks_pending"] == 0:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.5)
        listing = mfs("ls", "/models/demo-llm", config=cfg).stdout.split()
        assert b"config.json" in listing and len(listing) == 4
        took = stop_demo(proc, signal.SIGINT)
        assert took < 30, f"stopping took {took:.1f}s"
        assert b"stopped" in log.read_bytes()

        log2 = tmp_path / "demo2.log"
        proc = start_demo(directory, log2)
        wait_for_text(log2, "mirrorfs demo is running", proc, 180)
        assert mfs("ls", "/models/demo-llm", config=cfg).stdout.split() == listing
        assert "writing sample data" not in log2.read_text()
        st = orjson.loads(mfs("mirror", "status", "eu", "--json", config=cfg).stdout)
        assert st["mirror"] == "eu"
        stop_demo(proc, signal.SIGTERM)
        assert_no_secret_logged(cfg, [log, log2, *(directory / "logs").glob("*.log")])
    finally:
        if proc.poll() is None:
            stop_demo(proc, signal.SIGKILL)


def assert_no_secret_logged(cfg_path: Path, logs: list[Path]) -> None:
    """No token, no Raft secret in any line the demo or its children logged."""
    cfg = load_config(cfg_path)
    secrets = {"admin token": cfg.token, "secret": cfg.secret}
    secrets |= {f"mirror {n} token": m.token for n, m in cfg.mirrors.items() if m.token}
    assert len(logs) >= 5, logs  # the demo, its dashboard, 3 nodes, the region...
    for path in logs:
        text = path.read_text(errors="replace")
        for what, value in secrets.items():
            assert value not in text, f"{what} in {path}"


def test_children_go_when_the_demo_is_killed(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    log = tmp_path / "demo.log"
    proc = start_demo(directory, log)
    try:
        wait_for_text(log, "mirrorfs demo is running", proc, 180)
    finally:
        # The processes the demo started (nodes, region daemons); each stops what it owns.
        children = psutil.Process(proc.pid).children(recursive=False)
        proc.kill()  # no chance to clean up: the children must still go
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while (alive := [p for p in children if is_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in alive:
            p.kill()
        assert not alive, f"left running: {alive}"


def is_alive(p: psutil.Process) -> bool:
    """Running, and not a zombie (PID 1 here reaps orphans late: a zombie has exited)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
