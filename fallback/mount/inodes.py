"""Which path each inode the kernel knows stands for.

The kernel speaks inode numbers; the client's metadata views speak paths (a replica row and a
source lookup are both by path). The volume's inode numbers are stable and it has no hard
links, so one inode has one path: learnt on lookup (the kernel always looks a name up before
it uses its inode), moved on a rename made through the mount, dropped on forget. A rename made
elsewhere leaves an entry pointing at the old path until the kernel looks the new name up; the
operations check that the path still holds the inode (see ops.py `_resolve`).
"""

from __future__ import annotations

from volume.inode import ROOT_INO
from volume.paths import join_path


class InodeTable:
    def __init__(self) -> None:
        self._paths: dict[int, str] = {ROOT_INO: "/"}
        self._inos: dict[str, int] = {"/": ROOT_INO}  # the reverse of _paths
        self._lookups: dict[int, int] = {}

    def _set(self, ino: int, path: str | None) -> None:
        old = self._paths.pop(ino, None)
        if old is not None and self._inos.get(old) == ino:
            del self._inos[old]
        if path is not None:
            self._paths[ino] = path
            if path:
                self._inos[path] = ino

    def path(self, ino: int) -> str | None:
        return self._paths.get(ino)

    def child(self, parent: int, name: str) -> str | None:
        """The path of `name` in directory `parent`, None if the parent is unknown."""
        base = self._paths.get(parent)
        return None if base is None else join_path(base, name)

    def learn(self, ino: int, path: str) -> None:
        """The kernel got `ino` for `path` (lookup, create, mkdir, symlink): one more lookup."""
        self._set(ino, path)
        if ino != ROOT_INO:
            self._lookups[ino] = self._lookups.get(ino, 0) + 1

    def forget(self, ino: int, count: int) -> None:
        left = self._lookups.get(ino, 0) - count
        if left > 0:
            self._lookups[ino] = left
        elif ino != ROOT_INO:
            self._lookups.pop(ino, None)
            self._set(ino, None)

    def moved(self, src: str, dst: str) -> None:
        """A rename through the mount: `src` and everything under it now live under `dst`."""
        prefix = src.rstrip("/") + "/"
        self.removed(dst)  # whatever `dst` named was replaced
        for ino, path in list(self._paths.items()):
            if path == src:
                self._set(ino, dst)
            elif path.startswith(prefix):
                self._set(ino, dst.rstrip("/") + "/" + path[len(prefix) :])

    def removed(self, path: str) -> int | None:
        """An unlink or rmdir through the mount: the inode `path` named, no longer at a path
        (its entry stays until forget: an open handle still reads it)."""
        ino = self._inos.get(path)
        if ino is None or ino == ROOT_INO:
            return None
        self._set(ino, "")  # known inode, no path
        return ino

    def __len__(self) -> int:
        return len(self._paths)
