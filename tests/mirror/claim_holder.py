"""A process holding one region claim, so a test can contend with it, or kill -9 it mid-hold.

    python -m tests.mirror.claim_holder DSN SLICE_ID INDEX

Claims block (SLICE_ID, INDEX) through `mirror.claims.RegionClaims`, prints `held` (flushed),
then holds until a line arrives on stdin (or stdin closes), releases, prints `released`.
"""

from __future__ import annotations

import asyncio
import sys

from mirror.claims import RegionClaims
from mirror.db import Database


async def hold(dsn: str, slice_id: int, index: int) -> None:
    async with await Database.connect(dsn, max_size=2) as db:
        claims = RegionClaims(db)
        try:
            async with claims.claim(slice_id, index) as claim:
                assert claim.held, "the holder could not claim"
                print("held", flush=True)
                await asyncio.to_thread(sys.stdin.readline)
            print("released", flush=True)
        finally:
            await claims.aclose()


def main() -> None:
    dsn, slice_id, index = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    asyncio.run(hold(dsn, slice_id, index))


if __name__ == "__main__":
    main()
