"""The client: path resolution, block reads with fallback to the source bucket, writes.

What it needs from a region is a Protocol declared here (view.py) and implemented elsewhere.
May import volume and objstore; never changelog or mirror.
"""

from fallback.client import FsClient
from fallback.view import ChunkMap, MetadataView
from fallback.writer import WriteResult

__all__ = ["ChunkMap", "FsClient", "MetadataView", "WriteResult"]
