"""A client for any region of the volume: the source, or a mirror by name.

The one place the client's ports meet their implementations: the source's HTTP API for the
source region; in a mirror, the region's PostgreSQL replica (metadata, block states), its
bucket with fallback to the source bucket, and the consistency gate. Writes go to the source
from every region.
"""

from __future__ import annotations

import contextlib
import os

from fallback import (
    DEFAULT_STALE_WAIT_S,
    DEFAULT_UPLOAD_CONCURRENCY,
    ConsistencyGate,
    FallbackBlocks,
    FsClient,
    MirrorCopy,
    ReadCounters,
    SourceView,
    StalePolicy,
    WritePolicy,
)
from mirror import RegionBlocks, ReplicaView, ReplicaWatermark, open_database
from objstore import ConcurrencyLayer, open_store
from volume.client import SourceClient
from volume.config import VolumeConfig

SOURCE = "source"
# The client's queries use one or two connections at a time; the region's claims hold one
# more for the life of the client (mirror/claims.py), and so does the consistency gate's
# LISTEN for the watermark once a read has waited (mirror/watermark.py).
CLIENT_POOL_SIZE = 5
# The mirror bucket is local and a miss is answered by the source: do not back off for long
# on a failing one before falling back.
MIRROR_GET_ATTEMPTS = 3
# A read over its window waits for the replica at least this many source ticks (a following
# replica moves every tick): with a slow ticker configured, the default wait would be shorter.
STALE_WAIT_TICKS = 5


async def open_client(
    cfg: VolumeConfig,
    region: str | None = None,
    *,
    uid: int | None = None,
    gid: int | None = None,
    window_s: float | None = None,
    policy: StalePolicy | str | None = None,
) -> FsClient:
    """A client reading through `region` (None or "source": the source region). Raises
    ConfigError naming the region if the config has no such mirror.

    In a mirror, reads are held to `window_s` (None: the region's `window_s` from the config)
    with `policy` when the replica is staler (None: `source`); a call's ReadBound overrides
    both (fallback/consistency.py). The source region is never stale: both are ignored there.
    ValueError for a negative window or an unknown policy."""
    if region in (None, "", SOURCE):
        return await FsClient.for_source(cfg, uid=uid, gid=gid)
    mirror = cfg.mirror_region(region)  # ConfigError for an unknown name, before any opening
    stack = contextlib.AsyncExitStack()
    try:
        db = await stack.enter_async_context(
            open_database(mirror, max_size=CLIENT_POOL_SIZE, who=f"client {region}")
        )
        uid = os.getuid() if uid is None else uid  # as FsClient: the caller's identity
        gid = os.getgid() if gid is None else gid
        view = ReplicaView(db, mirror.name, uid=uid, gid=gid)
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
        region_blocks = RegionBlocks(db)
        blocks = FallbackBlocks(mirror_store, source_store, region_blocks, counters)
        source = SourceClient(cfg.api_urls, cfg.token)
        progress = ReplicaWatermark(db)
        stack.push_async_callback(progress.aclose)  # before the database closes
        gate = ConsistencyGate(
            mirror.name,
            view,
            SourceView(source, uid=uid, gid=gid),
            progress,
            window_s=mirror.window_s if window_s is None else window_s,
            policy=StalePolicy.SOURCE if policy is None else StalePolicy(policy),
            wait_s=max(DEFAULT_STALE_WAIT_S, STALE_WAIT_TICKS * cfg.source.tick_interval_s),
            counters=counters,
        )
        copy = MirrorCopy(mirror_store, region_blocks, gate.settle) if mirror.copy_writes else None
        return FsClient(
            source,
            source_store,
            view=view,
            blocks=blocks,
            gate=gate,
            region=mirror.name,
            uid=uid,
            gid=gid,
            write_policy=WritePolicy.for_grace(cfg.source.upload_grace_s),
            mirror_copy=copy,
            resources=stack,
        )
    except BaseException:
        await stack.aclose()
        raise
