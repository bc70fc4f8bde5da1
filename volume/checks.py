"""Argument checks shared by the source's namespace ops and a replica's reads.

Both sides must refuse the same values with the same error, so a client cannot tell which
region answered by the way it failed.
"""

from __future__ import annotations

import errno

from volume.errors import FsError


def check_int(value: int, name: str, lo: int, hi: int, *, path: str | None = None) -> None:
    """EINVAL unless lo <= value <= hi (bools are not ints here)."""
    if type(value) is not int or not lo <= value <= hi:
        raise FsError(errno.EINVAL, f"{name} must be an int in [{lo}, {hi}]", path=path)
