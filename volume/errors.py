"""The error tree of the source region, translated once at the edge that meets each library.

Every error the HTTP API returns maps to one of these classes (see `to_wire`/`from_wire`), so a
client on the other side of the network raises the same type the node raised.
"""

from __future__ import annotations

import errno as errno_mod
import os
from typing import Any


class ChangelogError(Exception):
    """Base of every error raised by the source region or its client."""

    http_status = 500
    temporary = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body


class ConfigError(ChangelogError):
    """A config file is missing, unreadable or has a bad key; says which file and which key."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        where = f"{path}: " if path else ""
        at = f"{key}: " if key else ""
        super().__init__(f"{where}{at}{message}")
        self.path = path
        self.key = key


class AuthError(ChangelogError):
    """Missing, unknown, forged or tampered bearer token."""

    http_status = 401


class ForbiddenError(ChangelogError):
    """A valid token whose scope does not cover this request; nothing was changed."""

    http_status = 403


class BadRequestError(ChangelogError):
    """A malformed request body or parameter; nothing was changed."""

    http_status = 400


class NotLeaderError(ChangelogError):
    """This node is not the Raft leader; `leader_hint` names the node that is, if known."""

    http_status = 421
    temporary = True

    def __init__(self, message: str, *, leader_hint: str | None = None) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "leader_hint": self.leader_hint}


class QuorumUnavailableError(ChangelogError):
    """No quorum (or no leader) answered in time: the write may or may not have committed."""

    http_status = 503
    temporary = True


class VersionGoneError(ChangelogError):
    """The requested version is below retention: the reader must resync from a snapshot."""

    http_status = 410

    def __init__(self, message: str, *, requested: int, first_available: int) -> None:
        super().__init__(message, hint="load a snapshot and follow from its version + 1")
        self.requested = requested
        self.first_available = first_available

    def to_wire(self) -> dict[str, Any]:
        return {
            **super().to_wire(),
            "requested": self.requested,
            "first_available": self.first_available,
        }


class ChangelogUnavailableError(ChangelogError):
    """This node has applied the record asked for but cannot serve it (its changelog segments
    are behind or failing): ask another node; the stream never waits here for it."""

    http_status = 503
    temporary = True


class RequestExpiredError(ChangelogError):
    """A retried request is older than the source's dedup window: the source can no longer
    tell whether its first attempt committed, so it refuses it rather than apply it twice."""

    http_status = 409

    def __init__(self, message: str, *, request_id: str = "", hint: str | None = None) -> None:
        super().__init__(
            message,
            hint=hint
            or "check whether the change is there (e.g. stat the path) before sending it "
            "again as a new request",
        )
        self.request_id = request_id

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "request_id": self.request_id}


class FrameError(ChangelogError):
    """A changelog frame is malformed, truncated or fails its checksum; it is never applied."""

    http_status = 502
    temporary = True


class ReplicaBehindError(ChangelogError):
    """The replica has not applied `wanted` yet (it is at `applied`): a session that saw
    `wanted` must not read from it until it has (the gate waits, or asks the source). Declared
    here, not in fallback/, because mirror/ raises it and fallback/ catches it."""

    http_status = 503
    temporary = True

    def __init__(self, region: str, applied: int, wanted: int) -> None:
        super().__init__(
            f"mirror {region!r} has applied version {applied}, this read needs {wanted}"
        )
        self.region = region
        self.applied = applied
        self.wanted = wanted


class FsError(ChangelogError, OSError):
    """A namespace operation failed with a POSIX errno (ENOENT, EEXIST, ENOTEMPTY, ...).

    Also an OSError carrying that errno (and the path as `filename`), built as the matching
    builtin subclass where Python has one: `FsError(ENOENT, ...)` is a FileNotFoundError, so
    code written against os/io (pandas, fsspec, `except FileNotFoundError`) handles it as it
    would a local file's error. `str()` stays the message (not OSError's "[Errno 2] ...").
    """

    http_status = 409

    def __new__(cls, *args: Any, **kwargs: Any) -> FsError:
        if cls is FsError and args:
            cls = _FS_ERRNO_TYPES.get(args[0], FsError)
        return super().__new__(cls)

    def __init__(self, err: int, message: str, *, path: str | None = None) -> None:
        name = errno_mod.errorcode.get(err, str(err))
        where = f" ({path})" if path else ""
        super().__init__(f"{name}: {message}{where}")
        self.args = (self.message,)  # OSError's own __init__ is skipped under a custom __new__
        self.errno = err
        self.path = path
        self.filename = path
        self.strerror = os.strerror(err)

    def __str__(self) -> str:
        return self.message

    def to_wire(self) -> dict[str, Any]:
        body = {**super().to_wire(), "errno": self.errno, "path": self.path, "detail": self.message}
        if type(self) in _FS_ERRNO_TYPES.values():
            body["error"] = "FsError"  # the errno picks the subclass again on the other side
        return body


class FsNotFoundError(FsError, FileNotFoundError):
    """FsError(ENOENT)."""


class FsExistsError(FsError, FileExistsError):
    """FsError(EEXIST)."""


class FsIsADirectoryError(FsError, IsADirectoryError):
    """FsError(EISDIR)."""


class FsNotADirectoryError(FsError, NotADirectoryError):
    """FsError(ENOTDIR)."""


class FsPermissionError(FsError, PermissionError):
    """FsError(EACCES or EPERM)."""


_FS_ERRNO_TYPES: dict[object, type[FsError]] = {
    errno_mod.ENOENT: FsNotFoundError,
    errno_mod.EEXIST: FsExistsError,
    errno_mod.EISDIR: FsIsADirectoryError,
    errno_mod.ENOTDIR: FsNotADirectoryError,
    errno_mod.EACCES: FsPermissionError,
    errno_mod.EPERM: FsPermissionError,
}


class MirrorRemovedError(FsError):
    """The source has no registration for this mirror: it was removed (`mirror remove`), or
    never registered. An ack, a remove or anything else a mirror asks about itself gets it.

    A region daemon that gets it stops (non-zero), since the source no longer keeps records or
    blocks for it. An FsError (ENOENT) too, so callers that only know errnos still see "not found".
    """

    http_status = 404

    def __init__(self, mirror: str) -> None:
        message = f"unknown mirror {mirror!r}: not registered with the source"
        super().__init__(errno_mod.ENOENT, message)
        self.mirror = mirror
        self.hint = "it was removed (or never created): `mirrorfs mirror create` makes it again"

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "mirror": self.mirror}


def from_wire(body: dict[str, Any], status: int) -> ChangelogError:
    """Rebuild the typed error a node sent; unknown shapes become a plain ChangelogError."""
    kind = body.get("error", "")
    message = str(body.get("message", f"HTTP {status}"))
    if kind == "MirrorRemovedError" and isinstance(body.get("mirror"), str):
        return MirrorRemovedError(body["mirror"])
    if kind == "FsError" and "errno" in body:
        err = FsError(int(body["errno"]), "", path=body.get("path"))
        err.args = (message,)
        err.message = message
        return err
    if kind == "NotLeaderError":
        return NotLeaderError(message, leader_hint=body.get("leader_hint"))
    if kind == "VersionGoneError":
        return VersionGoneError(
            message,
            requested=int(body.get("requested", 0)),
            first_available=int(body.get("first_available", 0)),
        )
    if kind == "RequestExpiredError":
        return RequestExpiredError(
            message, request_id=str(body.get("request_id", "")), hint=body.get("hint")
        )
    simple: dict[str, type[ChangelogError]] = {
        "AuthError": AuthError,
        "ForbiddenError": ForbiddenError,
        "BadRequestError": BadRequestError,
        "QuorumUnavailableError": QuorumUnavailableError,
        "ChangelogUnavailableError": ChangelogUnavailableError,
        "FrameError": FrameError,
    }
    cls = simple.get(kind, ChangelogError)
    return cls(message, hint=body.get("hint"))
