"""What every region's HTTP service shares: bearer-token auth, JSON answers, typed errors.

The source nodes' API and the mirror region daemons' status API use these same middlewares, so
a wrong token is a logged 401 and a failure a JSON error body everywhere, never a bare 500.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from volume.errors import AuthError, ChangelogError

log = structlog.get_logger(__name__)

PROTECTED_PREFIX = "/v1/"  # /metrics stays open: scrapers rarely carry a token


def json_response(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(exc: ChangelogError) -> web.Response:
    return json_response(exc.to_wire(), status=exc.http_status)


def bearer_token(request: web.Request) -> str:
    """The request's bearer token, or "" when it carries none."""
    header = request.headers.get("Authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""


def bearer_auth(token: str, *, service: str) -> Middleware:
    """401 (logged as `{service}.unauthorized`, never with the token) for a /v1/ request
    without the volume's token."""
    expected = token.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(PROTECTED_PREFIX):
            given = bearer_token(request)
            if not given or not hmac.compare_digest(given.encode(), expected):
                log.warning(
                    f"{service}.unauthorized",
                    path=request.path,
                    peer=request.remote,
                    reason="missing token" if not given else "wrong token",
                )
                return error_response(AuthError("missing or wrong bearer token"))
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
