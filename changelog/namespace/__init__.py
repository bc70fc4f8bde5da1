"""The source's namespace: tables, the planners of every POSIX op, permissions, dumps.

Deterministic, so every Raft node derives the same effects; `Namespace` is its face.
May import volume and objstore only.
"""

from changelog.namespace.model import OPS, Namespace

__all__ = ["OPS", "Namespace"]
