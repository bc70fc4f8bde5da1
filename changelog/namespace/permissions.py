"""POSIX permission bits as the source's namespace enforces them on every op.

The checks themselves are volume/permissions.py (a mirror's reader runs the same ones on the
attributes it resolved); the sticky-directory rule, which only the source's writes need, is here.
"""

from __future__ import annotations

from volume.inode import Inode
from volume.permissions import R_OK, S_ISVTX, W_OK, X_OK, may, require

__all__ = ["R_OK", "S_ISVTX", "W_OK", "X_OK", "may", "require", "sticky_allows"]


def sticky_allows(parent: Inode, child: Inode, uid: int) -> bool:
    """In a sticky directory only root or the owner of the entry or of the directory removes it."""
    if not parent.mode & S_ISVTX or uid == 0:
        return True
    return uid in (parent.uid, child.uid)
