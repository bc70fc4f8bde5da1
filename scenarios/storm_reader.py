"""One reader of the model-load storm, as a process of its own (tests/fallback/test_storm.py and
scenarios/bench_client.py start N of them at once).

    python -m scenarios.storm_reader CONFIG REGION PATH

Opens a client for REGION (cli/connect.py `open_client`), prints `ready` (flushed), waits for a
line on stdin (so every reader starts together), reads PATH whole, then prints one JSON line:
{"sha256", "size", "ttfb_s", "seconds"}, and closes the client (which flushes its counters to
the region). Exits non-zero, with the error on stderr, if anything fails.

`readers`, `go` and `results_of` drive N of them from another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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


class StormReaderError(RuntimeError):
    """A reader process did not start or did not finish; the message ends with its stderr."""


@contextlib.asynccontextmanager
async def readers(
    config: Path, region: str, path: str, n: int, *, start_timeout_s: float = 60.0
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """`n` reader processes, each with its client open (`ready`), waiting for `go`; every one
    still running at the end is killed."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "scenarios.storm_reader",
            str(config),
            region,
            path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(n)
    ]
    try:
        async with asyncio.timeout(start_timeout_s):
            for proc in procs:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                if line.strip() != b"ready":
                    _, err = await proc.communicate()
                    raise StormReaderError(
                        f"a storm reader did not start: {line!r}\n{err.decode()[-3000:]}"
                    )
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()


async def go(procs: list[asyncio.subprocess.Process]) -> None:
    """Start every reader at once."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()


async def results_of(
    procs: list[asyncio.subprocess.Process], *, timeout_s: float = 120.0
) -> list[dict[str, Any]]:
    """Each reader's result line, in order; StormReaderError for one that failed."""
    results = []
    async with asyncio.timeout(timeout_s):
        for proc in procs:
            out, err = await proc.communicate()
            if proc.returncode != 0:
                raise StormReaderError(f"a storm reader failed:\n{err.decode()[-3000:]}")
            results.append(orjson.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    config, region, path = sys.argv[1:4]
    # stdout carries the protocol (`ready`, the result); logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    result = asyncio.run(read_once(config, region, path))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
