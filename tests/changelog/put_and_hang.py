"""A client that dies between upload and commit: it puts a file whose source hands out two 4 MiB
pieces and then blocks forever, so the two blocks land in the source bucket and the commit never
comes. The test kills it with -9.

    python -m tests.changelog.put_and_hang CONFIG PATH
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading

from fallback import FsClient
from fallback.writer import WritePolicy
from objstore import open_store
from volume.client import SourceClient
from volume.config import load_config

PIECE = 4 * 1024 * 1024


class TwoPiecesThenNothing(io.RawIOBase):
    def __init__(self) -> None:
        self.left = 2

    def read(self, size: int = -1) -> bytes:
        if self.left:
            self.left -= 1
            return os.urandom(PIECE)
        threading.Event().wait()  # the local source never answers again
        return b""


async def main(config: str, path: str) -> None:
    cfg = load_config(config)
    store = await open_store(cfg.source.bucket, name="source")
    client = FsClient(
        SourceClient(cfg.api_urls, cfg.token),
        store,
        uid=0,
        gid=0,
        write_policy=WritePolicy(piece_bytes=PIECE),
    )
    async with client:
        await client.put(TwoPiecesThenNothing(), path)  # type: ignore[arg-type]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
