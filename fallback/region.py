"""What block reads in a mirror region tell the region: a port, implemented over the region's
PostgreSQL in mirror/ (wired by cli/connect.py), so fallback/ never imports mirror/."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class RegionBlocks(Protocol):
    def claim(self, slice_id: int, index: int) -> AbstractAsyncContextManager[None]:
        """Held while one process of the region fetches this block from the source bucket and
        writes it into the mirror bucket; another process claiming it waits, then finds it in
        the mirror bucket (egress once across the region's processes)."""
        ...

    async def copied(self, slice_id: int, index: int) -> None:
        """The block is in the mirror bucket, verified: mark it copied (the replicator skips
        it; a block of a slice the replica does not know is ignored)."""
        ...

    async def fell_back(self, blocks: list[tuple[int, int]]) -> None:
        """A read needed these blocks from the source: copy them first (PRIORITY_FALLBACK)."""
        ...

    async def corrupt(self, slice_id: int, index: int, reason: str) -> None:
        """The mirror bucket's copy failed its checksum: queue the block for repair."""
        ...

    async def add_counters(self, counts: Mapping[str, int]) -> None:
        """Add this process's read counters to the region's sums (status, /metrics)."""
        ...

    async def aclose(self) -> None: ...
