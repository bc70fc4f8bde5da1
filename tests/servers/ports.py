"""Free TCP ports on 127.0.0.1 for servers that tests start.

SeaweedFS opens a gRPC twin at port + 10000 for every HTTP port it listens on, so a port above
55535 breaks its startup; ports are therefore drawn below `max_port` and, on request, only where
the twin is free too. Ports are drawn from below the kernel's ephemeral range (32768+) where
possible, so an outgoing connection of some other test cannot grab one between our check and the
server's bind.
"""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack

DEFAULT_MIN_PORT = 20000
DEFAULT_MAX_PORT = 50000
GRPC_PORT_OFFSET = 10000
_MAX_TRIES = 2000


def _try_bind(stack: ExitStack, port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # No SO_REUSEADDR: a port with connections in TIME_WAIT counts as busy, which is the
        # conservative answer for a server that is about to bind it.
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return False
    stack.callback(sock.close)
    return True


def free_ports(
    n: int,
    *,
    min_port: int = DEFAULT_MIN_PORT,
    max_port: int = DEFAULT_MAX_PORT,
    with_grpc_twin: bool = False,
) -> list[int]:
    """Return `n` distinct ports in [min_port, max_port) that were free when checked.

    With `with_grpc_twin`, port + 10000 of each was free too, and no returned port is another's
    twin. All candidates are held bound until the whole set is chosen, so the set has no
    duplicates; after return another process may still take a port (tests accept that race).
    Raises RuntimeError if no such set is found.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if with_grpc_twin and max_port + GRPC_PORT_OFFSET > 65536:
        raise ValueError(f"max_port {max_port} leaves no room for gRPC twins below 65536")
    chosen: list[int] = []
    taken: set[int] = set()
    rng = random.SystemRandom()
    with ExitStack() as stack:
        for _ in range(_MAX_TRIES):
            if len(chosen) == n:
                break
            port = rng.randrange(min_port, max_port)
            needed = [port, port + GRPC_PORT_OFFSET] if with_grpc_twin else [port]
            if any(p in taken for p in needed):
                continue
            with ExitStack() as attempt:
                if all(_try_bind(attempt, p) for p in needed):
                    stack.enter_context(attempt.pop_all())
                    chosen.append(port)
                    taken.update(needed)
    if len(chosen) < n:
        raise RuntimeError(
            f"found only {len(chosen)} of {n} free ports in [{min_port}, {max_port})"
        )
    return chosen


def free_port(
    max_port: int = DEFAULT_MAX_PORT,
    *,
    min_port: int = DEFAULT_MIN_PORT,
    with_grpc_twin: bool = False,
) -> int:
    """Return one port that was free when checked; see `free_ports`."""
    return free_ports(1, min_port=min_port, max_port=max_port, with_grpc_twin=with_grpc_twin)[0]
