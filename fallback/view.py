"""What the client needs from a region's metadata, as a Protocol.

The source region implements it over its HTTP API (source_view.py); a mirror region implements
it over its PostgreSQL replica (in mirror/, wired by cli/), so this room never imports mirror.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from volume.inode import Inode, SliceRef


@dataclass(frozen=True)
class ChunkMap:
    """The slices of one chunk in write order, and the block checksums of each slice id."""

    slices: list[SliceRef]
    checksums: dict[int, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class FileVersion:
    """A file as one version of the metadata saw it: its inode and the chunk maps a read of
    some range needs, all from the same state (never an inode of one version with chunks of
    another: that mix returned bytes no version ever held)."""

    version: int
    inode: Inode
    chunks: dict[int, ChunkMap] = field(default_factory=dict)  # absent index: an empty chunk
    # A mirror's view: {(slice_id, block index): "copied" | "pending" | "failed"} for the
    # blocks of these chunks, read in the same snapshot. None: a view with no bucket of its own
    # (the source), whose blocks are all read from the source bucket.
    blocks: Mapping[tuple[int, int], str] | None = None


class MetadataView(Protocol):
    """Read-only metadata of one region. `version` is the state the answers came from."""

    async def lookup(self, path: str, *, min_version: int = 0) -> tuple[int, Inode]:
        """(version, inode); raises FsError(ENOENT, ...) for an unknown path."""
        ...

    async def readdir(
        self, path: str, *, after: str = "", limit: int = 1000, min_version: int = 0
    ) -> tuple[int, list[tuple[str, Inode]]]: ...

    async def chunk(self, ino: int, index: int, *, min_version: int = 0) -> ChunkMap: ...

    async def resolve_file(
        self, path: str, *, offset: int = 0, length: int | None = None, min_version: int = 0
    ) -> FileVersion:
        """The inode at `path` and the chunk maps covering [offset, offset+length) (clipped at
        its size; None = to the end), at one version >= min_version. FsError as lookup."""
        ...
