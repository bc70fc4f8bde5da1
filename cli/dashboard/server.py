"""The dashboard's web server: one page, its static files, and the JSON the page polls.

Access: the page is protected by a login token of its own, never by a volume token. The
dashboard mints a random one at start (or takes `MIRRORFS_DASHBOARD_TOKEN`, to keep a URL
across restarts) and prints `http://HOST:PORT/?token=T`. Opening that URL trades the token for
an HttpOnly, SameSite=Strict cookie and redirects to `/`, so the token leaves the address bar,
the history and any Referer at once; the page's script never sees it. `/api/status` takes the
cookie, or `Authorization: Bearer T` (for curl and scripts). The login token grants exactly
this: reading the page and its JSON. The volume's admin token stays in the dashboard process,
which asks the nodes and region daemons itself (collector.py).

Routes:
    GET /                 the page (401 page without the login cookie or token)
    GET /api/status       the collector's snapshot (401 JSON without it)
    GET /static/{file}    app.js, app.css, vendored uPlot: open (they hold no data)
    GET /healthz          {"ok": true}: open, for whoever starts the dashboard to wait on

No access log: aiohttp's would write the login URL, token and all, into the log.
"""

from __future__ import annotations

import hmac
import secrets
from importlib import resources
from typing import Any

import structlog
from aiohttp import web

from cli.dashboard.collector import Collector
from volume.web import bearer_token, json_response

log = structlog.get_logger(__name__)

TOKEN_BYTES = 24
MIN_TOKEN_LENGTH = 16
COLLECTOR_KEY = web.AppKey("collector", Collector)
STATIC = resources.files("cli.dashboard") / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
SECURITY_HEADERS = {
    # Everything the page loads is its own: no CDN, no inline script, no framing.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

UNAUTHORIZED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mirrorfs dashboard: sign-in needed</title>
<link rel="stylesheet" href="/static/app.css"></head>
<body class="gate"><main><h1>mirrorfs dashboard</h1>
<p>This page needs its login link. Open the URL that <code>mirrorfs dashboard</code>
(or <code>mirrorfs demo</code>) printed when it started: it ends in <code>?token=...</code>.</p>
<p>The link changes each time the dashboard starts, unless it was started with
<code>MIRRORFS_DASHBOARD_TOKEN</code> set.</p></main></body></html>
"""


def new_login_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


class Login:
    """The dashboard's own login token and the cookie it becomes."""

    def __init__(self, token: str, cookie_name: str) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the dashboard token must be at least {MIN_TOKEN_LENGTH} characters")
        self.token = token
        self.cookie_name = cookie_name  # per port: cookies are shared by every port of a host

    def is_valid(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(
            given.encode("utf-8", "replace"),  # type: ignore[union-attr]
            self.token.encode(),
        )

    def is_signed_in(self, request: web.Request) -> bool:
        return self.is_valid(request.cookies.get(self.cookie_name)) or self.is_valid(
            bearer_token(request)
        )


LOGIN_KEY = web.AppKey("login", Login)


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


async def page(request: web.Request) -> web.StreamResponse:
    login = request.app[LOGIN_KEY]
    given = request.query.get("token")
    if given is not None:
        if not login.is_valid(given):
            log.warning("dashboard.login_refused", peer=request.remote)
            return _unauthorized_page()
        log.info("dashboard.login", peer=request.remote)
        response = web.Response(status=302, headers={"Location": "/", "Cache-Control": "no-store"})
        response.set_cookie(
            login.cookie_name, login.token, httponly=True, samesite="Strict", path="/"
        )
        return response
    if not login.is_signed_in(request):
        return _unauthorized_page()
    return web.Response(
        text=(STATIC / "index.html").read_text(),
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


def _unauthorized_page() -> web.Response:
    return web.Response(
        status=401,
        text=UNAUTHORIZED_PAGE,
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


async def api_status(request: web.Request) -> web.Response:
    if not request.app[LOGIN_KEY].is_signed_in(request):
        return json_response(
            {"error": "AuthError", "message": "sign in with the dashboard's login URL"}, 401
        )
    response = json_response(request.app[COLLECTOR_KEY].snapshot())
    response.headers["Cache-Control"] = "no-store"
    return response


async def static_file(request: web.Request) -> web.Response:
    rel = request.match_info["path"]
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise web.HTTPNotFound()
    item = STATIC.joinpath(*parts)
    suffix = "." + parts[-1].rsplit(".", 1)[-1]
    if suffix not in STATIC_TYPES or not item.is_file():
        raise web.HTTPNotFound()
    return web.Response(
        body=item.read_bytes(),
        content_type=STATIC_TYPES[suffix],
        headers={"Cache-Control": "no-cache"},
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"ok": True})


def build_app(collector: Collector, login: Login) -> web.Application:
    app = web.Application(middlewares=[security_headers])
    app[COLLECTOR_KEY] = collector
    app[LOGIN_KEY] = login
    app.router.add_get("/", page)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/static/{path:.+}", static_file)
    app.router.add_get("/healthz", healthz)
    return app
