"""One reader of the model-load storm, as a process of its own (tests/fallback/test_storm.py and
scenarios/bench_client.py start N of them at once).

    python -m scenarios.storm_reader CONFIG REGION PATH

Opens a client for REGION (cli/connect.py `open_client`), prints `ready` (flushed), waits for a
line on stdin (so every reader starts together), reads PATH whole, then prints one JSON line:
{"sha256", "size", "ttfb_s", "seconds"}, and closes the client (which flushes its counters to
the region). Exits non-zero, with the error on stderr, if anything fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time

import orjson
import structlog

from cli.connect import open_client
from volume.config import load_config


async def read_once(config: str, region: str, path: str) -> dict[str, object]:
    client = await open_client(load_config(config), region, uid=0, gid=0)
    async with client:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        digest = hashlib.sha256()
        size = 0
        ttfb_s = None
        started = time.perf_counter()
        async for chunk in client.read(path):
            if ttfb_s is None:
                ttfb_s = time.perf_counter() - started
            size += len(chunk)
            # hashlib drops the GIL on big updates: the loop keeps its fetches going meanwhile.
            await asyncio.to_thread(digest.update, chunk)
        seconds = time.perf_counter() - started
    return {"sha256": digest.hexdigest(), "size": size, "ttfb_s": ttfb_s, "seconds": seconds}


def main() -> None:
    config, region, path = sys.argv[1:4]
    # stdout carries the protocol (`ready`, the result); logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    result = asyncio.run(read_once(config, region, path))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
