"""A client for any region of the volume: the source, or a mirror by name.

The one place the client's ports meet their implementations: the source's HTTP API for the
source region; in a mirror, the region's PostgreSQL replica (metadata, block states), its
bucket with fallback to the source bucket, and the consistency gate. Writes go to the source
from every region.
"""

from __future__ import annotations

import contextlib

from fallback import (
    DEFAULT_UPLOAD_CONCURRENCY,
    FallbackBlocks,
    FsClient,
    ReadCounters,
    WritePolicy,
)
from mirror import RegionBlocks, ReplicaView, open_database
from objstore import ConcurrencyLayer, open_store
from volume.client import SourceClient
from volume.config import VolumeConfig

SOURCE = "source"
# The client's queries use one or two connections at a time; the region's claims hold one
# more for the life of the client (mirror/claims.py).
CLIENT_POOL_SIZE = 4
# The mirror bucket is local and a miss is answered by the source: do not back off for long
# on a failing one before falling back.
MIRROR_GET_ATTEMPTS = 3


async def open_client(
    cfg: VolumeConfig,
    region: str | None = None,
    *,
    uid: int | None = None,
    gid: int | None = None,
) -> FsClient:
    """A client reading through `region` (None or "source": the source region). Raises
    ConfigError naming the region if the config has no such mirror."""
    if region in (None, "", SOURCE):
        return await FsClient.for_source(cfg, uid=uid, gid=gid)
    mirror = cfg.mirror_region(region)  # ConfigError for an unknown name, before any opening
    stack = contextlib.AsyncExitStack()
    try:
        db = await stack.enter_async_context(
            open_database(mirror, max_size=CLIENT_POOL_SIZE, who=f"client {region}")
        )
        view = ReplicaView(db, mirror.name)
        # Checked at open: the region's own bucket must be there. The source bucket is not
        # (check=False): it is another region's, and reads of copied blocks must work while
        # it is down.
        mirror_store = await open_store(
            mirror.bucket, name="mirror", max_attempts=MIRROR_GET_ATTEMPTS
        )
        stack.push_async_callback(mirror_store.aclose)
        source_raw = await open_store(mirror.source_bucket, name="source", check=False)
        # As FsClient.for_source: one limit on requests in flight to the source bucket, for
        # writes and for fallback reads alike. FsClient closes it.
        source_store = ConcurrencyLayer(source_raw, DEFAULT_UPLOAD_CONCURRENCY)
        counters = ReadCounters()  # the gate's stale_* outcomes count here too
        blocks = FallbackBlocks(mirror_store, source_store, RegionBlocks(db), counters)
        gate = None  # consistency gate: helper "consistency" wires it
        return FsClient(
            SourceClient(cfg.api_urls, cfg.token),
            source_store,
            view=view,
            blocks=blocks,
            gate=gate,
            region=mirror.name,
            uid=uid,
            gid=gid,
            write_policy=WritePolicy.for_grace(cfg.source.upload_grace_s),
            resources=stack,
        )
    except BaseException:
        await stack.aclose()
        raise
