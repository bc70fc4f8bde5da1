"""What the client needs from a region's metadata, as a Protocol.

The source region implements it over its HTTP API (source_view.py); a mirror region implements
it over its PostgreSQL replica (in mirror/, wired by cli/), so this room never imports mirror.
The values it returns (ChunkMap, FileVersion) live in volume/fileversion.py: mirror/ builds
them too.
"""

from __future__ import annotations

from typing import Protocol

from volume.fileversion import ChunkMap, FileVersion
from volume.inode import Inode

__all__ = ["ChunkMap", "FileVersion", "MetadataView"]


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
