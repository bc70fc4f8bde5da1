"""Hosts on one machine: a network namespace per host on a private bridge, and real partitions.

Each host gets its own network stack (its own 10.x.y.i address on a veth joined to a bridge
in the test's namespace, which has .254), so a process started with `exec_prefix(i)` talks to
the others over a real network. `partition(i)` installs blackhole routes between host i and
every other host (both directions: nothing flows, connections fail with EINVAL), while the
test itself still reaches host i through the bridge; `heal(i)` removes them. The kernel has no
netem here, but this needs only iproute2 (`ip netns`, veth, bridge) and root.

Everything is removed on exit, even when a test fails; names carry a random tag, so tests
running side by side never share a bridge or a subnet.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import subprocess
from collections.abc import Iterator
from types import TracebackType


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _free_subnet() -> str:
    """A 10.x.y.0/24 that no route of this machine uses yet."""
    routes = _ip("-4", "route", "show", "table", "all").stdout
    for _ in range(100):
        prefix = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        if f"{prefix}." not in routes:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 subnet for a test network")


class HostNetwork:
    """`hosts` namespaces on one bridge; use as a context manager."""

    def __init__(self, hosts: int) -> None:
        self.tag = secrets.token_hex(3)  # interface names must stay under 16 characters
        self.hosts = list(range(1, hosts + 1))
        self.prefix = _free_subnet()
        self.bridge = f"mb{self.tag}"
        self._partitioned: set[int] = set()

    def ns(self, host: int) -> str:
        return f"mfs-{self.tag}-{host}"

    def address(self, host: int) -> str:
        return f"{self.prefix}.{host}"

    def exec_prefix(self, host: int) -> list[str]:
        """Prepend to a command to run it on `host` (`ip netns exec` execs: same pid)."""
        return ["ip", "netns", "exec", self.ns(host)]

    def __enter__(self) -> HostNetwork:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.prefix}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for host in self.hosts:
                ns, veth = self.ns(host), f"v{self.tag}{host}"
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for host in self.hosts:
            _ip("netns", "del", self.ns(host), check=False)  # takes its veth with it
        _ip("link", "del", self.bridge, check=False)

    def _routes(self, host: int, verb: str) -> None:
        for other in self.hosts:
            if other == host:
                continue
            for a, b in ((host, other), (other, host)):
                _ip("-n", self.ns(a), "route", verb, "blackhole", f"{self.address(b)}/32")

    def partition(self, host: int) -> None:
        """Cut host `host` off from every other host (the test still reaches it)."""
        if host not in self._partitioned:
            self._routes(host, "add")
            self._partitioned.add(host)

    def heal(self, host: int) -> None:
        if host in self._partitioned:
            self._routes(host, "del")
            self._partitioned.discard(host)

    @contextlib.contextmanager
    def partitioned(self, host: int) -> Iterator[None]:
        self.partition(host)
        try:
            yield
        finally:
            self.heal(host)
