"""`mirrorfs mirror create NAME`: a new mirror region, all or nothing.

Order matters: first check everything that can be wrong (name, bucket, the source and its
token, a registration of the same name, the database and whose replica it holds) without
changing anything; then, with `--force` only, wipe a database that holds another mirror; then
register with the source (a Raft-committed record, so the source's retention keeps every record
from here on for us); then load a snapshot, which also queues every live block for copy and
stamps the database as this mirror's (mirror/stamp.py), in one transaction; ack the snapshot's
version; last, write the mirror into the config file, while still attached to the database, so
a daemon started the moment the config names the mirror finds its server running.

A failure after registering removes the registration again, so re-running `create` after
fixing the cause works. A `create` that died after registering (killed) leaves a registration
that never acked and no config entry: re-running `create` takes it over (removes it and
registers afresh), and `mirror remove NAME` removes it. A registration of the same name that
has acked belongs to a region that ran: never taken over.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from mirror.db import open_database
from mirror.errors import MirrorError
from mirror.follow import LoadStats, load_from_source
from mirror.stamp import Stamp, check_for_create
from objstore import open_store
from volume.client import SourceClient
from volume.config import MirrorConfig, VolumeConfig, write_config
from volume.errors import ChangelogError, MirrorRemovedError
from volume.tokens import MIRROR_PREFIX, mint_token, token_key

log = structlog.get_logger(__name__)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ACK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CreatedMirror:
    name: str
    version: int
    config: VolumeConfig
    took_over: bool = False  # a registration that never acked (a dead `create`) was replaced
    wiped: bool = False  # `--force` wiped a database that held another mirror


async def create_mirror(
    cfg: VolumeConfig,
    mcfg: MirrorConfig,
    name: str,
    *,
    force: bool = False,
    on_step: Callable[[str], None] = lambda _: None,
    on_rows: Callable[[LoadStats], None] | None = None,
    on_warning: Callable[[str], None] = lambda _: None,
) -> CreatedMirror:
    """Create, load and record the mirror. Raises MirrorError/ChangelogError/StoreError with
    nothing left behind (no registration, no config entry, the database as it was), except
    that `force` wipes a database holding another mirror (said through `on_warning`)."""
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
        status = await _check_source(cfg, source)
        stale = _stale_registration(status, name)
        on_step("connecting to PostgreSQL" + ("" if mcfg.dsn else " (embedded)"))
        scratch = cfg.model_copy(update={"mirrors": {**cfg.mirrors, name: mcfg}})
        region = scratch.mirror_region(name)
        stamp = Stamp.of(region)
        async with open_database(region, who=f"mirror create {name}") as db:
            holds = await check_for_create(db, stamp, force=force)
            wiped = holds is not None and not holds.is_same_owner(stamp)
            if wiped:
                assert holds is not None
                on_warning(f"wiping database {db.dsn}: it held {holds.describe()} (--force)")
                log.warning("mirror.database_wiped", dsn=db.dsn, held=holds.describe())
                await db.wipe()
            await db.migrate()
            if stale is not None:
                on_warning(
                    f"taking over registration {name!r} at the source: it never acked since"
                    f" version {stale.get('registered')} (a `mirror create` that did not finish)"
                )
                with contextlib.suppress(MirrorRemovedError):
                    await source.mirror(name, "remove")
            on_step("registering with the source")
            registered = await source.mirror(name, "register")
            if registered.get("existed"):
                raise _name_taken(name, registered)  # registered by someone else since: theirs
            try:
                on_step("loading a snapshot")
                version, _ = await load_from_source(db, source, on_progress=on_rows, stamp=stamp)
                await _ack(source, name, version)
                write_config(scratch, cfg.path)
            except BaseException:
                await _unregister(source, name)
                raise
    log.info("mirror.created", mirror=name, version=version)
    return CreatedMirror(name, version, scratch, took_over=stale is not None, wiped=wiped)


def _stale_registration(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The source's registration of `name` if it is a dead `create`'s (never acked); None if
    there is none. Raises MirrorError if a region of that name has acked: it ran, it is not
    ours to take."""
    entry = (status.get("mirrors") or {}).get(name)
    if entry is None:
        return None
    never_acked = entry.get("never_acked")
    if never_acked is None:  # a node without the flag: no ack since registering
        never_acked = int(entry.get("acked", 0)) < int(entry.get("registered", 0))
    if never_acked:
        return dict(entry)
    raise _name_taken(name, entry)


def _name_taken(name: str, entry: dict[str, Any]) -> MirrorError:
    return MirrorError(
        f"mirror {name!r} is already registered with the source and has acked version"
        f" {entry.get('acked')}: another region runs under that name",
        hint=f"pick another name, or `mirrorfs mirror remove {name}` if that region is gone",
    )


async def _check_source(cfg: VolumeConfig, source: SourceClient) -> dict[str, Any]:
    """The status of the first node that answers (proves the token too: 401 -> AuthError)."""
    last: Exception | None = None
    for url in cfg.api_urls:
        try:
            return await source.status(url)
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


async def _ack(source: SourceClient, name: str, version: int) -> None:
    """Ack the snapshot's version: the registration is then a finished one (`source status`
    lists registrations that never acked), and the source may trim below it. Best effort: the
    daemon acks as soon as it runs."""
    try:
        await source.mirror(name, "ack", version=version)
    except ChangelogError as exc:
        log.warning("mirror.create_ack_failed", mirror=name, error=str(exc))


async def _unregister(source: SourceClient, name: str) -> None:
    try:
        await source.mirror(name, "remove")
    except Exception as exc:  # noqa: BLE001 - best effort; the error that brought us here wins
        log.warning("mirror.unregister_failed", mirror=name, error=str(exc))
