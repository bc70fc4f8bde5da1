"""Errors of reads through a region, in the volume's error tree (volume/errors.py).

`ReplicaBehindError` lives in volume/errors.py (mirror/ raises it, and mirror/ never imports
fallback/); it is re-exported here, where the client's callers look for it.
"""

from __future__ import annotations

from volume.errors import ReplicaBehindError

__all__ = ["ReplicaBehindError"]
