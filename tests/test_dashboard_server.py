"""`mirrorfs dashboard` as a server: who gets in, what it serves, what it never lets out, how
it says a bad address; and its page in Chromium when nothing of the volume answers yet.

The volume here is a config only (nodes and a region that are not running, on ports nobody
listens on), so these tests need no PostgreSQL; the source comes up in the last one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from cli.source import free_ports
from tests.changelog.cluster import SourceCluster
from tests.dashboard_page import (
    Dashboard,
    browser_page,
    card,
    screenshot,
    state_is,
    value,
    wait_page,
)
from volume.config import MirrorConfig, VolumeConfig, load_config, write_config


def add_mirror(config: Path, name: str) -> VolumeConfig:
    """A mirror entry whose daemon does not run (its API port is free)."""
    cfg = load_config(config)
    mcfg = MirrorConfig(
        bucket=(config.parent / name).as_uri(),
        api=f"http://127.0.0.1:{free_ports(1)[0]}",
        data_dir=f"mirrors/{name}",
        token=f"mfs1.mirror:{name}.not-a-real-one.x",
    )
    cfg = cfg.model_copy(update={"mirrors": {**cfg.mirrors, name: mcfg}})
    write_config(cfg, config)
    return cfg


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SourceCluster]:
    c = SourceCluster(tmp_path / "vol", nodes=3)  # not started
    try:
        yield c
    finally:
        c.kill_all()


@pytest.fixture
def dashboard(cluster: SourceCluster, tmp_path: Path) -> Iterator[Dashboard]:
    add_mirror(cluster.config_path, "eu")
    dash = Dashboard(cluster.config_path, tmp_path / "dashboard.log")
    try:
        yield dash
    finally:
        dash.stop()


async def test_only_the_login_url_gets_in_and_no_token_gets_out(
    dashboard: Dashboard, cluster: SourceCluster
) -> None:
    await dashboard.start()
    base = dashboard.base
    jar = aiohttp.CookieJar(unsafe=True)  # the cookie of an IP address host, as a browser keeps
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        async with s.get(f"{base}/") as r:
            assert r.status == 401 and "login link" in await r.text()
        async with s.get(f"{base}/?token=wrong-token-wrong-token") as r:
            assert r.status == 401
        async with s.get(f"{base}/api/status") as r:
            assert r.status == 401 and (await r.json())["error"] == "AuthError"
        async with s.get(dashboard.login_url, allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/"
            cookie = r.headers["Set-Cookie"]
            assert f"mirrorfs_dashboard_{dashboard.port}=" in cookie
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with s.get(f"{base}/") as r:
            assert r.status == 200
            html = await r.text()
            assert "/static/app.js" in html and "/static/vendor/uplot/uPlot.iife.min.js" in html
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        async with s.get(f"{base}/api/status") as r:
            assert r.status == 200
            body = await r.text()
        for path, kind in [
            ("app.js", "text/javascript"),
            ("app.css", "text/css"),
            ("vendor/uplot/uPlot.iife.min.js", "text/javascript"),
            ("vendor/uplot/uPlot.min.css", "text/css"),
        ]:
            async with s.get(f"{base}/static/{path}") as r:
                assert r.status == 200 and r.content_type == kind, path
        for path in ("../server.py", "..%2Fserver.py", "vendor/uplot/LICENSE", "nothing.js"):
            async with s.get(f"{base}/static/{path}") as r:
                assert r.status == 404, path
    snap = await dashboard.snapshot()  # with the bearer form of the login token
    assert snap["volume"] == "test"
    cfg = load_config(cluster.config_path)
    secrets = [cfg.token, cfg.secret, cfg.mirrors["eu"].token]
    assert not [s for s in secrets if s in body], "a volume secret reached the browser"
    dashboard.stop()
    log = dashboard.log.read_text()
    assert "dashboard.login" in log and "dashboard.login_refused" in log
    assert dashboard.token not in log and "wrong-token" not in log
    assert not [s for s in secrets if s in log]


def run_dashboard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--config", str(config), "dashboard", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_address_or_a_taken_port_is_a_clear_error(cluster: SourceCluster) -> None:
    bad = run_dashboard(cluster.config_path, "--listen", "localhost")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: --listen 'localhost': expected HOST:PORT")
    assert "Traceback" not in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = run_dashboard(cluster.config_path, "--listen", f"127.0.0.1:{port}")
    assert busy.returncode == 1 and "Traceback" not in busy.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "hint: pick another address" in busy.stderr


async def test_page_when_nothing_answers_then_the_source_comes_up(
    dashboard: Dashboard, cluster: SourceCluster, tmp_path: Path
) -> None:
    await dashboard.start()
    async with browser_page() as page:
        await page.goto(dashboard.login_url)
        await wait_page(page, "eu unreachable", state_is("eu", "unreachable"), 15)
        verdict = await page.inner_text("#verdict")
        assert verdict.endswith("problems"), verdict
        problems = await page.inner_text("#problems")
        assert "no source node answers" in problems and "eu unreachable" in problems
        assert await value(page, '#source [data-field="leader"]') is None
        notice = await page.inner_text(f'{card("eu")} [data-field="unreachable"]')
        assert "Not answered since the dashboard started." in notice
        await screenshot(page, tmp_path / "dashboard-nothing-up.png")

        add_mirror(cluster.config_path, "ap")  # the config is read again when it changes
        await wait_page(page, "an ap card", f"document.querySelector('{card('ap')}')", 15)
        names = await page.eval_on_selector_all(
            "[data-mirror]", "els => els.map(e => e.dataset.mirror)"
        )
        assert names == ["ap", "eu"]

        cluster.start_all()
        leader = await cluster.wait_leader()
        await wait_page(
            page,
            f"leader node {leader}",
            "document.querySelector('#source [data-field=\"leader\"] [data-value]')"
            f".dataset.value === '{leader}'",
            30,
        )
        assert await page.locator('#source tr[data-role="unreachable"]').count() == 0
        assert page.errors == []
