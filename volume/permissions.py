"""POSIX permission bits as every region enforces them: the source's namespace on every op,
and a mirror's reader on the attributes it resolved from its replica (the same function, so the
two regions cannot disagree on who may read what).

The source checks with the caller's uid/gid as its client token asserts them (like NFS
AUTH_SYS).
"""

from __future__ import annotations

import errno

from volume.errors import FsError
from volume.inode import Inode

R_OK = 4
W_OK = 2
X_OK = 1
S_ISVTX = 0o1000


def may(inode: Inode, uid: int, gid: int, want: int) -> bool:
    """POSIX owner/group/other check of `want` (R_OK|W_OK|X_OK bits); uid 0 passes everything.

    Only the caller's primary gid counts: the source has no supplementary group lists.
    """
    if uid == 0:
        return True
    if uid == inode.uid:
        bits = inode.mode >> 6
    elif gid == inode.gid:
        bits = inode.mode >> 3
    else:
        bits = inode.mode
    return (bits & want) == want


def require(inode: Inode, uid: int, gid: int, want: int, path: str) -> None:
    """Raise FsError(EACCES) unless the caller has `want` on `inode`."""
    if not may(inode, uid, gid, want):
        raise FsError(errno.EACCES, "permission denied", path=path)
