"""A session-end check: the tests leave no process behind (a pytest plugin; tests/conftest.py
uses it, `-p tests.leaks` loads it elsewhere).

After every fixture has been torn down, it looks for processes the tests started that are still
alive: this pytest's descendants, and every process started since the session began whose
command line names a directory of this session (pytest's base temp dir, or a server directory
made by tests/servers/postgres.short_data_dir): a PostgreSQL (pg_ctl daemonizes it under PID 1),
a SeaweedFS server, a source node or a region daemon whose parent went away. It gives them a few
seconds to finish exiting, then reports each one, kills it (so one bad run does not load the
machine for the next) and fails the run. Zombies have exited and do not count.
"""

from __future__ import annotations

import contextlib
import os
import time

import psutil
import pytest

from tests.servers.postgres import session_server_dirs

EXIT_GRACE_S = 10.0
_STARTED = time.time()
_ME = os.getpid()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _names_a_session_dir(proc: psutil.Process, dirs: list[str]) -> bool:
    try:
        if proc.create_time() < _STARTED - 1:
            return False
        args = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    # The directory itself or something under it: pytest-4 must not match pytest-43.
    return any(a == d or f"{d}/" in a for a in args for d in dirs)


def _session_dirs(config: pytest.Config) -> list[str]:
    dirs = [str(d) for d in session_server_dirs()]
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None and getattr(factory, "_basetemp", None) is not None:
        dirs.append(str(factory.getbasetemp()))
    return [d.rstrip("/") for d in dirs]


def left_behind(config: pytest.Config) -> list[psutil.Process]:
    """Live processes this session started (see the module docstring)."""
    me = psutil.Process(_ME)
    found = {p.pid: p for p in me.children(recursive=True) if _alive(p)}
    dirs = _session_dirs(config)
    if dirs:
        for proc in psutil.process_iter():
            mine = proc.pid not in found and proc.pid != _ME
            if mine and _names_a_session_dir(proc, dirs) and _alive(proc):
                found[proc.pid] = proc
    # A PostgreSQL's backends are its children: report and kill the postmaster only.
    parents = set(found)
    out = []
    for proc in found.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.ppid() in parents and proc.name() == "postgres":
                continue
        out.append(proc)
    return out


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:300]}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {proc.pid}"


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


@pytest.hookimpl(trylast=True)  # after the runner's own sessionfinish tore the fixtures down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + EXIT_GRACE_S
    leaked = left_behind(session.config)
    while leaked and time.monotonic() < deadline:
        time.sleep(0.2)
        leaked = left_behind(session.config)
    if not leaked:
        return
    lines = [f"{len(leaked)} process(es) started by the tests were left running:"]
    lines += [f"  {_describe(p)}" for p in leaked]
    lines.append("  (killed now; the test that started each must stop it)")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    _kill(leaked)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
