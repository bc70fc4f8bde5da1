"""`mirrorfs mount` and `mirrorfs umount`: a region of the volume as a local directory.

The mount is a client like `mirrorfs cat` (the same read path, window and policy, the same
writes to the source) served to the kernel through FUSE (fallback/mount/), with the local
block cache on by default. Without `--foreground` the command starts the mount in a process
of its own and returns once the directory is mounted (or prints why it could not be), as
`mount -t fuse...` does; its log goes to the file it names.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.client import default_region
from cli.connect import SOURCE, open_client
from cli.files import PolicyOpt, RegionOpt, WindowOpt
from cli.runtime import config, fail, run
from cli.warmup import CacheDirOpt, CacheSizeOpt, cache_bytes
from fallback import StalePolicy
from fallback.cached_blocks import use_cache
from objstore.cache import BlockCache, default_cache_dir
from volume.config import VolumeConfig

MOUNT_START_TIMEOUT_S = 60.0  # the background mount: connecting to the region, then mounting
SOURCE_ATTR_TIMEOUT_S = 1.0  # the kernel's caches in the source region (no window there)


def register(app: typer.Typer) -> None:
    app.command("mount")(mount)
    app.command("umount")(umount)


def mounted(path: Path) -> bool:
    """Whether `path` is a mount point, a dead FUSE mount ("Transport endpoint is not
    connected") included, which os.path.ismount cannot tell."""
    target = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == target:
                return True
    return False


def _check_mountpoint(path: Path) -> None:
    if mounted(path):
        fail(f"{path} is already a mount point", hint=f"mirrorfs umount {path}")
    if not path.is_dir():
        fail(f"mount point {path} is not a directory", hint=f"mkdir -p {path}")
    if not os.path.exists("/dev/fuse"):
        fail("/dev/fuse is missing: FUSE is not available on this machine")
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        fail(
            "the mount needs pyfuse3",
            hint="apt install fuse3 libfuse3-dev pkg-config; pip install 'mirrorfs[mount]'",
        )


def mount(
    ctx: typer.Context,
    mountpoint: Annotated[Path, typer.Argument(help="An existing directory to mount on")],
    region: RegionOpt = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every write")] = False,
    window: WindowOpt = None,
    policy: PolicyOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="No local block cache")] = False,
    foreground: Annotated[
        bool, typer.Option("--foreground", "-f", help="Serve in this process until unmounted")
    ] = False,
    log_file: Annotated[
        Path | None,
        typer.Option("--log-file", help="The background mount's log (default: next to the cache)"),
    ] = None,
) -> None:
    """Mount a region of the volume at MOUNTPOINT (FUSE).

    Reads come from the region (its replica within the window, its bucket, the source's for
    blocks not copied yet); a file open for reading keeps the version it opened. Writes are
    buffered locally and committed to the source on close or fsync; a failed commit is the
    error of that close or fsync. `mirrorfs umount MOUNTPOINT` unmounts it.
    """
    cfg = config(ctx)
    name = default_region(region)
    _check_mountpoint(mountpoint)
    cache = None if no_cache else _cache(cache_dir, cache_size)
    if not foreground:
        _start_background(mountpoint, log_file or _default_log(mountpoint))
        return
    run(_serve(cfg, name, mountpoint, read_only, window, policy, cache))


def _cache(cache_dir: Path | None, cache_size: str | None) -> BlockCache:
    return BlockCache(disk_dir=cache_dir or default_cache_dir(), disk_bytes=cache_bytes(cache_size))


async def _serve(
    cfg: VolumeConfig,
    region: str,
    mountpoint: Path,
    read_only: bool,
    window: float | None,
    policy: StalePolicy | None,
    cache: BlockCache | None,
) -> None:
    from fallback.mount import MountOperations, MountOptions, mount_options, serve

    # uid 0 for the client's own checks: the kernel checks each caller's permission bits
    # (default_permissions), and writes go to the source as the caller (ops.py).
    uid = 0 if os.geteuid() == 0 else None
    async with await open_client(
        cfg, region, uid=uid, gid=uid, window_s=window, policy=policy
    ) as fs:
        if cache is not None:
            use_cache(fs, cache)
        if region == SOURCE:
            attr_timeout = SOURCE_ATTR_TIMEOUT_S
        else:
            attr_timeout = cfg.mirror_region(region).window_s if window is None else window
        options = MountOptions(read_only=read_only, attr_timeout_s=attr_timeout)
        ops = await MountOperations.for_client(fs, options)
        fsname = f"mirrorfs:{region}"
        try:
            await serve(ops, mountpoint, mount_options(fsname=fsname, read_only=read_only))
        except RuntimeError as exc:  # pyfuse3.init: the kernel refused the mount
            fail(f"could not mount {mountpoint}: {exc}")
        finally:
            if cache is not None:
                cache.close()


def _default_log(mountpoint: Path) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    name = str(mountpoint.resolve()).strip("/").replace("/", "-") or "root"
    return base / "mirrorfs" / f"mount-{name}.log"


def _start_background(mountpoint: Path, log_file: Path) -> None:
    """Run this very command again with --foreground in a new session, and return once the
    mount is up; if that process ends first, its log's last lines are the error."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "cli", *sys.argv[1:], "--foreground"]
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + MOUNT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if mounted(mountpoint):
            typer.echo(f"mounted {mountpoint} (pid {proc.pid}; log {log_file})")
            return
        if proc.poll() is not None:
            fail(f"the mount process ended (exit {proc.returncode}): {_tail(log_file)}")
        time.sleep(0.1)
    proc.terminate()
    fail(f"{mountpoint} was not mounted within {MOUNT_START_TIMEOUT_S:.0f} s (log {log_file})")


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()
        return " / ".join(text[-lines:])
    return "(no log)"


def umount(
    mountpoint: Annotated[Path, typer.Argument(help="A mirrorfs mount point")],
    lazy: Annotated[
        bool,
        typer.Option("--lazy", "-l", help="Detach now even if busy (as umount -l)"),
    ] = False,
) -> None:
    """Unmount a mirrorfs mount. A mount whose process was killed ("Transport endpoint is not
    connected") is detached lazily, as `umount -l` would."""
    from fallback.mount import unmount

    if not mounted(mountpoint):
        fail(f"{mountpoint} is not mounted")
    dead = _dead(mountpoint)
    done = unmount(mountpoint, lazy=lazy or dead)
    if done.returncode != 0:
        why = done.stderr.strip() or f"fusermount3 exit {done.returncode}"
        fail(f"could not unmount {mountpoint}: {why}", hint="a process still uses it: --lazy")
    typer.echo(f"unmounted {mountpoint}")


def _dead(mountpoint: Path) -> bool:
    try:
        os.stat(mountpoint)
    except OSError:
        return True  # ENOTCONN: the mount's process is gone
    return False
