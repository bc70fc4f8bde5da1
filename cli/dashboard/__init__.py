"""The volume's status page (`mirrorfs dashboard`): one aiohttp process polls every source node
and region daemon with the config's admin token and serves a page that reads at a glance.
Part of cli/: it may import every room; nothing imports it but cli.app and cli.demo."""

from cli.dashboard.command import DEFAULT_LISTEN, TOKEN_ENV, register, serve_dashboard

__all__ = ["DEFAULT_LISTEN", "TOKEN_ENV", "register", "serve_dashboard"]
