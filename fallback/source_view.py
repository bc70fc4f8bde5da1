"""MetadataView over the source region's HTTP API (reads from any node, or the leader)."""

from __future__ import annotations

from typing import Any

from fallback.view import ChunkMap, FileVersion
from volume.client import SourceClient
from volume.inode import Inode, SliceRef


class SourceView:
    def __init__(self, client: SourceClient, *, uid: int = 0, gid: int = 0) -> None:
        self.client = client
        self.uid = uid
        self.gid = gid

    async def lookup(self, path: str, *, min_version: int = 0) -> tuple[int, Inode]:
        version, attr = await self.client.meta(
            "lookup", path=path, uid=self.uid, gid=self.gid, min_version=min_version
        )
        return version, Inode.from_dict(attr)

    async def readdir(
        self, path: str, *, after: str = "", limit: int = 1000, min_version: int = 0
    ) -> tuple[int, list[tuple[str, Inode]]]:
        version, rows = await self.client.meta(
            "readdir",
            path=path,
            after=after,
            limit=limit,
            uid=self.uid,
            gid=self.gid,
            min_version=min_version,
        )
        return version, [(r["name"], Inode.from_dict(r["attr"])) for r in rows]

    async def chunk(self, ino: int, index: int, *, min_version: int = 0) -> ChunkMap:
        _, data = await self.client.meta("chunk", ino=ino, index=index, min_version=min_version)
        return _chunk_map(data)

    async def resolve_file(
        self, path: str, *, offset: int = 0, length: int | None = None, min_version: int = 0
    ) -> FileVersion:
        version, data = await self.client.meta(
            "file",
            path=path,
            offset=offset,
            length=-1 if length is None else length,  # -1: to the end of the file
            uid=self.uid,
            gid=self.gid,
            min_version=min_version,
        )
        chunks = {int(k): _chunk_map(v) for k, v in data["chunks"].items()}
        return FileVersion(version, Inode.from_dict(data["attr"]), chunks)


def _chunk_map(data: dict[str, Any]) -> ChunkMap:
    return ChunkMap(
        [SliceRef.from_dict(s) for s in data["slices"]],
        {int(k): list(v) for k, v in data["checksums"].items()},
    )
