"""Errors of reads through a region, in the volume's error tree (volume/errors.py)."""

from __future__ import annotations

from volume.errors import ChangelogError


class ReplicaBehindError(ChangelogError):
    """The replica has not applied `wanted` yet (it is at `applied`): a session that saw
    `wanted` must not read from it until it has (the gate waits, or asks the source)."""

    http_status = 503
    temporary = True

    def __init__(self, region: str, applied: int, wanted: int) -> None:
        super().__init__(
            f"mirror {region!r} has applied version {applied}, this read needs {wanted}"
        )
        self.region = region
        self.applied = applied
        self.wanted = wanted
