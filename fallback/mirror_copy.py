"""Writes from a mirror region that also leave their blocks in the region's own bucket.

With `copy_writes` (volume/config.py MirrorConfig), a put in a mirror region PUTs each block to
the source bucket (the write's truth, as everywhere) and then to the region's bucket, and once
the commit is in the local replica, marks those blocks copied (RegionBlocks.copied): readers
there find them at once, and the replicator never fetches them back across the boundary.

The order matters. The replica learns of a block (a 'pending' row) only when it applies the
commit; a mark before that would find no row and be lost. So the marks wait for the replica to
show the write's version (the gate's `settle`, bounded): if it does not in time, the blocks
stay 'pending' and the replicator copies them over again, costing egress, never correctness.
The mirror copy is best effort throughout: a failed PUT or mark is logged and the block is the
replicator's, as it would have been without `copy_writes`; it never fails the put.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from fallback.region import RegionBlocks
from objstore import ObjectStore
from objstore.errors import StoreError
from objstore.keys import block_key
from volume.inode import BLOCK_SIZE

log = structlog.get_logger(__name__)


class MirrorCopy:
    """The region's bucket and block table, for a put that copies its writes there."""

    def __init__(
        self,
        store: ObjectStore,
        region: RegionBlocks,
        settle: Callable[[int], Awaitable[None]],
    ) -> None:
        self.store = store
        self.region = region
        self.settle = settle

    async def put_slice(self, slice_id: int, data: bytes | memoryview) -> list[int]:
        """PUT the blocks of one slice (already in the source bucket) into the region's bucket;
        the indices of those that landed."""
        view = memoryview(data)
        count = -(-len(view) // BLOCK_SIZE)

        async def one(i: int) -> int | None:
            block = bytes(view[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
            key = block_key(slice_id, i, len(block))
            try:
                await self.store.put(key, block)
            except StoreError as exc:
                log.warning("put.mirror_copy_failed", key=key, error=str(exc))
                return None
            return i

        landed = await asyncio.gather(*(one(i) for i in range(count)))
        return [i for i in landed if i is not None]

    async def mark_copied(self, version: int, blocks: Sequence[tuple[int, int]]) -> int:
        """Once the replica shows `version` (bounded wait), mark `blocks` copied; how many
        marks were sent. Never raises for the database: the blocks stay the replicator's."""
        if not blocks:
            return 0
        await self.settle(version)
        sent = 0
        for slice_id, index in blocks:
            try:
                await self.region.copied(slice_id, index)
            except Exception as exc:  # noqa: BLE001 - a lost mark costs one copy, not the put
                log.warning(
                    "put.mirror_mark_failed", slice_id=slice_id, index=index, error=str(exc)
                )
                break
            sent += 1
        return sent

    async def discard(self, keys: Sequence[str]) -> None:
        """Delete copies of blocks no commit names (a failed put); best effort (the region's
        orphan sweep removes what is left)."""
        for key in keys:
            try:
                await self.store.delete(key)
            except StoreError as exc:
                log.warning("put.mirror_cleanup_failed", key=key, error=str(exc))
