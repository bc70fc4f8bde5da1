"""What every region's HTTP service shares: bearer-token auth with scopes, JSON answers, typed
errors.

The source nodes' API and the mirror region daemons' status API use these same middlewares, so
everywhere a missing, unknown or forged token is a logged 401, a valid token outside its scope a
logged 403 (before the handler runs: nothing is changed), and a failure a JSON error body, never
a bare 500. Each /v1/ route declares the scopes that may call it (`add_route(..., allow=...)`);
`admin` may call every route, and a route that declares nothing is admin-only (fail closed).
Tokens and scopes: volume/tokens.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from volume.errors import AuthError, ChangelogError, ForbiddenError
from volume.tokens import (
    ADMIN,
    ANY_MIRROR,
    CLIENT_RO,
    CLIENT_RW,
    MIRROR_PREFIX,
    OWN_MIRROR,
    TokenVerifier,
    parse_scope,
)

log = structlog.get_logger(__name__)

PROTECTED_PREFIX = "/v1/"  # /metrics stays open: scrapers rarely carry a token


class RouteScopes:
    """Which scopes may call each route of one app (filled by `add_route`)."""

    def __init__(self) -> None:
        self.by_route: dict[web.AbstractRoute, frozenset[str]] = {}


ROUTE_SCOPES_KEY = web.AppKey("route_scopes", RouteScopes)


def json_response(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(exc: ChangelogError) -> web.Response:
    return json_response(exc.to_wire(), status=exc.http_status)


def bearer_token(request: web.Request) -> str:
    """The request's bearer token, or "" when it carries none."""
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""


def _check_pattern(pattern: str) -> str:
    if pattern in (ANY_MIRROR, OWN_MIRROR, CLIENT_RW, CLIENT_RO):
        return pattern
    return parse_scope(pattern)  # a literal scope such as "mirror:eu"


def add_route(
    app: web.Application, method: str, path: str, handler: Handler, *, allow: Iterable[str] = ()
) -> None:
    """Add a route callable by `admin` and by the scopes in `allow`: literal scopes, `mirror:*`
    (any mirror's token) or `mirror:{name}` (the mirror the path's {name} names)."""
    route = app.router.add_route(method, path, handler)
    if ROUTE_SCOPES_KEY not in app:
        app[ROUTE_SCOPES_KEY] = RouteScopes()
    app[ROUTE_SCOPES_KEY].by_route[route] = frozenset(_check_pattern(p) for p in allow)


def is_allowed(scope: str, allowed: Iterable[str], match_info: Mapping[str, str]) -> bool:
    """Whether a token of `scope` may call a route that allows `allowed`."""
    if scope == ADMIN:
        return True
    for pattern in allowed:
        if pattern == ANY_MIRROR:
            if scope.startswith(MIRROR_PREFIX):
                return True
        elif pattern == OWN_MIRROR:
            name = match_info.get("name")
            if name is not None and scope == MIRROR_PREFIX + name:
                return True
        elif pattern == scope:
            return True
    return False


def bearer_auth(verifier: TokenVerifier, *, service: str) -> Middleware:
    """401 for a /v1/ request without a token the verifier knows, 403 for one whose scope the
    route does not allow; both logged (`{service}.unauthorized`, `{service}.forbidden`) with the
    path, the peer and the scope, never the token."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PROTECTED_PREFIX):
            return await handler(request)
        given = bearer_token(request)
        scope = verifier.scope_of(given) if given else None
        if scope is None:
            log.warning(
                f"{service}.unauthorized",
                path=request.path,
                peer=request.remote,
                reason="missing token" if not given else "unknown or forged token",
            )
            return error_response(AuthError("missing or wrong bearer token"))
        match = request.match_info
        if match.http_exception is None:  # an unknown route or method answers 404/405 as usual
            table = request.app.get(ROUTE_SCOPES_KEY)
            allowed = table.by_route.get(match.route, frozenset()) if table else frozenset()
            if not is_allowed(scope, allowed, match):
                needs = " or ".join(sorted({ADMIN, *allowed}))
                log.warning(
                    f"{service}.forbidden",
                    method=request.method,
                    path=request.path,
                    peer=request.remote,
                    scope=scope,
                    needs=needs,
                )
                return error_response(
                    ForbiddenError(
                        f"a {scope} token may not {request.method} {request.path}",
                        hint=f"this route needs a token of scope {needs}",
                    )
                )
        return await handler(request)

    return auth


def json_errors(*, service: str) -> Middleware:
    """Typed errors become their JSON body and status; anything else a logged JSON 500."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ChangelogError as exc:
            return error_response(exc)
        except web.HTTPException:
            raise
        except Exception as exc:  # answer JSON and keep serving; the log has the stack
            log.exception(f"{service}.internal_error", path=request.path)
            return error_response(ChangelogError(f"internal error: {type(exc).__name__}: {exc}"))

    return errors


def metrics_response(*registries: CollectorRegistry) -> web.Response:
    """`GET /metrics` of a daemon: the exposition of its own families and, after them, the
    process's default registry (the object-store layers' requests, bytes, errors and
    latencies), so one scrape gets everything the process knows."""
    body = b"".join(generate_latest(r) for r in (*registries, REGISTRY))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
