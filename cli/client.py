"""Connecting from Python: a client for a region of a volume, by config file and region name.

    from cli.client import connect
    with connect(region="eu") as fs:          # config: $MIRRORFS_CONFIG, else ./mirrorfs.toml
        data = fs.read_file("/models/x.bin")

`aconnect` is the async client (FsClient) for programs with a loop of their own. The region is
`region=`, else $MIRRORFS_REGION, else the source; `window_s`/`policy` bound every read.
"""

from __future__ import annotations

import os
from pathlib import Path

from cli.connect import SOURCE, open_client
from fallback import FsClient, StalePolicy, SyncClient
from volume.config import VolumeConfig, load_config
from volume.errors import ConfigError

REGION_ENV = "MIRRORFS_REGION"


def default_region(region: str | None = None) -> str:
    """`region`, else $MIRRORFS_REGION, else the source."""
    return region or os.environ.get(REGION_ENV) or SOURCE


def check_region(cfg: VolumeConfig, region: str) -> None:
    """ConfigError naming the known regions (the source and every mirror) for an unknown one."""
    if region != SOURCE and region not in cfg.mirrors:
        known = ", ".join([SOURCE, *sorted(cfg.mirrors)])
        err = ConfigError(f"no region named {region!r} (known: {known})", path=str(cfg.path))
        err.hint = f"name one of them with --region (or ${REGION_ENV})"
        raise err


async def aconnect(
    config: str | os.PathLike[str] | VolumeConfig | None = None,
    region: str | None = None,
    *,
    window_s: float | None = None,
    policy: StalePolicy | str | None = None,
    uid: int | None = None,
    gid: int | None = None,
) -> FsClient:
    """The async client for `region` (close it: `async with await aconnect(...) as fs`)."""
    if isinstance(config, VolumeConfig):
        cfg = config
    else:
        cfg = load_config(None if config is None else Path(config))
    name = default_region(region)
    check_region(cfg, name)
    return await open_client(cfg, name, uid=uid, gid=gid, window_s=window_s, policy=policy)


def connect(
    config: str | os.PathLike[str] | VolumeConfig | None = None,
    region: str | None = None,
    *,
    window_s: float | None = None,
    policy: StalePolicy | str | None = None,
    uid: int | None = None,
    gid: int | None = None,
) -> SyncClient:
    """The synchronous client for `region`, for scripts and notebooks (close it, or `with`)."""
    return SyncClient(
        lambda: aconnect(config, region, window_s=window_s, policy=policy, uid=uid, gid=gid)
    )
