"""Consistency windows: how stale a read may be, and what happens when the replica is staler.

A read carries a `ReadBound`; a `ReadGate` runs the metadata call against a view fresh enough
for it (the region's replica, or the source under the `source` policy) and says whether the
answer is stale (`serve` policy). The client without a gate (the source region) reads the
source and is never stale.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from fallback.view import MetadataView

T = TypeVar("T")


class StalePolicy(StrEnum):
    SOURCE = "source"  # resolve against the source region
    ERROR = "error"  # raise StaleMirrorError
    SERVE = "serve"  # serve the replica anyway, flagged stale


@dataclass(frozen=True)
class ReadBound:
    """Per-call overrides; None takes the client's default (and that, the region's)."""

    window_s: float | None = None
    policy: StalePolicy | None = None


MetaCall = Callable[[MetadataView, int], Awaitable[T]]


class ReadGate(Protocol):
    async def run(
        self, call: MetaCall[T], *, min_version: int, bound: ReadBound | None
    ) -> tuple[T, bool]:
        """`call(view, min_version)` against a view fresh enough for `bound`; (answer, stale)."""
        ...

    async def settle(self, version: int) -> None:
        """Return once this region's readers see `version` (a write from here committed it)."""
        ...
