"""Following the source: the changelog follower, the batch applier, the change fold, the loader.

Applies every record exactly once, in order, with the watermark in the same transaction.
May import mirror.db, mirror.replica, mirror.errors, volume and objstore.
"""

from mirror.follow.applier import apply_records
from mirror.follow.follower import Follower, FollowerState, FollowerStatus
from mirror.follow.loader import LoadStats, load_from_source, load_replica

__all__ = [
    "Follower",
    "FollowerState",
    "FollowerStatus",
    "LoadStats",
    "apply_records",
    "load_from_source",
    "load_replica",
]
