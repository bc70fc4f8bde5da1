"""The client: path resolution, block reads with fallback to the source bucket, writes.

What it needs from a region is a Protocol declared here (view.py) and implemented elsewhere.
May import volume and objstore; never changelog or mirror.
"""

from typing import TYPE_CHECKING

from fallback.client import FsClient
from fallback.consistency import (
    DEFAULT_STALE_WAIT_S,
    ConsistencyGate,
    ReadBound,
    StalePolicy,
)
from fallback.errors import StaleMirrorError
from fallback.fetch import FallbackBlocks, ReadCounters
from fallback.handle import FileHandle
from fallback.mirror_copy import MirrorCopy
from fallback.source_view import SourceView
from fallback.sync import SyncClient, SyncReader
from fallback.view import ChunkMap, MetadataView
from fallback.writer import DEFAULT_UPLOAD_CONCURRENCY, WritePolicy, WriteResult

if TYPE_CHECKING:
    from fallback.fsspec import MirrorFileSystem


def __getattr__(name: str) -> object:
    # fsspec takes ~150 ms to import: only the programs that use mirrorfs:// pay for it.
    if name == "MirrorFileSystem":
        from fallback.fsspec import MirrorFileSystem

        return MirrorFileSystem
    raise AttributeError(f"module 'fallback' has no attribute {name!r}")


__all__ = [
    "DEFAULT_STALE_WAIT_S",
    "DEFAULT_UPLOAD_CONCURRENCY",
    "ChunkMap",
    "ConsistencyGate",
    "FallbackBlocks",
    "FileHandle",
    "FsClient",
    "MetadataView",
    "MirrorCopy",
    "MirrorFileSystem",
    "ReadBound",
    "ReadCounters",
    "SourceView",
    "StaleMirrorError",
    "StalePolicy",
    "SyncClient",
    "SyncReader",
    "WritePolicy",
    "WriteResult",
]
