"""Block reads in a mirror region: the mirror bucket when the replica says copied, else the
source bucket, and every block fetched from the source written into the mirror bucket.

Per block (`FallbackBlocks.get`):
- "copied": GET it from the mirror bucket and verify it. A miss, or any mirror failure, falls
  back; a checksum mismatch also tells the region (`RegionBlocks.corrupt`: queued for repair).
- otherwise, or after a failed mirror GET: the *fallback*. One task per block key in this
  process (concurrent readers of the block await it: one source GET), run under the region's
  claim (one process of the region at a time): re-check the mirror bucket first (another
  process, or the replicator, may just have written it), else GET it from the source, verify,
  hand it to the readers, then PUT it into the mirror bucket and mark it copied. So a block
  crosses the region boundary once, however many readers want it (DESIGN section 6).

The readers get the bytes as soon as they are verified; the mirror PUT and the copied mark
follow in the same task, still under the claim (so a waiting process finds the block in the
mirror bucket), and at most `max_writeback` blocks are in that state, so memory stays bounded:
the reader's readahead bounds its fetches, this bounds the write-backs behind them. A failed
write-back never fails a read: it is logged, and the block is left to the replicator.

Counters (`ReadCounters`) are kept in memory and added to the region's sums every
`flush_interval_s` and on `aclose`; the blocks read from the source are reported to the region
(`fell_back`: copy them first) at the same times, in one batch, by which time most of them are
already copied by their own read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

import structlog

from fallback.reader import Piece, fetch_block
from fallback.region import RegionBlocks
from objstore import NotFoundError, ObjectStore, StoreError
from objstore.errors import ChecksumError
from objstore.keys import block_key

log = structlog.get_logger(__name__)

COPIED = "copied"  # the replica's word for a block in the mirror bucket (mirror BlockState)
DEFAULT_FLUSH_INTERVAL_S = 2.0
# Blocks fetched from the source whose mirror PUT is not done yet, each up to 4 MiB: 128 MiB.
DEFAULT_MAX_WRITEBACK = 32
DEFAULT_CLOSE_WAIT_S = 30.0  # aclose lets write-backs in progress finish for this long


@dataclass
class ReadCounters:
    """This process's block reads through a mirror region (the region's `/metrics` names).

    fallback_reads/bytes: blocks GET from the source bucket. mirror_hits/bytes: blocks served
    from the mirror bucket (a re-check under the claim included). source_gets_saved: reads of
    a block that needed the source but shared another read's GET (in this process, or in
    another that wrote it into the mirror bucket first). corrupt_repaired: corrupt mirror
    copies overwritten with verified bytes. The stale_* counts are the consistency gate's
    (fallback/consistency.py StaleCounters): the gate counts into this object, so its outcomes
    reach the region with the rest. The cache_* counts are the local block cache's
    (fallback/cached_blocks.py): cache_hits/bytes served from it (no request to either
    bucket), cache_misses/bytes asked of the region, cache_corrupt cache files that failed
    their check and were fetched again."""

    fallback_reads: int = 0
    fallback_bytes: int = 0
    mirror_hits: int = 0
    mirror_bytes: int = 0
    source_gets_saved: int = 0
    corrupt_repaired: int = 0
    stale_waits: int = 0
    stale_served: int = 0
    stale_errors: int = 0
    stale_source: int = 0
    cache_hits: int = 0
    cache_hit_bytes: int = 0
    cache_misses: int = 0
    cache_miss_bytes: int = 0
    cache_corrupt: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def since(self, before: dict[str, int]) -> dict[str, int]:
        """The counts that grew since `before` (an earlier `as_dict`), by how much."""
        now = self.as_dict()
        return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


class FallbackBlocks:
    """fallback's `BlockSource` for a mirror region (see the module docstring)."""

    def __init__(
        self,
        mirror: ObjectStore,
        source: ObjectStore,
        region: RegionBlocks,
        counters: ReadCounters | None = None,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        max_writeback: int = DEFAULT_MAX_WRITEBACK,
    ) -> None:
        self.mirror = mirror
        self.source = source
        self.region = region
        self.counters = counters or ReadCounters()
        self.flush_interval_s = flush_interval_s
        self._reported = self.counters.as_dict()  # what the region has been told
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writeback = asyncio.Semaphore(max_writeback)
        self._fell_back: set[tuple[int, int]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    async def get(self, piece: Piece, state: str | None) -> bytes:
        assert piece.slice_id is not None
        self.start_reporting()
        corrupt = False
        recheck = True
        if state == COPIED:
            try:
                data = await self._fetch(self.mirror, piece)
            except NotFoundError:
                log.warning("fallback.mirror_missing", key=self._key(piece))
            except ChecksumError as exc:
                corrupt = True
                await self._report_corrupt(piece, exc)
            except StoreError as exc:
                recheck = False  # the mirror bucket is failing: asking again only delays
                log.warning("fallback.mirror_failed", key=self._key(piece), error=str(exc))
            else:
                self._hit(data)
                return data
        self._fell_back.add((piece.slice_id, piece.index))
        return await self._shared(piece, corrupt=corrupt, recheck=recheck)

    # -- the fallback, once per block key ------------------------------------------------------

    async def _shared(self, piece: Piece, *, corrupt: bool, recheck: bool) -> bytes:
        key = self._key(piece)
        fut = self._inflight.get(key)
        if fut is not None:
            self.counters.source_gets_saved += 1
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        # Nobody may be left awaiting it (every reader cancelled): retrieve the error anyway.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight[key] = fut
        task = asyncio.create_task(
            self._fetch_through(piece, key, fut, corrupt=corrupt, recheck=recheck)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Shielded: a reader that stops (a cancelled readahead) leaves the fetch running for
        # the other readers of the block, and the block still lands in the mirror bucket.
        return await asyncio.shield(fut)

    async def _fetch_through(
        self,
        piece: Piece,
        key: str,
        fut: asyncio.Future[bytes],
        *,
        corrupt: bool,
        recheck: bool = True,
    ) -> None:
        assert piece.slice_id is not None
        try:
            async with self._writeback, self._claim(piece):
                again = await self._recheck(piece) if recheck else None
                if again is not None:  # another process (or the replicator) wrote it just now
                    self.counters.source_gets_saved += 1
                    self._hit(again)
                    fut.set_result(again)
                    await self._mark_copied(piece)
                    return
                data = await self._fetch(self.source, piece)
                self.counters.fallback_reads += 1
                self.counters.fallback_bytes += len(data)
                fut.set_result(data)
                await self._write_back(piece, key, data, corrupt=corrupt)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every reader of the block
            if not fut.done():
                fut.set_exception(exc)
            else:
                log.warning("fallback.write_back_failed", key=key, error=repr(exc))
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]

    @contextlib.asynccontextmanager
    async def _claim(self, piece: Piece) -> AsyncIterator[None]:
        """The region's claim on the block; a claim that cannot be had is read without (a claim
        saves egress, it is never needed for correctness: blocks are immutable)."""
        assert piece.slice_id is not None
        try:
            cm = self.region.claim(piece.slice_id, piece.index)
            await cm.__aenter__()
        except Exception as exc:  # noqa: BLE001 - whatever the region's database raises
            log.warning("fallback.claim_failed", key=self._key(piece), error=str(exc))
            yield
            return
        try:
            yield
        except BaseException as exc:
            if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await cm.__aexit__(None, None, None)

    async def _recheck(self, piece: Piece) -> bytes | None:
        try:
            return await self._fetch(self.mirror, piece)
        except (NotFoundError, ChecksumError):
            return None
        except StoreError as exc:
            log.warning("fallback.mirror_failed", key=self._key(piece), error=str(exc))
            return None

    async def _write_back(self, piece: Piece, key: str, data: bytes, *, corrupt: bool) -> None:
        """Put the verified block into the mirror bucket and mark it copied; a failure is
        logged and left to the replicator (the block stays pending, at fallback priority)."""
        try:
            await self.mirror.put(key, data)
        except StoreError as exc:
            log.warning("fallback.mirror_write_failed", key=key, error=str(exc))
            return
        if corrupt:
            self.counters.corrupt_repaired += 1
        await self._mark_copied(piece)

    async def _mark_copied(self, piece: Piece) -> None:
        assert piece.slice_id is not None
        try:
            await self.region.copied(piece.slice_id, piece.index)
        except Exception as exc:  # noqa: BLE001 - the read has its bytes; the replicator copes
            log.warning("fallback.mark_copied_failed", key=self._key(piece), error=str(exc))

    async def _report_corrupt(self, piece: Piece, exc: ChecksumError) -> None:
        assert piece.slice_id is not None
        log.warning("fallback.mirror_corrupt", key=self._key(piece), error=str(exc))
        try:
            await self.region.corrupt(piece.slice_id, piece.index, exc.message)
        except Exception as err:  # noqa: BLE001 - the read goes on from the source
            log.warning("fallback.report_corrupt_failed", key=self._key(piece), error=str(err))

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _key(piece: Piece) -> str:
        assert piece.slice_id is not None
        return block_key(piece.slice_id, piece.index, piece.block_size)

    @staticmethod
    async def _fetch(store: ObjectStore, piece: Piece) -> bytes:
        assert piece.slice_id is not None
        return await fetch_block(
            store, piece.slice_id, piece.index, piece.block_size, piece.checksum
        )

    def _hit(self, data: bytes) -> None:
        self.counters.mirror_hits += 1
        self.counters.mirror_bytes += len(data)

    # -- reporting to the region ---------------------------------------------------------------

    def start_reporting(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Tell the region what happened since the last flush: the blocks read from the source
        (raised to fallback priority) and the counters. Failures are logged and kept for the
        next flush."""
        async with self._flush_lock:
            blocks, self._fell_back = sorted(self._fell_back), set()
            if blocks:
                try:
                    await self.region.fell_back(blocks)
                except Exception as exc:  # noqa: BLE001 - kept, tried again next time
                    self._fell_back.update(blocks)
                    log.warning("fallback.report_fell_back_failed", error=str(exc))
                except BaseException:  # cancelled (aclose stops the flusher): aclose reports
                    self._fell_back.update(blocks)
                    raise
            now = self.counters.as_dict()
            delta = self.counters.since(self._reported)
            if delta:
                try:
                    await self.region.add_counters(delta)
                    self._reported = now
                except Exception as exc:  # noqa: BLE001 - kept, added next time
                    log.warning("fallback.report_counters_failed", error=str(exc))

    async def aclose(self) -> None:
        """Let write-backs in progress finish (up to DEFAULT_CLOSE_WAIT_S), flush, close."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=DEFAULT_CLOSE_WAIT_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await self.flush()
        await self.region.aclose()
