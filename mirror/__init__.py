"""A mirror region: create, the changelog follower into PostgreSQL, block replicator, status.

Talks to the source only over the network, through changelog's records and client.
May import changelog and objstore; never fallback.
"""
