"""The source's Raft: the pysyncobj bridge, the state machine, its conf and durable journal.

The only importer of pysyncobj in the project: fail reasons become typed errors here.
May import changelog.namespace, volume and objstore.
"""

from changelog.raft.bridge import RaftNode, now_ms
from changelog.raft.conf import make_conf
from changelog.raft.state import MetaState

__all__ = ["MetaState", "RaftNode", "make_conf", "now_ms"]
