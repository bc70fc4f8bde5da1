"""The mount's POSIX behaviour, case by case against a local directory (there is no packaged
pjdfstest here): every case runs the same system calls under a local directory and under the
mount of a mirror region, and their outcomes (values, or errnos) must be equal.

Cases: open flags (O_CREAT|O_EXCL, O_TRUNC, O_APPEND, O_WRONLY then read, O_DIRECTORY, a
directory for writing), seeks and reads at block and chunk edges, rename over a file, unlink of
an open file (the open handle reads on), rmdir of a non-empty directory and its relatives,
truncate and chmod, symlinks (dangling too), and permission denials for another uid (a
subprocess running as nobody, through `allow_other` and the kernel's permission checks).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mount.mounts import mounted_mirror
from volume.inode import BLOCK_SIZE, CHUNK_SIZE

NOBODY = 65534

Outcome = tuple[str, Any]


def outcome(fn: Callable[[], Any]) -> Outcome:
    try:
        return "ok", fn()
    except OSError as exc:
        return "error", errno.errorcode.get(exc.errno or 0, exc.errno)


def write(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    fd = os.open(path, flags, 0o644)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def case_open_flags(base: Path) -> list[Outcome]:
    f = base / "flags"
    out = [outcome(lambda: os.open(base / "missing", os.O_RDONLY))]
    out.append(outcome(lambda: write(f, b"first")))
    out.append(outcome(lambda: write(f, b"x", os.O_WRONLY | os.O_CREAT | os.O_EXCL)))
    out.append(outcome(lambda: write(f, b"+more", os.O_WRONLY | os.O_APPEND)))
    out.append(outcome(f.read_bytes))
    out.append(outcome(lambda: write(f, b"new", os.O_WRONLY | os.O_TRUNC)))
    out.append(outcome(f.read_bytes))

    def read_write_only() -> bytes:
        fd = os.open(f, os.O_WRONLY)
        try:
            return os.read(fd, 10)
        finally:
            os.close(fd)

    out.append(outcome(read_write_only))
    out.append(outcome(lambda: os.open(f, os.O_RDONLY | os.O_DIRECTORY)))
    (base / "adir").mkdir()
    out.append(outcome(lambda: os.open(base / "adir", os.O_WRONLY)))
    out.append(outcome(lambda: write(base / "adir" / "x" / "y", b"")))

    def read_write_mode() -> bytes:
        fd = os.open(f, os.O_RDWR)
        try:
            os.pwrite(fd, b"N", 1)
            return os.pread(fd, 10, 0)
        finally:
            os.close(fd)

    out.append(outcome(read_write_mode))
    out.append(outcome(f.read_bytes))
    return out


EDGES = [0, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, CHUNK_SIZE - 2, CHUNK_SIZE]
SIZE = CHUNK_SIZE + BLOCK_SIZE + 10


def case_reads_at_edges(base: Path, data: bytes) -> list[Outcome]:
    f = base / "edges"
    write(f, data)
    out: list[Outcome] = []
    fd = os.open(f, os.O_RDONLY)
    try:
        for offset in [*EDGES, SIZE - 1, SIZE, SIZE + 10]:
            for length in (1, 3, 4096, 5 * 1024 * 1024):
                out.append(outcome(lambda o=offset, n=length: os.pread(fd, n, o)))
        os.lseek(fd, BLOCK_SIZE - 2, os.SEEK_SET)
        out.append(outcome(lambda: os.read(fd, 4)))
        out.append(outcome(lambda: os.lseek(fd, -3, os.SEEK_END)))
        out.append(outcome(lambda: os.read(fd, 100)))
    finally:
        os.close(fd)
    return out


def case_rename_unlink_rmdir(base: Path) -> list[Outcome]:
    a, b = base / "a", base / "b"
    write(a, b"from a")
    write(b, b"old b")
    out = [outcome(lambda: os.rename(a, b)), outcome(b.read_bytes), outcome(a.exists)]
    # Unlink of an open file: the handle reads on; the name is gone.
    write(base / "open", b"still readable" * 1000)
    fd = os.open(base / "open", os.O_RDONLY)
    try:
        out.append(outcome(lambda: os.unlink(base / "open")))
        out.append(outcome(lambda: os.pread(fd, 100, 5)))
        out.append(outcome(lambda: os.fstat(fd).st_size))
        out.append(outcome(lambda: sorted(os.listdir(base))))
    finally:
        os.close(fd)
    (base / "full").mkdir()
    write(base / "full" / "f", b"")
    out.append(outcome(lambda: os.rmdir(base / "full")))
    out.append(outcome(lambda: os.rmdir(base / "full" / "f")))
    out.append(outcome(lambda: os.unlink(base / "full")))
    out.append(outcome(lambda: os.mkdir(base / "full")))
    out.append(outcome(lambda: os.rename(base / "full", base / "full" / "inside")))
    out.append(outcome(lambda: os.rename(base / "nothing", base / "x")))
    os.unlink(base / "full" / "f")
    out.append(outcome(lambda: os.rmdir(base / "full")))
    out.append(outcome(lambda: sorted(os.listdir(base))))
    return out


def case_truncate_chmod_symlink(base: Path) -> list[Outcome]:
    f = base / "t"
    write(f, b"0123456789")
    out = [outcome(lambda: os.truncate(f, 4)), outcome(f.read_bytes)]
    out.append(outcome(lambda: os.truncate(f, 8)))
    out.append(outcome(f.read_bytes))
    out.append(outcome(lambda: os.chmod(f, 0o600)))
    out.append(outcome(lambda: oct(os.stat(f).st_mode)))
    out.append(outcome(lambda: os.symlink("t", base / "link")))
    out.append(outcome(lambda: os.readlink(base / "link")))
    out.append(outcome(lambda: (base / "link").read_bytes()))
    out.append(outcome(lambda: oct(os.lstat(base / "link").st_mode & 0o170000)))
    out.append(outcome(lambda: os.stat(base / "link").st_size))
    out.append(outcome(lambda: os.symlink("nowhere", base / "dangling")))
    out.append(outcome(lambda: (base / "dangling").read_bytes()))
    out.append(outcome(lambda: os.symlink("t", base / "link")))
    out.append(outcome(lambda: os.unlink(base / "link")))
    out.append(outcome(f.read_bytes))
    return out


def as_nobody(fn: Callable[[], list[str]]) -> list[str]:
    """`fn`'s answers, run in a child process that became uid/gid nobody (a fork: no program
    to exec, which nobody could not reach under /root's 0700)."""
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, answer, exit without running any cleanup
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, "\n".join(fn()).encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read, "rb") as f:
        answers = f.read().decode().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answers


def case_denials(base: Path) -> list[Outcome]:
    write(base / "secret", b"s")
    os.chmod(base / "secret", 0o600)
    write(base / "public", b"p")
    os.chmod(base / "public", 0o644)
    (base / "private").mkdir(mode=0o700)
    (base / "open").mkdir()
    os.chmod(base / "open", 0o777)

    def tries() -> list[str]:
        def run(fn: Callable[[], object]) -> str:
            try:
                fn()
                return "ok"
            except OSError as exc:
                return errno.errorcode[exc.errno or 0]

        return [
            run(lambda: (base / "secret").read_bytes()),
            run(lambda: (base / "public").read_bytes()),
            run(lambda: write(base / "public", b"x", os.O_WRONLY | os.O_APPEND)),
            run(lambda: os.listdir(base / "private")),
            run(lambda: write(base / "new", b"")),
            run(lambda: os.unlink(base / "public")),
            run(lambda: os.mkdir(base / "open" / "mine")),
            run(lambda: os.chmod(base / "public", 0o777)),
            run(lambda: write(base / "open" / "mine" / "f", b"mine")),
            run(lambda: (base / "open" / "mine" / "f").read_bytes()),
        ]

    answers = as_nobody(tries)
    owner = os.stat(base / "open" / "mine")
    return [("ok", a) for a in answers] + [("ok", (owner.st_uid, owner.st_gid))]


def make_reachable(path: Path) -> None:
    """pytest's temp dirs are 0700: let another uid walk down to `path`."""
    for p in [path, *path.parents]:
        if p == Path("/tmp") or p == Path("/"):
            break
        os.chmod(p, os.stat(p).st_mode | 0o055)


@pytest.fixture
def edge_data() -> bytes:
    return os.urandom(SIZE)


async def test_posix_cases_match_a_local_directory(
    tmp_path: Path, pg_dsn: str, edge_data: bytes
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    async with mounted_mirror(tmp_path, pg_dsn, "--cache-dir", str(tmp_path / "cache")) as (
        _s,
        mount,
    ):
        cases: list[tuple[str, Callable[[Path], list[Outcome]]]] = [
            ("open flags", case_open_flags),
            ("reads at edges", lambda base: case_reads_at_edges(base, edge_data)),
            ("rename, unlink, rmdir", case_rename_unlink_rmdir),
            ("truncate, chmod, symlink", case_truncate_chmod_symlink),
        ]
        for name, case in cases:
            here, there = local / name.replace(" ", "_"), mount.path / name.replace(" ", "_")
            here.mkdir()
            there.mkdir()
            want, got = case(here), case(there)
            for i, (w, g) in enumerate(zip(want, got, strict=True)):
                assert g == w, f"{name} #{i}: local {w!r:.200}, mount {g!r:.200}"


async def test_another_uid_is_denied_what_the_modes_deny(tmp_path: Path, pg_dsn: str) -> None:
    local = tmp_path / "local"
    local.mkdir()
    async with mounted_mirror(tmp_path, pg_dsn, "--no-cache") as (_s, mount):
        make_reachable(local)
        make_reachable(mount.path)
        there = mount.path / "perm"
        there.mkdir()
        want, got = case_denials(local), case_denials(there)
        assert got == want
        assert ("ok", "EACCES") in got and ("ok", "EPERM") in got  # the case denies something
