"""The session-end leak check (tests/leaks.py): a run that leaves a process behind fails, names
it and kills it; a run that stops what it starts passes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

LEAKY = """
import os, subprocess, sys

def record(pid):
    with open(os.environ["LEAK_PIDS"], "a") as f:
        f.write(f"{pid}\\n")

def test_leaves_a_child():
    record(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]).pid)

def test_leaves_an_orphan_that_names_its_tmp_path(tmp_path):
    # Double fork: the sleeper's parent exits, so it is nobody's child here (like a server
    # that daemonizes); its command line names the test's directory.
    code = "import time; time.sleep(300)"
    out = subprocess.run(
        ["sh", "-c", f"{sys.executable} -c '{code}' {tmp_path} >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    )
    record(int(out.stdout))
"""

CLEAN = """
import subprocess, sys

def test_stops_what_it_starts():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    p.kill()
    p.wait()
"""


def run_inner(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_inner.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEAK_PIDS": str(tmp_path / "pids")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.leaks",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(inner),
            "--basetemp",
            str(tmp_path / "basetemp"),
            str(inner / "test_inner.py"),
        ],
        cwd=inner,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_run_that_leaves_processes_behind_fails_and_they_are_killed(tmp_path: Path) -> None:
    done = run_inner(tmp_path, LEAKY)
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    try:
        assert len(pids) == 2
        assert done.returncode == 1, done.stdout + done.stderr
        assert "2 passed" in done.stdout
        assert "2 process(es) started by the tests were left running" in done.stdout, done.stdout
        for pid in pids:
            assert f"pid {pid}:" in done.stdout
        deadline = time.monotonic() + 10
        while any(is_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(is_alive(p) for p in pids), "the leak check did not kill them"
    finally:
        for pid in pids:
            if is_alive(pid):
                psutil.Process(pid).kill()


def test_a_run_that_stops_what_it_starts_passes(tmp_path: Path) -> None:
    done = run_inner(tmp_path, CLEAN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left running" not in done.stdout
