"""The region daemon's HTTP API: `GET /v1/status` (bearer token), answered as JSON.

The same auth and error middlewares as the source nodes' API (volume/web.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from volume.web import bearer_auth, json_errors, json_response

StatusSource = Callable[[], Awaitable[dict[str, Any]]]


def build_app(token: str, status: StatusSource) -> web.Application:
    """The daemon's app; `status` builds the region status document on each request."""

    async def get_status(request: web.Request) -> web.Response:
        return json_response(await status())

    app = web.Application(
        middlewares=[bearer_auth(token, service="mirror"), json_errors(service="mirror")]
    )
    app.router.add_get("/v1/status", get_status)
    return app
