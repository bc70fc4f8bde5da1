"""Serving a mount: pyfuse3's loop on the client's asyncio loop, stopped by SIGINT/SIGTERM.

The mount and the client share one event loop (pyfuse3's asyncio mode), so a request awaits
the client's database pool and bucket connections directly, with no thread hop. Whatever ends
the loop (a signal, `mirrorfs umount`, an error), the kernel mount is taken down and every
open handle released, its buffered writes committed if they can be.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import pyfuse3.asyncio
import structlog

from fallback.mount.ops import MountOperations

log = structlog.get_logger(__name__)

MAX_TASKS = 64  # requests served at once (parallel reads of several handles or programs)


def mount_options(*, fsname: str, read_only: bool) -> set[str]:
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    options |= {f"fsname={fsname}", "subtype=mirrorfs", "noatime"}
    if os.geteuid() == 0:
        options.add("allow_other")  # a root mount serves every user (each checked as itself)
    if read_only:
        options.add("ro")
    return options


async def serve(
    ops: MountOperations,
    mountpoint: Path,
    options: set[str],
    *,
    ready: Callable[[], None] | None = None,
) -> None:
    """Mount `ops` at `mountpoint` and serve until unmounted or signalled."""
    pyfuse3.asyncio.enable()
    pyfuse3.init(ops, str(mountpoint), options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    log.info("mount.serving", mountpoint=str(mountpoint), options=sorted(options))
    try:
        if ready is not None:
            ready()
        await pyfuse3.main(max_tasks=MAX_TASKS)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await ops.aclose()
        pyfuse3.close(unmount=True)
        log.info("mount.stopped", mountpoint=str(mountpoint))


def unmount(mountpoint: Path, *, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    """`fusermount3 -u` (with `-z`: detach now, even while busy or when the mount process is
    gone: the "Transport endpoint is not connected" state). The completed process; its
    stderr says why when it failed."""
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)
