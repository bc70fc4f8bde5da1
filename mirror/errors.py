"""The mirror region's error tree; asyncpg and OS errors are translated into it in mirror/db.py.

Every error carries a one-line message and, where a person can act on it, a `hint`. `temporary`
says whether retrying the same call later can succeed (a lost connection) or not (a bad DSN, a
gap, a replica that no longer fits the changelog).
"""

from __future__ import annotations


class MirrorError(Exception):
    """Base of every error raised by the mirror region."""

    temporary = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class MirrorDbError(MirrorError):
    """The replica's PostgreSQL failed or could not be reached. The message names the DSN with
    its password masked."""

    def __init__(
        self, message: str, *, dsn: str = "", hint: str | None = None, temporary: bool = False
    ) -> None:
        super().__init__(message, hint=hint)
        self.dsn = dsn
        self.temporary = temporary


class ApplyGapError(MirrorError):
    """A batch does not start at applied_version + 1 (or is not contiguous); nothing applied.

    The follower must fetch the missing records, or resync from a snapshot if the source no
    longer retains them.
    """

    def __init__(self, message: str, *, expected: int, got: int) -> None:
        super().__init__(message, hint="fetch from the expected version, or resync from a snapshot")
        self.expected = expected
        self.got = got


class PartialRequestError(MirrorError):
    """A batch ends inside a request (its last record does not end its request), or a request
    runs longer than any the source makes; nothing was applied. Applying it would show half a
    request in the replica."""

    def __init__(self, message: str, *, version: int) -> None:
        super().__init__(message, hint="hand the applier whole requests only")
        self.version = version


class MalformedRecordError(MirrorError):
    """A record's op is unknown or its effect lacks a field or has a wrong type; the batch
    holding it was not applied."""

    def __init__(self, message: str, *, version: int, op: str) -> None:
        super().__init__(message, hint="the source and this mirror may run different versions")
        self.version = version
        self.op = op


class ReplicaDivergedError(MirrorError):
    """A batch does not fit the replica (deletes a row that is not there, inserts one that is):
    the replica no longer matches the changelog. The batch was rolled back."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="resync the mirror from a snapshot")


class SnapshotError(MirrorError):
    """A snapshot row stream is malformed, out of order or truncated; nothing was loaded."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="fetch the snapshot again")
