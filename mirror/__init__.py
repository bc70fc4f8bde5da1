"""A mirror region: create, follow the changelog into PostgreSQL, copy blocks, GC, status.

Talks to the source only over the network, through volume's records and client; never a Raft
member. May import volume and objstore; never changelog or fallback.
"""

from mirror.create import CreatedMirror, create_mirror
from mirror.daemon import run_region
from mirror.db import Database, open_database
from mirror.errors import MirrorError
from mirror.follow import LoadStats
from mirror.region_blocks import RegionBlocks
from mirror.replicate import (
    CopyQueue,
    ReplicatorConfig,
    VerifyReport,
    pending_under,
    verify,
)
from mirror.status import STATUS_FIELDS
from mirror.view import ReplicaView
from mirror.watermark import ReplicaWatermark
from mirror.worker import run_workers

__all__ = [
    "STATUS_FIELDS",
    "CopyQueue",
    "CreatedMirror",
    "Database",
    "LoadStats",
    "MirrorError",
    "RegionBlocks",
    "ReplicaView",
    "ReplicaWatermark",
    "ReplicatorConfig",
    "VerifyReport",
    "create_mirror",
    "open_database",
    "pending_under",
    "run_region",
    "run_workers",
    "verify",
]
