"""Path syntax every region agrees on: what a valid path and a valid name are.

Paths are absolute POSIX strings. We do not normalise: "/" is the root and every other path is
"/" followed by components joined by single slashes. An empty component (from "a//b" or a
trailing "/"), ".", "..", a NUL byte, or a path that is not a str starting with "/" is EINVAL;
a component over 255 UTF-8 bytes or a path over 4096 bytes is ENAMETOOLONG. Clients normalise
before sending, so the source never has to guess what "a/../b" meant after a rename raced it.
"""

from __future__ import annotations

import errno

from volume.errors import FsError
from volume.inode import MAX_NAME_BYTES, MAX_PATH_BYTES


def check_name(name: str, *, path: str | None = None) -> None:
    """Raise FsError unless `name` is a valid single path component."""
    if not name or name in (".", ".."):
        raise FsError(errno.EINVAL, f"bad path component {name!r}", path=path)
    if "/" in name or "\0" in name:
        raise FsError(errno.EINVAL, "path component contains '/' or NUL", path=path)
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be stored or sent
        raise FsError(errno.EINVAL, "path component is not valid UTF-8", path=path) from exc
    if len(encoded) > MAX_NAME_BYTES:
        raise FsError(errno.ENAMETOOLONG, f"component over {MAX_NAME_BYTES} bytes", path=path)


def split_path(path: str) -> list[str]:
    """Components of an absolute path; [] for "/". Raises FsError(EINVAL/ENAMETOOLONG)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise FsError(errno.EINVAL, "path must be absolute", path=str(path))
    if len(path) > MAX_PATH_BYTES or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise FsError(errno.ENAMETOOLONG, f"path over {MAX_PATH_BYTES} bytes", path=path)
    if path == "/":
        return []
    parts = path[1:].split("/")
    for part in parts:
        check_name(part, path=path)
    return parts


def join_path(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"
