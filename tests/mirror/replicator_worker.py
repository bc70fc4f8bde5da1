"""A copy-worker process for tests, so a test can kill -9 a worker holding claimed blocks.

    python -m tests.mirror.replicator_worker DSN SOURCE_URL MIRROR_URL [--worker-id ID]
        [--lease-s S] [--concurrency N] [--bandwidth BYTES_PER_S]

Runs `mirror.replicate.run_replicator` (what `mirrorfs mirror worker NAME` runs) until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from mirror.db import Database
from mirror.replicate import ReplicatorConfig, run_replicator


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with await Database.connect(args.dsn) as db:
        await run_replicator(
            db,
            args.source,
            args.mirror,
            stop,
            ReplicatorConfig(
                worker_id=args.worker_id,
                lease_s=args.lease_s,
                concurrency=args.concurrency,
                bandwidth_bytes_per_s=args.bandwidth,
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("source")
    parser.add_argument("mirror")
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--lease-s", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bandwidth", type=float, default=None)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
