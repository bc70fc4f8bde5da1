"""What the client needs from a region's metadata, as a Protocol.

The source region implements it over its HTTP API (source_view.py); a mirror region implements
it over its PostgreSQL replica (in mirror/, wired by cli/), so this room never imports mirror.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from volume.inode import Inode, SliceRef


@dataclass(frozen=True)
class ChunkMap:
    """The slices of one chunk in write order, and the block checksums of each slice id."""

    slices: list[SliceRef]
    checksums: dict[int, list[str]] = field(default_factory=dict)


class MetadataView(Protocol):
    """Read-only metadata of one region. `version` is the state the answers came from."""

    async def lookup(self, path: str, *, min_version: int = 0) -> tuple[int, Inode]:
        """(version, inode); raises FsError(ENOENT, ...) for an unknown path."""
        ...

    async def readdir(
        self, path: str, *, after: str = "", limit: int = 1000, min_version: int = 0
    ) -> tuple[int, list[tuple[str, Inode]]]: ...

    async def chunk(self, ino: int, index: int, *, min_version: int = 0) -> ChunkMap: ...
