"""Errors of reads through a region, in the volume's error tree (volume/errors.py).

`ReplicaBehindError` lives in volume/errors.py (mirror/ raises it, and mirror/ never imports
fallback/); it is re-exported here, where the client's callers look for it.
"""

from __future__ import annotations

import errno

from volume.errors import FsError, ReplicaBehindError

__all__ = ["ReplicaBehindError", "StaleMirrorError"]


class StaleMirrorError(FsError):
    """A read's window could not be met from the region's replica (policy `error`), or the
    replica is behind what this session already saw (`wanted`: serving it would go back in
    time). An FsError (EAGAIN: try again later, or with another policy), so the CLI prints it
    as one line and callers that only know errnos see "temporarily unavailable"."""

    http_status = 503
    temporary = True

    def __init__(
        self,
        region: str,
        *,
        staleness_s: float,
        bound_s: float,
        applied: int,
        wanted: int | None = None,
    ) -> None:
        super().__init__(errno.EAGAIN, "stale mirror")
        if wanted is not None:
            why = (
                f"mirror {region!r} has applied version {applied}, behind version {wanted} "
                f"that this session already saw ({staleness_s:.1f} s stale, bound {bound_s:g} s)"
            )
        else:
            why = (
                f"mirror {region!r} is {staleness_s:.1f} s stale (applied version {applied}), "
                f"more than this read's bound of {bound_s:g} s"
            )
        self.message = why
        self.args = (why,)
        self.hint = (
            "is the region's mirror daemon running and following? read with a larger "
            "--window, or --policy source (ask the source) or serve (read it anyway)"
        )
        self.region = region
        self.staleness_s = staleness_s
        self.bound_s = bound_s
        self.applied = applied
        self.wanted = wanted
