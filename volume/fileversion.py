"""A file as one version of a region's metadata saw it: the values a `MetadataView` returns.

Declared here, not in fallback/, because both sides build them: fallback/ (the source's view,
the reader) and mirror/ (the replica's view), and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from volume.errors import BadRequestError
from volume.inode import CHUNK_SIZE, Inode, SliceRef

# One resolve answers at most this many chunk maps (256 TiB of file): a bigger read is asked
# in ranges, so neither region builds an unbounded answer.
MAX_CHUNKS_PER_FILE_READ = 65_536


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


def chunk_range(inode: Inode, offset: int, length: int | None) -> range:
    """The chunk indexes a read of [offset, offset+length) needs, clipped at the file's size
    (none for a directory or symlink: the reader refuses those by their attributes). The one
    rule, and errors, of the source's `file` call and the replica's `resolve_file`."""
    if offset < 0 or (length is not None and length < 0):
        raise BadRequestError("'offset' and 'length' must be >= 0")
    end = inode.size if length is None else min(inode.size, offset + length)
    if not inode.is_file or end <= offset:
        return range(0)
    chunks = range(offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE + 1)
    if len(chunks) > MAX_CHUNKS_PER_FILE_READ:
        raise BadRequestError(
            f"a file read resolves at most {MAX_CHUNKS_PER_FILE_READ} chunks"
            f" ({MAX_CHUNKS_PER_FILE_READ * CHUNK_SIZE >> 40} TiB) at once; read in ranges"
        )
    return chunks
