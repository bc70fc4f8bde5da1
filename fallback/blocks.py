"""Where a read gets one block from: a port, so the read path does not know about regions.

The source region reads every block from the source bucket (`SourceBlocks`). A mirror region
reads a copied block from its own bucket and falls back to the source bucket for the rest
(fallback/fetch.py); both verify the checksum before a byte is returned.
"""

from __future__ import annotations

from typing import Protocol

from fallback.reader import Piece, fetch_block
from objstore import ObjectStore


class BlockSource(Protocol):
    async def get(self, piece: Piece, state: str | None) -> bytes:
        """The whole block `piece` lies in, verified. `state` is the replica's word for it
        ("copied", "pending", "failed"; None when the view has no bucket of its own)."""
        ...

    async def aclose(self) -> None: ...


class SourceBlocks:
    """Every block from one bucket (the source region's client)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def get(self, piece: Piece, state: str | None) -> bytes:
        assert piece.slice_id is not None
        return await fetch_block(
            self.store, piece.slice_id, piece.index, piece.block_size, piece.checksum
        )

    async def aclose(self) -> None:
        return None
