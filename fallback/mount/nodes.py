"""The kernel's inodes ("nodes") of a mount: one per version of a file's bytes, and their paths.

Why not just the volume's inode numbers: an overwrite at the source keeps the file's inode
number, but the kernel keeps a file's size and cached pages per inode, so a reader that opened
the old bytes would be cut at the new size and could be served pages of the new version
(memory-mapped readers included). So each content (a file's inode number with its size and
mtime) gets a node of its own: the volume's inode number for the first one seen, that number
plus `generation << 40` for each later one. A node's attributes are frozen to its content, so
the kernel never mixes two versions; a lookup after the window (or an open refused with ESTALE,
which makes the kernel look the name up again) meets the new content as a new node.

The volume has no hard links, so a volume inode has one path: learnt on lookup (the kernel
looks a name up before it uses a node), moved on a rename made through the mount, cleared on an
unlink through it, and dropped when the kernel forgets the last node of that inode.
"""

from __future__ import annotations

from dataclasses import dataclass

from volume.inode import ROOT_INO, Inode
from volume.paths import join_path

GENERATION_SHIFT = 40  # volume inode numbers stay below 2**40; the generation above them


def content_of(inode: Inode) -> tuple[int, int]:
    """What tells two versions of a file's bytes apart: every commit sets size or mtime.
    (Directories and symlinks have one node each: their content is not paged.)"""
    return (inode.mtime_ms, inode.size) if inode.is_file else (0, 0)


@dataclass
class Node:
    id: int
    ino: int  # the volume's inode number
    inode: Inode  # the attributes of the content this node stands for
    lookups: int = 0

    @property
    def content(self) -> tuple[int, int]:
        return content_of(self.inode)


class NodeTable:
    def __init__(self, root: Inode) -> None:
        self._nodes: dict[int, Node] = {ROOT_INO: Node(ROOT_INO, ROOT_INO, root, lookups=1)}
        self._current: dict[int, int] = {ROOT_INO: ROOT_INO}  # volume inode -> newest node
        self._generations: dict[int, int] = {}
        self._live: dict[int, int] = {}  # volume inode -> how many of its nodes are known
        self._paths: dict[int, str] = {ROOT_INO: "/"}  # volume inode -> path ("": unlinked)
        self._inos: dict[str, int] = {"/": ROOT_INO}  # the reverse

    def get(self, node_id: int) -> Node | None:
        return self._nodes.get(node_id)

    def path(self, node_id: int) -> str | None:
        node = self._nodes.get(node_id)
        return None if node is None else self._paths.get(node.ino)

    def child(self, parent: int, name: str) -> str | None:
        base = self.path(parent)
        return join_path(base, name) if base else None

    def is_current(self, node: Node) -> bool:
        return self._current.get(node.ino) == node.id

    def learn(self, inode: Inode, path: str) -> Node:
        """The node the kernel gets for `inode` found at `path` (a lookup, create, readdirplus
        entry): the current node if its content is the same, else a new one. One lookup more."""
        node = self._nodes.get(self._current.get(inode.ino, -1))
        if node is None or node.content != content_of(inode):
            generation = self._generations.get(inode.ino, -1) + 1
            self._generations[inode.ino] = generation
            node = Node(inode.ino + (generation << GENERATION_SHIFT), inode.ino, inode)
            self._nodes[node.id] = node
            self._current[inode.ino] = node.id
            self._live[inode.ino] = self._live.get(inode.ino, 0) + 1
        else:
            node.inode = inode  # same bytes; mode, owner or ctime may have changed
        node.lookups += 1
        self._set_path(inode.ino, path)
        return node

    def rewritten(self, node: Node, inode: Inode) -> None:
        """This mount changed the node's bytes itself (a commit, a truncate): the node goes on
        standing for the file (the caller drops the kernel's pages of it)."""
        node.inode = inode
        self._current[node.ino] = node.id

    def forget(self, node_id: int, count: int) -> None:
        node = self._nodes.get(node_id)
        if node is None or node_id == ROOT_INO:
            return
        node.lookups -= count
        if node.lookups > 0:
            return
        del self._nodes[node_id]
        if self._current.get(node.ino) == node_id:
            del self._current[node.ino]
        self._live[node.ino] -= 1
        if self._live[node.ino] == 0:
            del self._live[node.ino]
            self._set_path(node.ino, None)
            self._generations.pop(node.ino, None)

    def moved(self, src: str, dst: str) -> None:
        """A rename through the mount: `src` and everything under it now live under `dst`."""
        self.removed(dst)  # whatever `dst` named was replaced
        prefix = src.rstrip("/") + "/"
        for ino, path in list(self._paths.items()):
            if path == src:
                self._set_path(ino, dst)
            elif path.startswith(prefix):
                self._set_path(ino, dst.rstrip("/") + "/" + path[len(prefix) :])

    def removed(self, path: str) -> int | None:
        """An unlink or rmdir through the mount: the volume inode `path` named, now at no path
        (its nodes stay until forgotten: an open handle still reads it)."""
        ino = self._inos.get(path)
        if ino is None or ino == ROOT_INO:
            return None
        self._set_path(ino, "")
        return ino

    def _set_path(self, ino: int, path: str | None) -> None:
        old = self._paths.pop(ino, None)
        if old and self._inos.get(old) == ino:
            del self._inos[old]
        if path is not None:
            self._paths[ino] = path
            if path:
                stale = self._inos.get(path)
                if stale is not None and stale != ino:
                    self._paths[stale] = ""  # replaced elsewhere: that inode is at no path now
                self._inos[path] = ino

    def __len__(self) -> int:
        return len(self._nodes)
