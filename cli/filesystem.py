"""The `mirrorfs://` fsspec protocol: fallback's MirrorFileSystem, connected through cli.

Registered in pyproject.toml (`[project.entry-points."fsspec.specs"]`), so
`fsspec.open("mirrorfs://eu/models/x.bin")` and `pandas.read_parquet("mirrorfs://...")` work
once the package is installed. fallback/ may not import cli/, so the one thing it cannot know,
how to connect to a region, is supplied here.
"""

from __future__ import annotations

from collections.abc import Awaitable

from cli.client import aconnect
from fallback import FsClient, MirrorFileSystem


class RegionFileSystem(MirrorFileSystem):  # type: ignore[misc]
    def connect_client(self) -> Awaitable[FsClient]:
        bound = self.bound
        return aconnect(self.config, self.region, window_s=bound.window_s, policy=bound.policy)
