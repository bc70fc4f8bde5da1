"""The client: path resolution, block reads with fallback to the source bucket, writes.

What it needs from a region is a Protocol declared here (view.py) and implemented elsewhere.
May import volume and objstore; never changelog or mirror.
"""

from fallback.client import FsClient
from fallback.fetch import FallbackBlocks, ReadCounters
from fallback.view import ChunkMap, MetadataView
from fallback.writer import DEFAULT_UPLOAD_CONCURRENCY, WritePolicy, WriteResult

__all__ = [
    "DEFAULT_UPLOAD_CONCURRENCY",
    "ChunkMap",
    "FallbackBlocks",
    "FsClient",
    "MetadataView",
    "ReadCounters",
    "WritePolicy",
    "WriteResult",
]
