"""Claims (issue 13): a sequential read of one file through `mirrorfs mount` of a mirror region,
with `fio` (`--rw=read --bs=1M --ioengine=psync`) and with `cat > /dev/null`, runs at >= 80% of
raw parallel GETs of the same blocks from the same bucket, both cold (replication paused,
`--no-cache`: every block falls back to the source bucket) and copied (every block in the
mirror bucket, `--no-cache`); read again from the local disk cache (`--cache-dir`, filled by a
first read, then a new mount) it runs at >= 80% of reading a local file of the same size. And:
the time to load a safetensors file through the mount (safe_open, every tensor read) beside the
same file on local disk.

Two `weed server -s3` clusters (the source region's bucket, the mirror region's bucket), a
one-node source region and mirror region "eu" started through the CLI (bench_topology, no test
imports). Three files of --size are written at the source with copying paused (the CopyQueue's
pause row): one read by fio, one by cat (a cold read writes its blocks back into the mirror
bucket, so each cold read needs a file of its own), one safetensors file. Every measured read
is a new mount process (new kernel inodes: nothing of a previous read in the page cache) and,
when this process may (root), starts after `echo 3 > /proc/sys/vm/drop_caches`, baselines
included: SeaweedFS's volume files and the local files are read from disk as the mount's
blocks are. Raw GETs are aiobotocore `get_object` of the file's block keys (from the replica)
with RAW_INFLIGHT in flight, bytes dropped, no checksum; the mount verifies every block.

    python -m scenarios.bench_mount [--quick | --size 1GiB] [--workdir DIR] [--profile DIR]
        [--read-ahead-kb KB]

`--read-ahead-kb` raises each mount's kernel readahead (a tuning experiment; see the report).
`--profile DIR` records the mount and the region daemon during each measured read with `py-spy
record` (collapsed stacks, DIR/STATE-TOOL-PROCESS.txt); sampling costs CPU on a small machine,
so profiled figures are not the benchmark's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from cli.mount import mounted
from fallback import FsClient
from mirror import CopyQueue, Database, open_database
from mirror.embedded import postmaster_pid
from objstore.cache import parse_size
from objstore.keys import block_key
from scenarios.bench_load import LoadMeter
from scenarios.bench_topology import (
    MirrorfsRegions,
    WeedCluster,
    quiet_with_credentials,
    stop_process,
)

MIB = 1024 * 1024
FULL_SIZE = "1GiB"
QUICK_SIZE = "256MiB"
REGION = "eu"
SOURCE_BUCKET = "mount-source"
MIRROR_BUCKET = "mount-mirror"
RAW_INFLIGHT = 16  # about the mount's readahead (8 blocks) plus the kernel's reads in flight
MOUNT_TIMEOUT_S = 60.0
COPY_TIMEOUT_S = 600.0
TENSOR_BYTES = 16 * MIB  # a model shard's tensors are tens of MiB; 64 of them make 1 GiB
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
SELF = "benchmark process (alone)"
MIRRORFS = [sys.executable, "-m", "cli"]
# The job: sequential 1 MiB reads, psync, buffered, of the existing file.
FIO_JOB = ["fio", "--name=seq", "--rw=read", "--bs=1M", "--ioengine=psync", "--direct=0"]
FIO_JOB.append("--readonly")


def drop_caches() -> bool:
    """Empty the kernel's page cache (root only); False when this process may not."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


class MountProcess:
    """`mirrorfs mount --foreground` as a process; `stop()` unmounts whatever state it left
    (a killed mount is detached lazily with `fusermount3 -uz`), safe to call twice."""

    def __init__(self, config: Path, where: Path, args: list[str], log: Path) -> None:
        self.config, self.path, self.args, self.log = config, where, args, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MountProcess:
        self.path.mkdir(parents=True, exist_ok=True)
        cmd = [*MIRRORFS, "--config", str(self.config), "mount", "--region", REGION]
        cmd += [str(self.path), "--foreground", *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "MIRRORFS_LOG": "warning"},
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not mounted(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.path} not mounted in {MOUNT_TIMEOUT_S} s")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=30.0)
        if mounted(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], check=False, capture_output=True)


@contextlib.contextmanager
def mount_of(
    config: Path, where: Path, args: list[str], log: Path, read_ahead_kb: int | None
) -> Iterator[MountProcess]:
    m = MountProcess(config, where, args, log)
    try:
        m.start()
        if read_ahead_kb is not None:
            set_read_ahead_kb(where, read_ahead_kb)
        yield m
    finally:
        m.stop()


def set_read_ahead_kb(where: Path, kb: int) -> None:
    """The kernel's readahead for the mount at `where` (its bdi, as `blockdev --setra` for a
    disk; root only). FUSE starts every mount at the kernel's 128 KiB and lets the init reply
    only lower it, so a larger window is set from outside, after mounting."""
    target = os.path.realpath(where)
    with open("/proc/self/mountinfo") as f:
        devs = [line.split()[2] for line in f if line.split()[4] == target]
    if not devs:
        raise RuntimeError(f"{where} is not a mount point")
    Path(f"/sys/class/bdi/{devs[-1]}/read_ahead_kb").write_text(f"{kb}\n")


@contextlib.contextmanager
def profiled(pids: dict[str, int], out: Path | None) -> Iterator[None]:
    """py-spy record of each process for the block's duration, when `out` is set: collapsed
    stacks in out/TAG-LABEL.txt (`--format raw`: greppable, what flamegraph.pl and speedscope
    take), sampled without pausing the process."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spies = []
    for label, pid in pids.items():
        dest = out.with_name(f"{out.name}-{label.replace(' ', '-')}.txt")
        cmd = ["py-spy", "record", "--pid", str(pid), "--output", str(dest), "--format", "raw"]
        spies.append(
            subprocess.Popen(
                [*cmd, "--rate", "100", "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        time.sleep(1.0)  # py-spy attaches before the read starts
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy in spies:
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def fio_mib_s(path: Path, size: int) -> float:
    """Sequential read with fio (the issue's job: 1 MiB reads, psync, buffered), in MiB/s."""
    out = subprocess.run(
        [*FIO_JOB, f"--filename={path}", f"--size={size}", "--output-format=json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    if job["io_bytes"] != size:
        raise RuntimeError(f"fio read {job['io_bytes']} of {size} bytes of {path}")
    return float(job["bw_bytes"]) / MIB


def cat_mib_s(path: Path, size: int) -> float:
    start = time.perf_counter()
    subprocess.run(["sh", "-c", 'cat "$1" > /dev/null', "cat", str(path)], check=True)
    return size / MIB / (time.perf_counter() - start)


def safetensors_bytes(data: bytes) -> bytes:
    """`data` as float32 tensors of TENSOR_BYTES (the last one shorter), serialized."""
    import numpy as np
    from safetensors.numpy import save

    tensors = {
        f"layer.{i // TENSOR_BYTES}.weight": np.frombuffer(data[i : i + TENSOR_BYTES], np.float32)
        for i in range(0, len(data) - len(data) % 4, TENSOR_BYTES)
    }
    return bytes(save(tensors))


def load_safetensors_s(path: Path) -> float:
    """Seconds to open `path` with safe_open (memory-mapped) and read every tensor."""
    from safetensors import safe_open

    start = time.perf_counter()
    n = 0
    with safe_open(str(path), framework="np") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open has keys(), no __iter__
            n += f.get_tensor(name).nbytes
    if n == 0:
        raise RuntimeError(f"no tensors in {path}")
    return time.perf_counter() - start


def pseudo_random(size: int, tag: str) -> bytes:
    """`size` bytes no other file of the run has (a fresh 32 bytes per 4 MiB: cheap to make,
    distinct blocks); not compressible by anything in the path."""
    seed = hashlib.sha256(tag.encode()).digest() * (4 * MIB // 32)
    out = bytearray()
    n = 0
    while len(out) < size:
        out += hashlib.sha256(f"{tag}:{n}".encode()).digest() + seed[32:]
        n += 1
    return bytes(out[:size])


@dataclass
class File:
    path: str  # in the volume
    local: Path  # a local copy, the cached read's baseline
    size: int
    keys: list[str]  # block keys, in file order
    sha256: str


class Bench:
    def __init__(
        self, regions: MirrorfsRegions, src: WeedCluster, dst: WeedCluster, args: Any
    ) -> None:
        self.regions, self.src, self.dst = regions, src, dst
        self.workdir: Path = args.workdir
        self.profile: Path | None = args.profile
        self.read_ahead_kb: int | None = args.read_ahead_kb
        self.s3: dict[str, Any] = {}
        self.mounts = 0
        self.dropped = False

    async def write(self, source: FsClient, db: Database, path: str, data: bytes) -> File:
        """Put `data` at the source, wait until the replica applied it; its block keys."""
        async with db.acquire() as conn:
            before = int(await conn.fetchval("SELECT coalesce(max(slice_id), 0) FROM blocks"))
        version = (await source.put(io.BytesIO(data), path)).version  # type: ignore[arg-type]
        deadline = time.monotonic() + 120
        while True:
            async with db.acquire() as conn:
                applied = await conn.fetchval("SELECT applied_version FROM watermark")
            if applied is not None and applied >= version:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: version {version} not applied in 120 s")
            await asyncio.sleep(0.05)
        async with db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT slice_id, idx, size FROM blocks WHERE slice_id > $1 ORDER BY slice_id, idx",
                before,
            )
        local = self.workdir / "local" / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        keys = [block_key(r["slice_id"], r["idx"], r["size"]) for r in rows]
        if sum(int(r["size"]) for r in rows) != len(data):
            raise RuntimeError(f"{path}: the replica's blocks do not add up to {len(data)} bytes")
        return File(path, local, len(data), keys, hashlib.sha256(data).hexdigest())

    @staticmethod
    async def copied_blocks(db: Database, f: File) -> int:
        slices = list({int(k.rsplit("/", 1)[1].split("_")[0]) for k in f.keys})
        async with db.acquire() as conn:
            n = await conn.fetchval(
                "SELECT count(*) FROM blocks WHERE state = 'copied' AND slice_id = ANY($1)",
                slices,
            )
        return int(n)

    async def wait_copied(self, db: Database, files: list[File]) -> None:
        deadline = time.monotonic() + COPY_TIMEOUT_S
        for f in files:
            while await self.copied_blocks(db, f) < len(f.keys):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{f.path}: blocks not copied in {COPY_TIMEOUT_S} s")
                await asyncio.sleep(0.2)

    async def raw_mib_s(self, cluster: WeedCluster, bucket: str, f: File) -> float:
        """GET every block of `f` with RAW_INFLIGHT in flight on a warm client."""
        s3 = self.s3[cluster.endpoint]
        keys = iter(f.keys)

        async def worker() -> None:
            for key in keys:  # one shared iterator: each key fetched once
                resp = await s3.get_object(Bucket=bucket, Key=key)
                async with resp["Body"] as body:
                    await body.read()

        self.dropped = drop_caches()
        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(RAW_INFLIGHT):
                tg.create_task(worker())
        return f.size / MIB / (time.perf_counter() - start)

    @contextlib.asynccontextmanager
    async def s3_clients(self) -> AsyncIterator[None]:
        config = AioConfig(retries={"total_max_attempts": 1}, max_pool_connections=64)
        async with contextlib.AsyncExitStack() as stack:
            for c in (self.src, self.dst):
                self.s3[c.endpoint] = await stack.enter_async_context(
                    get_session().create_client(
                        "s3", endpoint_url=c.endpoint, region_name="us-east-1", config=config
                    )
                )
            yield

    def mount(self, *args: str) -> contextlib.AbstractContextManager[MountProcess]:
        self.mounts += 1
        where = self.workdir / f"mnt{self.mounts}"
        log = self.workdir / f"mount{self.mounts}.log"
        return mount_of(self.regions.config_path, where, list(args), log, self.read_ahead_kb)

    def through_mount(self, tag: str, f: File, tool: str, *args: str) -> tuple[float, str]:
        """`tool` ("fio", "cat" or "safetensors") on `f` in a new mount after dropping the
        page cache: MiB/s (seconds for safetensors), and the load while it ran."""
        with self.mount(*args) as m:
            path = m.path / f.path.lstrip("/")
            self.dropped = drop_caches()
            stacks = None if self.profile is None else self.profile / f"{tag}-{tool}"
            with (
                LoadMeter(self._pids(m.pid), flat=frozenset({SELF})) as meter,
                profiled(self._profiled_pids(m.pid), stacks),
            ):
                value = run_tool(tool, path, f.size)
        return value, meter.load.line()

    def local(self, f: File, tool: str) -> float:
        self.dropped = drop_caches()
        return run_tool(tool, f.local, f.size)

    def fill_cache(self, files: list[File], cache: list[str]) -> None:
        """Read each file once through a caching mount, checking its bytes."""
        with self.mount(*cache) as m:
            for f in files:
                with open(m.path / f.path.lstrip("/"), "rb") as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
                if digest != f.sha256:
                    raise RuntimeError(f"{f.path}: wrong bytes through the mount")

    def _profiled_pids(self, mount_pid: int) -> dict[str, int]:
        daemon = self.regions.daemon
        return {"mount": mount_pid} | ({} if daemon is None else {"mirror run": daemon.pid})

    def _pids(self, mount_pid: int) -> dict[str, int]:
        """Every process of the topology, so a slow read shows who was busy meanwhile."""
        out = {"mount": mount_pid, SELF: os.getpid()}
        for label, proc in (
            ("weed source", self.src.proc),
            ("weed mirror", self.dst.proc),
            ("mirror run", self.regions.daemon),
            *((f"source node {i}", p) for i, p in self.regions.nodes.items()),
        ):
            if proc is not None:
                out[label] = proc.pid
        pg = postmaster_pid(self.regions.pg_dir)
        if pg is not None:
            out["postgres"] = pg
        return out


def run_tool(tool: str, path: Path, size: int) -> float:
    if tool == "fio":
        return fio_mib_s(path, size)
    if tool == "cat":
        return cat_mib_s(path, size)
    return load_safetensors_s(path)


def figure(state: str, tool: str, mount: float, base_title: str, base: float, load: str) -> None:
    print(
        f"{state} {tool}: mount {mount:.1f} MiB/s  {base_title} {base:.1f} MiB/s"
        f"  ratio {mount / base:.2f} (target >= 0.80)"
    )
    print(f"    load: {load}", flush=True)


async def bench(b: Bench, size: int) -> None:
    regions = b.regions
    await regions.start_source()
    await regions.create_mirror()
    regions.start_daemon()
    cfg = regions.cfg
    source = await FsClient.for_source(cfg, uid=0, gid=0)
    async with (
        source,
        open_database(cfg.mirror_region(REGION), who="bench-mount") as db,
        b.s3_clients(),
    ):
        queue = CopyQueue(db)
        await queue.set_paused(True)  # only the cold reads copy (their write-back)
        fio_file = await b.write(source, db, "/fio.bin", pseudo_random(size, "fio"))
        cat_file = await b.write(source, db, "/cat.bin", pseudo_random(size, "cat"))
        st = safetensors_bytes(pseudo_random(size, "safetensors"))
        st_file = await b.write(source, db, "/model.safetensors", st)
        print(f"files: {size / MIB:.0f} MiB each, {len(fio_file.keys)} blocks", flush=True)

        no_cache = ["--no-cache"]
        for f, tool in ((fio_file, "fio"), (cat_file, "cat")):
            if await b.copied_blocks(db, f):
                raise RuntimeError(f"{f.path}: blocks copied while replication is paused")
            raw = await b.raw_mib_s(b.src, SOURCE_BUCKET, f)
            value, load = b.through_mount("cold", f, tool, *no_cache)
            figure("cold", tool, value, "raw GET source bucket", raw, load)

        await queue.set_paused(False)
        await b.wait_copied(db, [fio_file, cat_file, st_file])
        for f, tool in ((fio_file, "fio"), (cat_file, "cat")):
            raw = await b.raw_mib_s(b.dst, MIRROR_BUCKET, f)
            value, load = b.through_mount("copied", f, tool, *no_cache)
            figure("copied", tool, value, "raw GET mirror bucket", raw, load)
        local_st = b.local(st_file, "safetensors")
        mount_st, load = b.through_mount("copied", st_file, "safetensors", *no_cache)
        print(
            f"safetensors load copied: mount {mount_st:.2f} s  local disk {local_st:.2f} s"
            f"  ratio {mount_st / local_st:.2f}"
        )
        print(f"    load: {load}", flush=True)

        cache_dir = b.workdir / "cache"
        cache = ["--cache-dir", str(cache_dir), "--cache-size", f"{4 * size + 64 * MIB}"]
        b.fill_cache([fio_file, st_file], cache)
        for tool in ("fio", "cat"):
            local = b.local(fio_file, tool)
            value, load = b.through_mount("cached", fio_file, tool, *cache)
            figure("cached", tool, value, "local file", local, load)
        mount_st, load = b.through_mount("cached", st_file, "safetensors", *cache)
        print(
            f"safetensors load cached: mount {mount_st:.2f} s  local disk {local_st:.2f} s"
            f"  ratio {mount_st / local_st:.2f}"
        )
        print(f"    load: {load}", flush=True)
    dropped = "dropped before every read" if b.dropped else "NOT dropped (not root)"
    print(f"page cache: {dropped}; raw GETs: {RAW_INFLIGHT} in flight", flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default=None, help=f"file size (default {FULL_SIZE})")
    p.add_argument("--quick", action="store_true", help=f"files of {QUICK_SIZE}")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (removed)")
    p.add_argument("--profile", type=Path, default=None, help="py-spy stacks of the mount here")
    p.add_argument(
        "--read-ahead-kb",
        type=int,
        default=None,
        help="set each mount's kernel readahead (root; default: the kernel's, 128)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        size = parse_size(args.size or (QUICK_SIZE if args.quick else FULL_SIZE))
    except ValueError as exc:
        print(f"error: --size: {exc}", file=sys.stderr)
        return 2
    if shutil.which("fio") is None:
        print("error: fio is not installed", file=sys.stderr)
        return 2
    quiet_with_credentials()
    args.workdir = Path(tempfile.mkdtemp(prefix="mfs-mount-", dir=args.workdir or "/tmp"))
    src, dst = WeedCluster(args.workdir / "src"), WeedCluster(args.workdir / "dst")
    regions: MirrorfsRegions | None = None
    try:
        src.start()
        dst.start()
        src.create_bucket(SOURCE_BUCKET)
        dst.create_bucket(MIRROR_BUCKET)
        regions = MirrorfsRegions(
            args.workdir / "mfs",
            f"s3://{SOURCE_BUCKET}?endpoint={src.endpoint}",
            f"s3://{MIRROR_BUCKET}?endpoint={dst.endpoint}",
            nodes=1,
            name=REGION,
        )
        asyncio.run(bench(Bench(regions, src, dst, args), size))
    finally:
        if regions is not None:
            regions.stop()
        src.stop()
        dst.stop()
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
