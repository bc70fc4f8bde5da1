"""The writer of bench_filer_sync's lag rounds, in its own process: open-loop small-file writes
at a fixed rate, one line per acknowledgement on stdout. In the benchmark's own process the
writes (mirrorfs's client is Python, filer.sync's is an S3 PUT) would share one event loop, and
one core, with the poller that times visibility, and a busy loop would add its delay to the lag.

    python -m scenarios.bench_writer mirrorfs CONFIG RATE SECONDS PREFIX
    python -m scenarios.bench_writer s3 ENDPOINT/BUCKET RATE SECONDS PREFIX

Prints "ready", waits for a line on stdin, then per write "ack PATH VERSION T_ACK WRITE_MS"
(T_ACK: time.perf_counter(), CLOCK_MONOTONIC on Linux, so the parent can compare it with its
own clock), and "done" at the end.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiobotocore.session import get_session

from fallback import FsClient
from scenarios.bench_topology import quiet_with_credentials
from volume.config import load_config

SMALL = 4096


async def write_at(
    rate: float, seconds: float, prefix: str, put: Callable[[str, bytes], Awaitable[int]]
) -> None:
    data = os.urandom(SMALL)
    inflight: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        path = f"{prefix}/{i}"
        t = time.perf_counter()
        version = await put(path, data[:-8] + i.to_bytes(8, "little"))
        now = time.perf_counter()
        sys.stdout.write(f"ack {path} {version} {now!r} {(now - t) * 1000:.3f}\n")
        sys.stdout.flush()

    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        task = asyncio.create_task(one(i))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
    await asyncio.gather(*inflight)


async def main(kind: str, target: str, rate: float, seconds: float, prefix: str) -> None:
    if kind == "mirrorfs":
        client = await FsClient.for_source(load_config(Path(target)), uid=0, gid=0)
        async with client:

            async def put(path: str, data: bytes) -> int:
                return (await client.put(io.BytesIO(data), path)).version  # type: ignore[arg-type]

            await go(rate, seconds, prefix, put)
        return
    endpoint, bucket = target.rsplit("/", 1)
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="mirrorfs",
        aws_secret_access_key="mirrorfs-secret",
    ) as s3:

        async def s3_put(path: str, data: bytes) -> int:
            await s3.put_object(Bucket=bucket, Key=path.lstrip("/"), Body=data)
            return 0

        await go(rate, seconds, prefix, s3_put)


async def go(
    rate: float, seconds: float, prefix: str, put: Callable[[str, bytes], Awaitable[int]]
) -> None:
    await put(f"{prefix}/warm", b"warm")  # connections and caches, outside the timing
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await write_at(rate, seconds, prefix, put)
    print("done", flush=True)


if __name__ == "__main__":
    quiet_with_credentials()  # stdout is the protocol: logs go to stderr
    kind, target, rate, seconds, prefix = sys.argv[1:6]
    asyncio.run(main(kind, target, float(rate), float(seconds), prefix))
