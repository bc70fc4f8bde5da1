"""Block replication: the copy queue (the block table), copy workers, verify/repair, warm-up.

A block is marked copied only once its bytes in the mirror bucket are verified.
May import mirror.db, mirror.replica, mirror.errors, volume and objstore.
"""

from mirror.replicate.queue import (
    PRIORITY_FALLBACK,
    PRIORITY_WARMUP,
    BlockId,
    BlockState,
    CopyQueue,
    QueueStats,
)
from mirror.replicate.replicator import (
    Replicator,
    ReplicatorConfig,
    ReplicatorState,
    run_replicator,
)
from mirror.replicate.verify import VerifyReport, verify
from mirror.replicate.warmup import pending_under

__all__ = [
    "PRIORITY_FALLBACK",
    "PRIORITY_WARMUP",
    "BlockId",
    "BlockState",
    "CopyQueue",
    "QueueStats",
    "Replicator",
    "ReplicatorConfig",
    "ReplicatorState",
    "VerifyReport",
    "pending_under",
    "run_replicator",
    "verify",
]
