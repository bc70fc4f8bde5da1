"""The region daemon's HTTP API: `GET /v1/status` (bearer token), answered as JSON, and
`GET /metrics` (Prometheus, no token: scrapers rarely carry one), both from the same document.

The same auth and error middlewares as the source nodes' API (volume/web.py): the volume's
admin tokens and this mirror's own `mirror:NAME` token may read the status; another mirror's
or a client's token gets 403. A status document in state `degraded` (the replica's PostgreSQL
does not answer) is answered with 503, a document all the same: a monitor sees why, never a
bare 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mirror.metrics import status_registry
from mirror.status import is_degraded
from volume.tokens import MIRROR_PREFIX, TokenVerifier
from volume.web import add_route, bearer_auth, json_errors, json_response, metrics_response

StatusSource = Callable[[], Awaitable[dict[str, Any]]]


def build_app(verifier: TokenVerifier, mirror: str, status: StatusSource) -> web.Application:
    """The daemon's app for mirror `mirror`; `status` builds the region status document on
    each request."""

    async def get_status(request: web.Request) -> web.Response:
        document = await status()
        return json_response(document, status=503 if is_degraded(document) else 200)

    app = web.Application(
        middlewares=[bearer_auth(verifier, service="mirror"), json_errors(service="mirror")]
    )

    async def get_metrics(request: web.Request) -> web.Response:
        return metrics_response(status_registry(await status()))

    add_route(app, "GET", "/v1/status", get_status, allow=[MIRROR_PREFIX + mirror])
    app.router.add_get("/metrics", get_metrics)
    return app
