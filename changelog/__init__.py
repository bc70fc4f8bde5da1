"""The source region: namespace model, Raft state machine, durable changelog, HTTP API, client.

The one truth every mirror follows; records carry effects, never requests.
May import objstore only.
"""
