"""The client: path resolution, block reads with fallback to the source bucket, writes.

What it needs from a region is a Protocol declared here (view.py) and implemented elsewhere.
May import volume and objstore; never changelog or mirror.
"""

from fallback.client import FsClient
from fallback.consistency import (
    DEFAULT_STALE_WAIT_S,
    ConsistencyGate,
    ReadBound,
    StalePolicy,
)
from fallback.errors import StaleMirrorError
from fallback.fetch import FallbackBlocks, ReadCounters
from fallback.mirror_copy import MirrorCopy
from fallback.source_view import SourceView
from fallback.view import ChunkMap, MetadataView
from fallback.writer import DEFAULT_UPLOAD_CONCURRENCY, WritePolicy, WriteResult

__all__ = [
    "DEFAULT_STALE_WAIT_S",
    "DEFAULT_UPLOAD_CONCURRENCY",
    "ChunkMap",
    "ConsistencyGate",
    "FallbackBlocks",
    "FsClient",
    "MetadataView",
    "MirrorCopy",
    "ReadBound",
    "ReadCounters",
    "SourceView",
    "StaleMirrorError",
    "StalePolicy",
    "WritePolicy",
    "WriteResult",
]
