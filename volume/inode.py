"""The value types of the namespace: inodes, slice references, slice table entries, extents.

All are frozen slots dataclasses: the namespace shares them between its tables and hands them to
readers without copying, so nothing may mutate them in place (a change is a new object).
`to_dict()` forms are what effects, dumps and snapshots carry: ints, strs, None, lists only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from objstore.keys import BLOCK_SIZE as _STORE_BLOCK_SIZE

ROOT_INO = 1
CHUNK_SIZE = 64 * 1024 * 1024
BLOCK_SIZE = _STORE_BLOCK_SIZE  # one truth with the bucket's key layout (4 MiB)
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_SYMLINK_BYTES = 4096
# int64 everywhere (msgpack, PostgreSQL bigint): no offset or size may reach 2**63.
MAX_FILE_SIZE = 2**63 - CHUNK_SIZE
MAX_ID = 2**32 - 1  # uid/gid range

Kind = Literal["file", "dir", "symlink"]
KINDS: tuple[str, ...] = ("file", "dir", "symlink")
_KIND_CONST = {kind: kind for kind in KINDS}


@dataclass(frozen=True, slots=True)
class Inode:
    """Attributes of one file, directory or symlink.

    `mode` holds permission bits only (0..0o7777); the kind is separate. Directories have
    nlink = 2 + number of subdirectories; files and symlinks have nlink 1 (no hard links yet).
    A symlink's size is the UTF-8 length of its target.
    """

    ino: int
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ms: int
    ctime_ms: int
    nlink: int
    target: str | None = None

    def __reduce__(self) -> tuple[type[Inode], tuple[Any, ...]]:
        # pysyncobj pickles the whole state; the dataclass default calls fields() per object.
        return (
            Inode,
            (
                self.ino,
                self.kind,
                self.mode,
                self.uid,
                self.gid,
                self.size,
                self.mtime_ms,
                self.ctime_ms,
                self.nlink,
                self.target,
            ),
        )

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ino": self.ino,
            "kind": self.kind,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "mtime_ms": self.mtime_ms,
            "ctime_ms": self.ctime_ms,
            "nlink": self.nlink,
            "target": self.target,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Inode:
        """Inverse of to_dict. Raises KeyError/TypeError on a bad shape (callers translate)."""
        return cls(
            ino=int(data["ino"]),
            kind=_KIND_CONST[data["kind"]],  # shared constant, not one str per inode
            mode=int(data["mode"]),
            uid=int(data["uid"]),
            gid=int(data["gid"]),
            size=int(data["size"]),
            mtime_ms=int(data["mtime_ms"]),
            ctime_ms=int(data["ctime_ms"]),
            nlink=int(data["nlink"]),
            target=None if data.get("target") is None else str(data["target"]),
        )


@dataclass(frozen=True, slots=True)
class SliceRef:
    """A visible window of one slice object placed in a chunk.

    The slice object (`size` bytes, stored as blocks) contributes its bytes [off, off+len) to
    chunk positions [pos, pos+len). `write` creates off=0, len=size; truncate shrinks `len`.
    """

    id: int
    size: int
    off: int
    len: int
    pos: int

    def __reduce__(self) -> tuple[type[SliceRef], tuple[int, int, int, int, int]]:
        return (SliceRef, (self.id, self.size, self.off, self.len, self.pos))

    @property
    def end(self) -> int:
        """Chunk position just past the visible window."""
        return self.pos + self.len

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "off": self.off, "len": self.len, "pos": self.pos}

    def to_list(self) -> list[int]:
        """Compact form used by snapshot rows: [id, size, off, len, pos]."""
        return [self.id, self.size, self.off, self.len, self.pos]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SliceRef:
        return cls(
            id=int(data["id"]),
            size=int(data["size"]),
            off=int(data["off"]),
            len=int(data["len"]),
            pos=int(data["pos"]),
        )


@dataclass(frozen=True, slots=True)
class SliceInfo:
    """What the slice table keeps per live slice id: its size and one checksum per block."""

    size: int
    checksums: tuple[str, ...]

    def __reduce__(self) -> tuple[type[SliceInfo], tuple[int, tuple[str, ...]]]:
        return (SliceInfo, (self.size, self.checksums))

    def to_dict(self, slice_id: int) -> dict[str, Any]:
        return {"id": slice_id, "size": self.size, "checksums": list(self.checksums)}


@dataclass(frozen=True, slots=True)
class Extent:
    """One piece of a chunk as a reader sees it: a run of a slice object, or a hole (zeros).

    Chunk bytes [pos, pos+length) come from slice `slice_id` bytes
    [slice_off, slice_off+length); for a hole `slice_id` is None and slice_size/slice_off are 0.
    """

    pos: int
    length: int
    slice_id: int | None = None
    slice_size: int = 0
    slice_off: int = 0

    @property
    def is_hole(self) -> bool:
        return self.slice_id is None


@dataclass(frozen=True, slots=True)
class BlockRange:
    """Bytes [offset, offset+length) of block `index` of a slice; the block holds `block_size`."""

    index: int
    offset: int
    length: int
    block_size: int


def block_count(slice_size: int, block_size: int = BLOCK_SIZE) -> int:
    """How many blocks a slice object of `slice_size` bytes is stored as."""
    return -(-slice_size // block_size)


def block_size_of(slice_size: int, index: int, block_size: int = BLOCK_SIZE) -> int:
    """Size of block `index` of a slice object: block_size except a shorter last block."""
    return min(slice_size, (index + 1) * block_size) - index * block_size
