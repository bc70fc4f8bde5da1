"""A scenario run's report: `report.md` with the verdict and figures, and PNG plots.

Plots: lag over time per mirror (the daemon's `lag_seconds`), pending blocks over time, read
latency by where the bytes came from (the reader's ReadCounters: the mirror bucket, the source
bucket, both, or none for an empty file), and the source bucket's egress to readers.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from scenarios.runner import Result


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def _series_plot(result: Result, out: Path, attr: str, ylabel: str, name: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    by: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in result.samples:
        v = getattr(s, attr)
        if v is not None:
            by[s.mirror].append((s.t, float(v)))
    for mirror, points in sorted(by.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], ".-", label=mirror)
    for t, text in result.events:
        if "workload" not in text:
            ax.axvline(t, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("s since the workload started")
    ax.set_ylabel(ylabel)
    if by:
        ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _latency_plot(result: Result, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    by: dict[str, list[float]] = defaultdict(list)
    for r in result.reads:
        by[r.came_from].append(r.latency_s * 1000)
    labels = sorted(by)
    if labels:
        ax.boxplot([by[k] for k in labels], tick_labels=labels)
    ax.set_ylabel("read latency (ms)")
    ax.set_xlabel("where the bytes came from")
    fig.tight_layout()
    name = "read_latency.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _egress_plot(result: Result, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([t for t, _ in result.egress], [b / 2**20 for _, b in result.egress], ".-")
    ax.set_xlabel("s since the workload started")
    ax.set_ylabel("source bucket → readers (MiB, cumulative)")
    fig.tight_layout()
    name = "source_egress.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def write_report(result: Result, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sc = result.scenario
    plots = [
        _series_plot(result, out, "lag_s", "lag (s)", "lag.png"),
        _series_plot(result, out, "pending", "blocks pending", "pending.png"),
        _latency_plot(result, out),
        _egress_plot(result, out),
    ]
    h = result.history
    ok = [r for r in h.reads if r.version is not None]
    lines = [
        f"# Scenario {sc.name}: {'PASSED' if result.passed else 'FAILED'}",
        "",
        sc.description,
        "",
        f"- duration {sc.duration_s:.1f} s, {sc.topology.source_nodes} source node(s), "
        f"mirrors {', '.join(sc.topology.mirrors)}",
        f"- writes: {len(h.writes)}; reads: {len(ok)} served, "
        f"{sum(1 for r in ok if r.stale)} flagged stale, "
        f"{sum(1 for r in h.reads if r.error)} refused or not found",
    ]
    lags: dict[str, list[float]] = defaultdict(list)
    for s in result.samples:
        if s.lag_s is not None:
            lags[s.mirror].append(s.lag_s)
    for mirror, values in sorted(lags.items()):
        lines.append(
            f"- {mirror} lag: median {statistics.median(values):.3f} s, "
            f"p99 {_pct(values, 99):.3f} s, max {max(values):.3f} s"
        )
    by: dict[str, list[float]] = defaultdict(list)
    for r in result.reads:
        by[r.came_from].append(r.latency_s * 1000)
    for where, values in sorted(by.items()):
        lines.append(
            f"- reads from {where}: {len(values)}, p50 {_pct(values, 50):.1f} ms, "
            f"p99 {_pct(values, 99):.1f} ms"
        )
    if result.egress:
        lines.append(f"- source bucket egress to readers: {result.egress[-1][1] / 2**20:.2f} MiB")
    for key, value in sorted(result.figures.items()):
        if key != "traceback":
            lines.append(f"- {key}: {value}")
    lines += ["", "## Violations", ""]
    lines += [f"- {v}" for v in result.violations] or ["none"]
    if "traceback" in result.figures:
        lines += ["", "```", result.figures["traceback"], "```"]
    lines += ["", "## Timeline", ""]
    lines += [f"- {t:7.2f} s  {text}" for t, text in result.events]
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
