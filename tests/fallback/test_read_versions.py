"""A read returns the bytes of exactly one committed version of a file, never a mix.

Seen before the fix: a read racing an overwrite took the inode at one version and chunk maps
at a newer one, and returned 3 new bytes followed by 10 MiB of zeros, every checksum passing.
Here 20 readers race 50 overwrites of a 10 MiB file that alternates between two contents of
different sizes: every read must equal one of them exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from pathlib import Path

from fallback.client import FsClient
from tests.changelog.cluster import SourceCluster
from volume.config import load_config

MiB = 1024 * 1024
READERS = 20
OVERWRITES = 50


async def test_reads_racing_overwrites_each_see_one_whole_version(tmp_path: Path) -> None:
    contents = [os.urandom(10 * MiB), os.urandom(3)]
    digests = {hashlib.sha256(c).hexdigest(): len(c) for c in contents}
    async with SourceCluster.running(tmp_path / "vol", nodes=3) as cluster:
        cfg = load_config(cluster.config_path)
        async with await FsClient.for_source(cfg, uid=0, gid=0) as writer:
            await writer.put(io.BytesIO(contents[0]), "/model.bin")  # type: ignore[arg-type]
            done = asyncio.Event()
            seen: list[str] = []

            async def overwrite() -> None:
                try:
                    for i in range(OVERWRITES):
                        data = contents[(i + 1) % len(contents)]
                        await writer.put(io.BytesIO(data), "/model.bin")  # type: ignore[arg-type]
                finally:
                    done.set()

            async def read_loop() -> None:
                async with await FsClient.for_source(cfg, uid=0, gid=0) as reader:
                    while not done.is_set():
                        chunks = [c async for c in reader.read("/model.bin")]
                        seen.append(hashlib.sha256(b"".join(chunks)).hexdigest())

            await asyncio.gather(overwrite(), *(read_loop() for _ in range(READERS)))
    mixed = [d for d in seen if d not in digests]
    assert len(seen) >= READERS, "the readers did not race the overwrites"
    assert not mixed, f"{len(mixed)} of {len(seen)} reads returned bytes no version had"
