"""A file as one version of a region's metadata saw it: the values a `MetadataView` returns.

Declared here, not in fallback/, because both sides build them: fallback/ (the source's view,
the reader) and mirror/ (the replica's view), and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
