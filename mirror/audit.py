"""Whole-replica checks: the namespace as one comparable dump, and integrity of the tables.

These read every row, so they are for tests, scenario checkers and `fsck`-style runs on small
volumes, never for a request path.
"""

from __future__ import annotations

from typing import Any

from mirror.db import Database
from mirror.replica import INODE_FIELDS, row_inode
from volume.inode import ROOT_INO
from volume.paths import join_path


async def dump_tree(db: Database) -> dict[str, dict[str, Any]]:
    """The replica's namespace in exactly the source's `Namespace.dump_tree()` shape, so it
    can be compared with the source's. Reads everything: for tests, scenarios, small volumes."""
    async with (
        db.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        inodes = await conn.fetch(f"SELECT {INODE_FIELDS} FROM inodes i")
        entries = await conn.fetch("SELECT parent, name, ino FROM dentries")
        refs = await conn.fetch(
            "SELECT r.ino, r.chunk_index, r.slice_id, r.size, r.off, r.len, r.pos,"
            " s.checksums FROM chunk_refs r JOIN slices s ON s.id = r.slice_id"
            " ORDER BY r.ino, r.chunk_index, r.ord"
        )
    attrs = {row["ino"]: row_inode(row).to_dict() for row in inodes}
    children: dict[int, list[tuple[str, int]]] = {}
    for row in entries:
        children.setdefault(row["parent"], []).append((row["name"], row["ino"]))
    chunks: dict[int, dict[int, list[dict[str, Any]]]] = {}
    for row in refs:
        chunks.setdefault(row["ino"], {}).setdefault(row["chunk_index"], []).append(
            {
                "id": row["slice_id"],
                "size": row["size"],
                "off": row["off"],
                "len": row["len"],
                "pos": row["pos"],
                "checksums": list(row["checksums"]),
            }
        )
    out: dict[str, dict[str, Any]] = {}
    stack: list[tuple[str, int]] = [("/", ROOT_INO)]
    while stack:
        path, ino = stack.pop()
        item = dict(attrs[ino])
        if item["kind"] == "dir":
            stack.extend((join_path(path, name), child) for name, child in children.get(ino, []))
        elif item["kind"] == "file":
            item["chunks"] = [[index, r] for index, r in sorted(chunks.get(ino, {}).items())]
        out[path] = item
    return dict(sorted(out.items()))


async def check_integrity(db: Database) -> list[str]:
    """Problems that `dump_tree` cannot show (rows no path reaches, dangling references);
    [] for a sound replica. Scans every table: for tests and `fsck`-style checks."""
    checks = {
        "inodes no entry names": "SELECT count(*) FROM inodes i WHERE i.ino <> 1 AND NOT"
        " EXISTS (SELECT 1 FROM dentries d WHERE d.ino = i.ino)",
        "entries naming no inode": "SELECT count(*) FROM dentries d WHERE NOT EXISTS"
        " (SELECT 1 FROM inodes i WHERE i.ino = d.ino)",
        "entries in no directory": "SELECT count(*) FROM dentries d WHERE NOT EXISTS"
        " (SELECT 1 FROM inodes i WHERE i.ino = d.parent AND i.kind = 'dir')",
        "refs of no file": "SELECT count(*) FROM chunk_refs r WHERE NOT EXISTS"
        " (SELECT 1 FROM inodes i WHERE i.ino = r.ino AND i.kind = 'file')",
        "refs to no slice": "SELECT count(*) FROM chunk_refs r WHERE NOT EXISTS"
        " (SELECT 1 FROM slices s WHERE s.id = r.slice_id)",
        "slices without a ref": "SELECT count(*) FROM slices s WHERE NOT EXISTS"
        " (SELECT 1 FROM chunk_refs r WHERE r.slice_id = s.id)",
        "blocks of no slice": "SELECT count(*) FROM blocks b WHERE NOT EXISTS"
        " (SELECT 1 FROM slices s WHERE s.id = b.slice_id)",
        "slices with missing blocks": "SELECT count(*) FROM slices s WHERE"
        " cardinality(s.checksums) <> (SELECT count(*) FROM blocks b WHERE b.slice_id = s.id)",
    }
    problems: list[str] = []
    async with (
        db.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        for what, sql in checks.items():
            count = int(await conn.fetchval(sql))
            if count:
                problems.append(f"{count} {what}")
    return problems
