"""`mirrorfs mirror create NAME`: a new mirror region, all or nothing.

Order matters: first check everything that can be wrong (name, bucket, database, the source and
its token) without changing anything; then register with the source (a Raft-committed record,
so the source's retention keeps every record from here on for us); then load a snapshot (which
also queues every live block for copy); last, write the mirror into the config file. A failure
after registering removes the registration again, so re-running `create` after fixing the cause
works.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from mirror.db import open_database
from mirror.errors import MirrorError
from mirror.follow import LoadStats, load_from_source
from objstore import open_store
from volume.client import SourceClient
from volume.config import MirrorConfig, VolumeConfig, write_config
from volume.errors import ChangelogError
from volume.tokens import MIRROR_PREFIX, mint_token, token_key

log = structlog.get_logger(__name__)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class CreatedMirror:
    name: str
    version: int
    config: VolumeConfig


async def create_mirror(
    cfg: VolumeConfig,
    mcfg: MirrorConfig,
    name: str,
    *,
    on_step: Callable[[str], None] = lambda _: None,
    on_rows: Callable[[LoadStats], None] | None = None,
) -> CreatedMirror:
    """Create, load and record the mirror. Raises MirrorError/ChangelogError/StoreError with
    nothing left behind (no registration, no config entry)."""
    if not NAME_RE.match(name):
        raise MirrorError(f"bad mirror name {name!r}", hint="use 1-63 of a-z, 0-9 and '-'")
    if name in cfg.mirrors:
        raise MirrorError(
            f"mirror {name!r} already exists in {cfg.path}",
            hint=f"run it with `mirrorfs mirror run {name}`, or remove it first",
        )
    if cfg.path is None:
        raise MirrorError("the volume config has no file to record the mirror in")
    on_step(f"checking the mirror bucket {mcfg.bucket}")
    store = await open_store(mcfg.bucket, name="mirror")
    await store.aclose()
    if not mcfg.token:  # the mirror's own token, recorded with it: its daemon uses no other
        mcfg = mcfg.model_copy(
            update={"token": mint_token(token_key(cfg.secret), MIRROR_PREFIX + name)}
        )
    on_step("checking the source region")
    # Registering is an operator's (admin) act; the mirror's own token is for following.
    async with SourceClient(cfg.api_urls, cfg.token, retry_s=10) as source:
        await _check_source(cfg, source)
        on_step("connecting to PostgreSQL" + ("" if mcfg.dsn else " (embedded)"))
        scratch = cfg.model_copy(update={"mirrors": {**cfg.mirrors, name: mcfg}})
        async with open_database(scratch.mirror_region(name)) as db:
            await db.migrate()
            on_step("registering with the source")
            await source.mirror(name, "register")
            try:
                on_step("loading a snapshot")
                version, _ = await load_from_source(db, source, on_progress=on_rows)
                await db.set_meta("mirror", name)
                await db.set_meta("volume", cfg.name)
            except BaseException:
                await _unregister(source, name)
                raise
    write_config(scratch, cfg.path)
    log.info("mirror.created", mirror=name, version=version)
    return CreatedMirror(name, version, scratch)


async def _check_source(cfg: VolumeConfig, source: SourceClient) -> None:
    last: Exception | None = None
    for url in cfg.api_urls:
        try:
            await source.status(url)  # proves the token too (401 -> AuthError)
            return
        except ChangelogError as exc:
            if exc.http_status == 401:
                raise
            last = exc
        except OSError as exc:
            last = exc
        except Exception as exc:  # noqa: BLE001 - aiohttp connection errors: try the next node
            last = exc
    raise MirrorError(
        f"no source node answered ({', '.join(cfg.api_urls)}): {last}",
        hint="start the source nodes (`mirrorfs source serve --node N`)",
    )


async def _unregister(source: SourceClient, name: str) -> None:
    try:
        await source.mirror(name, "remove")
    except Exception as exc:  # noqa: BLE001 - best effort; the error that brought us here wins
        log.warning("mirror.unregister_failed", mirror=name, error=str(exc))
