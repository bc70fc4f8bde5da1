"""A client for any region of the volume: the source, or a mirror by name.

The one place the client's ports meet their implementations: the source's HTTP API for the
source region; in a mirror, the region's PostgreSQL replica (metadata, block states), its
bucket with fallback to the source bucket, and the consistency gate. Writes go to the source
from every region.
"""

from __future__ import annotations

from fallback import FsClient
from volume.config import VolumeConfig

SOURCE = "source"


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
    cfg.mirror(region)  # ConfigError for an unknown name, before anything is opened
    raise NotImplementedError("mirror regions: wired by issue 10")
