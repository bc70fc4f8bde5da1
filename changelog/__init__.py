"""The source region: namespace, Raft state machine, durable changelog, snapshots, GC, HTTP API.

The one truth every mirror follows; records carry effects, never requests.
May import volume and objstore; never mirror or fallback.
"""

from changelog.server import serve_node

__all__ = ["serve_node"]
