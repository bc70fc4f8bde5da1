"""The dashboard as a user meets it: `mirrorfs dashboard` as a process, its page in a real
headless Chromium (Debian's, driven by playwright), and what the page shows read off the DOM.

Chromium is Debian's `/usr/bin/chromium` (`.ci/run` installs it); playwright never downloads a
browser of its own here. A missing Chromium fails the test with the fix, never skips it: a
dashboard nobody loaded is a dashboard nobody tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cli.source import free_ports

CHROMIUM = Path("/usr/bin/chromium")
# No background networking: this machine's closed network refuses Chromium's own connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard tests need Debian's chromium "
            "(apt-get install -y chromium; .ci/run installs it)",
            pytrace=False,
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]'", pytrace=False)


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator[Any]:
    """A fresh page in a fresh headless Chromium; `page.errors` collects script errors."""
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: errors.append(msg.text) if msg.type == "error" else None,
            )
            page.errors = errors
            yield page
        finally:
            await browser.close()


class Dashboard:
    """`mirrorfs --config CONFIG dashboard` as a process on a free port, with a known token."""

    def __init__(self, config: Path, log: Path, token: str = "test-dashboard-token-0123456789"):
        self.config = config
        self.log = log
        self.token = token
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def login_url(self) -> str:
        return f"{self.base}/?token={self.token}"

    async def start(self, timeout_s: float = 30.0) -> str:
        """Start it and wait until it answers; returns the URL line it printed."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "--config",
                    str(self.config),
                    "dashboard",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=subprocess.PIPE,
                stderr=out,
                env={
                    **os.environ,
                    "MIRRORFS_LOG": "info",
                    "MIRRORFS_DASHBOARD_TOKEN": self.token,
                },
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.base}/healthz") as resp:
                        if resp.status == 200:
                            return line.decode().strip()
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "the dashboard did not answer"
                await asyncio.sleep(0.1)

    async def snapshot(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(f"{self.base}/api/status") as resp,
        ):
            assert resp.status == 200
            data: dict[str, Any] = orjson.loads(await resp.read())
            return data

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


# --- reading the page ---------------------------------------------------------------------------


def card(name: str) -> str:
    return f'[data-mirror="{name}"]'


async def value(page: Any, selector: str) -> Any:
    """The raw value behind a figure (its `data-value`, JSON), e.g. an applied version."""
    raw = await page.get_attribute(f"{selector} [data-value]", "data-value")
    assert raw is not None, f"no value at {selector}"
    return orjson.loads(raw)


async def mirror_value(page: Any, name: str, field: str) -> Any:
    return await value(page, f'{card(name)} [data-field="{field}"]')


async def mirror_figures(page: Any, name: str, fields: list[str]) -> dict[str, tuple[Any, str]]:
    """{field: (raw value, text shown)} of one card, read in one go (the page refreshes
    between two separate reads)."""
    got = await page.evaluate(
        """([sel, fields]) => Object.fromEntries(fields.map((f) => {
            const el = document.querySelector(`${sel} [data-field="${f}"] [data-value]`);
            return [f, el ? [el.dataset.value, el.textContent] : null];
        }))""",
        [card(name), fields],
    )
    missing = [f for f in fields if got[f] is None]
    assert not missing, f"no {missing} on the card of {name}"
    return {f: (orjson.loads(raw), text) for f, (raw, text) in got.items()}


async def page_round(page: Any) -> tuple[int, int]:
    """(round, started_at_ms) of the collector round the page shows now."""
    got = await page.evaluate(
        "() => [Number(document.body.dataset.round || 0),"
        " Number(document.body.dataset.startedAt || 0)]"
    )
    return int(got[0]), int(got[1])


async def wait_round_after(page: Any, ms: int, timeout_s: float = 10.0) -> None:
    """Until the page shows a round that began asking after `ms` (wall clock, ms)."""
    deadline = time.monotonic() + timeout_s
    while (await page_round(page))[1] <= ms:
        assert time.monotonic() < deadline, f"the page shows no round begun after {ms}"
        await asyncio.sleep(0.1)


async def wait_page(page: Any, what: str, script: str, timeout_s: float = 30.0) -> None:
    """Until `script` (a JS expression over the DOM) is true on the page. Polled from here:
    playwright's own wait_for_function evaluates strings with eval, which the page's CSP
    rightly refuses."""
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(f"() => Boolean({script})"):
        if time.monotonic() > deadline:
            text = await page.inner_text("body")
            raise AssertionError(f"timed out waiting until {what}; the page says:\n{text}")
        await asyncio.sleep(0.1)


def state_is(name: str, state: str) -> str:
    return f"document.querySelector('{card(name)}')?.dataset.state === '{state}'"


def leader_is_not(node: int | None) -> str:
    """JS: the page names a leader, and it is not `node`."""
    return (
        "(() => { const v = document.querySelector('#source [data-field=\"leader\"] [data-value]');"
        f" return v && v.dataset.value !== 'null' && v.dataset.value !== '{node}'; }})()"
    )


async def screenshot(page: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    return path
