"""The dashboard's view of the volume: every source node's and region daemon's /v1/status,
fetched server side with the volume's admin token, and the lag history of each region.

Contract:
- One round every `interval_s`: every node and every region asked at once (their number is the
  config's, so the fan-out is bounded), each with its own timeout, so one dead region never
  delays the others. A round that outruns the interval starts the next one at once.
- The browser never sees a token: it reads `snapshot()`, which holds answers only.
- A region that does not answer is `unreachable` in the snapshot, with the reason, the time it
  was last seen and the version it had then; it recovers on the first round it answers again.
  A 503 with a document is an answer (a degraded region says why), not an outage.
- The config file is read again when its mtime changes, so a `mirror create` made while the
  dashboard runs shows up; a config that no longer loads keeps the last good one (and says so).
- History: one point per round per region, (time, lag seconds, lag versions), kept for
  `history_s`; a round without an answer is a gap (null), not a zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from cli.dashboard.summary import Answer, mirror_view, node_view, overall, source_view
from volume.config import VolumeConfig, load_config
from volume.errors import ChangelogError

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL_S = 1.0
DEFAULT_HISTORY_S = 300.0  # "the last minutes": five of them, one point a second
REQUEST_TIMEOUT_S = 2.0  # under two rounds: a hung daemon shows as unreachable quickly


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class RegionTrack:
    """What the collector remembers of one region between rounds."""

    history: deque[tuple[float, float | None, int | None]]
    last_seen: Answer | None = None


@dataclass
class Collector:
    """Polls the volume (see the module docstring); `run` until `stop`, `snapshot` any time."""

    config_path: Path
    interval_s: float = DEFAULT_INTERVAL_S
    history_s: float = DEFAULT_HISTORY_S
    timeout_s: float = REQUEST_TIMEOUT_S
    cfg: VolumeConfig = field(init=False)
    _mtime: float = field(init=False, default=0.0)
    _config_error: str | None = field(init=False, default=None)
    _tracks: dict[str, RegionTrack] = field(init=False, default_factory=dict)
    _snapshot: dict[str, Any] | None = field(init=False, default=None)
    _rounds: int = field(init=False, default=0)
    _round_done: asyncio.Condition = field(init=False, default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        self.cfg = load_config(self.config_path)  # a bad file at start is the caller's error
        self._mtime = self.config_path.stat().st_mtime

    @property
    def points(self) -> int:
        return max(2, round(self.history_s / self.interval_s))

    def snapshot(self) -> dict[str, Any]:
        """The last round's view (a 'collecting' placeholder before the first round ends)."""
        if self._snapshot is None:
            return {
                "volume": self.cfg.name,
                "collecting": True,
                "interval_s": self.interval_s,
                "history_s": self.history_s,
            }
        return self._snapshot

    async def wait_rounds(self, n: int, timeout_s: float = 30.0) -> None:
        """Until `n` more rounds have ended (tests and the first page load use it)."""
        async with self._round_done:
            target = self._rounds + n
            await asyncio.wait_for(
                self._round_done.wait_for(lambda: self._rounds >= target), timeout_s
            )

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                started = time.monotonic()
                await self.collect(session)
                left = self.interval_s - (time.monotonic() - started)
                if left > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), left)

    # --- one round ----------------------------------------------------------------------------

    async def collect(self, session: aiohttp.ClientSession) -> None:
        self._reload_config()
        started = now_ms()  # every answer of this round was asked for after this
        cfg = self.cfg
        headers = {"Authorization": f"Bearer {cfg.token}"}
        nodes = cfg.source.nodes
        mirrors = sorted(cfg.mirrors.items())
        answers = await asyncio.gather(
            *(fetch(session, n.api, headers) for n in nodes),
            *(fetch(session, m.api, headers) for _, m in mirrors),
        )
        node_answers, mirror_answers = answers[: len(nodes)], answers[len(nodes) :]
        at = now_ms()
        node_rows = [node_view(n.id, n.api, a) for n, a in zip(nodes, node_answers, strict=True)]
        docs = {
            n.id: a.document
            for n, a in zip(nodes, node_answers, strict=True)
            if a.document is not None
        }
        source = source_view(node_rows, docs, at)
        views = []
        for (name, mcfg), answer in zip(mirrors, mirror_answers, strict=True):
            track = self._track(name)
            if answer.document is not None:
                track.last_seen = answer
            view = mirror_view(name, mcfg.api, mcfg.window_s, answer, track.last_seen)
            track.history.append((at / 1000, view["lag_seconds"], view["lag_versions"]))
            view["history"] = _columns(track.history)
            views.append(view)
        for gone in set(self._tracks) - {name for name, _ in mirrors}:
            del self._tracks[gone]  # a removed mirror leaves the page
        self._snapshot = {
            "volume": cfg.name,
            "collecting": False,
            "started_at_ms": started,
            "collected_at_ms": at,
            "round": self._rounds + 1,
            "interval_s": self.interval_s,
            "history_s": self.history_s,
            "config_error": self._config_error,
            "summary": overall(source, views),
            "source": source,
            "mirrors": views,
        }
        async with self._round_done:
            self._rounds += 1
            self._round_done.notify_all()

    def _track(self, name: str) -> RegionTrack:
        if name not in self._tracks:
            self._tracks[name] = RegionTrack(deque(maxlen=self.points))
        return self._tracks[name]

    def _reload_config(self) -> None:
        try:
            mtime = self.config_path.stat().st_mtime
        except OSError as exc:
            self._config_error = f"cannot read {self.config_path}: {exc.strerror}"
            return
        if mtime == self._mtime:
            return
        try:
            self.cfg = load_config(self.config_path)
        except ChangelogError as exc:  # keep the last good config; the page says why
            self._config_error = f"{exc.message} (showing the last good config)"
            log.warning("dashboard.config_reload_failed", error=exc.message)
            return
        self._mtime = mtime
        self._config_error = None
        log.info("dashboard.config_reloaded", mirrors=sorted(self.cfg.mirrors))


def _columns(history: deque[tuple[float, float | None, int | None]]) -> dict[str, list[Any]]:
    """The history as columns, the shape the page's chart takes as it is."""
    return {
        "t": [p[0] for p in history],
        "lag_seconds": [p[1] for p in history],
        "lag_versions": [p[2] for p in history],
    }


async def fetch(session: aiohttp.ClientSession, api: str, headers: dict[str, str]) -> Answer:
    """GET {api}/v1/status as an Answer; never raises for what a remote end can do."""
    url = f"{api.rstrip('/')}/v1/status"
    try:
        async with session.get(url, headers=headers) as resp:
            body: Any = None
            with contextlib.suppress(aiohttp.ContentTypeError, ValueError):
                body = await resp.json()
            at = now_ms()
            if isinstance(body, dict) and resp.status in (200, 503) and "error" not in body:
                return Answer(at, document=body, http_status=resp.status)
            return Answer(at, http_status=resp.status, error=_refusal(resp.status, body))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Answer(now_ms(), error=_unreachable(exc))


def _refusal(status: int, body: Any) -> str:
    message = body.get("message") if isinstance(body, dict) else None
    if status in (401, 403):
        return (
            f"refused the dashboard's token ({status}"
            f"{': ' + message if message else ''}): is this the volume's config file?"
        )
    return f"answered {status}{': ' + message if message else ' without a status document'}"


def _unreachable(exc: BaseException) -> str:
    """A short reason an operator reads at a glance (the URL is on the page already)."""
    if isinstance(exc, TimeoutError):
        return "no answer within the timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection closed before an answer"
    return str(exc) or type(exc).__name__
