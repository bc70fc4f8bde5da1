"""The benchmark suite (DESIGN §9), one command: every figure beside its baseline measured in the
same run, their ratio, the budget's target, the machine's load while it was measured, and the
command that reproduces it; printed and written as markdown to DIR/bench.md.

    python -m scenarios.bench [--quick] [--only NAME ...] [--out DIR]
    mirrorfs bench ...            (the same)

Suites (NAME): objstore, replication, mirror, client, mount (the benchmarks beside this module,
each run as its own process; a figure's load is the stretch of that run since the previous figure
was printed, or the previous figure's stretch when both were printed together) and filer_sync
(mirrorfs beside SeaweedFS filer.sync, in this process; a figure's load is each of its rounds).
Where the budget states an absolute figure and no baseline can be measured (lag in ms,
records/s), the baseline column says "budget" and holds the target.
`--quick` shrinks every size for a smoke test: its figures say nothing about performance.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scenarios.bench_load import Load, LoadTimeline

REPO = Path(__file__).resolve().parent.parent
# Figures printed this close together were measured in one stretch (a summary at the end).
SAME_PRINT_S = 2.0


@dataclass
class Figure:
    suite: str
    title: str
    value: float
    unit: str
    baseline_title: str
    baseline: float
    target: str  # on the ratio, e.g. ">= 0.80"; "" when the budget says nothing
    command: str
    loads: list[Load] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else math.nan


@dataclass(frozen=True)
class Pattern:
    """A printed line -> a figure: `value` and `baseline` name regex groups of the line (or a
    number for a budget)."""

    regex: str
    title: str
    unit: str
    value: str
    baseline_title: str
    baseline: str | float
    target: str = ""


# Each suite: (module, full arguments, quick arguments, patterns over its output).
SUITES: dict[str, tuple[str, list[str], list[str], list[Pattern]]] = {
    "objstore": (
        "scenarios.bench_objstore",
        [],
        ["--blocks", "8", "--rounds", "1", "--inflight", "4"],
        [
            Pattern(
                r"(?P<verb>put|get): raw aiobotocore\s+(?P<raw>[\d.]+) MiB/s\s+objstore\s+"
                r"(?P<lay>[\d.]+) MiB/s",
                "objstore {verb} throughput (4 MiB blocks)",
                "MiB/s",
                "lay",
                "raw aiobotocore {verb}",
                "raw",
                ">= 0.95",
            )
        ],
    ),
    "replication": (
        "scenarios.bench_replication",
        [],
        ["--blocks", "8", "--rounds", "1", "--concurrency", "4"],
        [
            Pattern(
                r"^\s+replicator: p50\s+(?P<v>[\d.]+) ms",
                "new 4 MiB block: commit -> readable in mirror, p50",
                "ms",
                "v",
                "one direct GET+PUT, p50",
                "direct",
                "<= 2",
            ),
            Pattern(r"^\s+direct GET\+PUT: p50\s+(?P<direct>[\d.]+) ms", "", "", "", "", "", ""),
            Pattern(
                r"^\s+replicator\s+(?P<v>[\d.]+) MiB/s\s+(?P<r>[\d.]+) x aiobotocore",
                "bulk block copy, replicator",
                "MiB/s",
                "v",
                "plain parallel aiobotocore GET+PUT",
                "plain",
                ">= 0.80",
            ),
            Pattern(r"^\s+aiobotocore GET\+PUT\s+(?P<plain>[\d.]+) MiB/s", "", "", "", "", ""),
            Pattern(r"^\s+s5cmd via tmpfs\s+(?P<s5>[\d.]+) MiB/s", "", "", "", "", "", ""),
        ],
    ),
    "mirror": (
        "scenarios.bench_mirror",
        [],
        ["--backlog", "2000", "--inodes", "2000"],
        [
            Pattern(
                r"lag at\s+(?P<rate>\d+) ops/s: p50\s+(?P<p50>[\d.]+) ms\s+p99\s+(?P<p99>[\d.]+)",
                "changelog lag p99, commit -> replica, at {rate} ops/s",
                "ms",
                "p99",
                "budget",
                50.0,
                "<= 1 (p99 <= 50 ms)",
            ),
            Pattern(
                r"catch-up:\s+(?P<v>[\d.]+) records/s",
                "mirror catch-up apply rate",
                "records/s",
                "v",
                "budget",
                10_000.0,
                ">= 1",
            ),
            Pattern(
                r"create:\s+mirror create of (?P<n>\d+) inodes in (?P<v>[\d.]+)s",
                "mirror create (snapshot + load) of {n} inodes",
                "s",
                "v",
                "budget (60 s per 1M inodes, scaled)",
                "budget_create",
                "<= 1",
            ),
        ],
    ),
    "client": (
        "scenarios.bench_client",
        [],
        [
            "--size-mib",
            "16",
            "--rounds",
            "1",
            "--ttfb-samples",
            "2",
            "--storm-readers",
            "2",
            "--storm-size-mib",
            "8",
        ],
        [
            Pattern(r"^\s+raw GET, source bucket\s+(?P<rs>[\d.]+) MiB/s", "", "", "", "", ""),
            Pattern(
                r"^\s+client, not copied \(fallback\)\s+(?P<v>[\d.]+) MiB/s",
                "sequential read through the client, not copied (fallback)",
                "MiB/s",
                "v",
                "raw parallel GET, source bucket",
                "rs",
                ">= 0.80",
            ),
            Pattern(r"^\s+raw GET, mirror bucket\s+(?P<rm>[\d.]+) MiB/s", "", "", "", "", ""),
            Pattern(
                r"^\s+client, copied\s+(?P<v>[\d.]+) MiB/s",
                "sequential read through the client, copied",
                "MiB/s",
                "v",
                "raw parallel GET, mirror bucket",
                "rm",
                ">= 0.80",
            ),
            Pattern(
                r"source bytes served / file size: (?P<v>[\d.]+)",
                "model-load storm: source bytes served",
                "x file",
                "v",
                "the file's size",
                1.0,
                "<= 1.25",
            ),
        ],
    ),
    "mount": (
        "scenarios.bench_mount",
        [],
        ["--quick"],
        [
            Pattern(
                r"^(?P<state>cold|copied|cached) (?P<tool>fio|cat): mount\s+(?P<v>[\d.]+) MiB/s"
                r"\s+(?P<base>raw GET source bucket|raw GET mirror bucket|local file)"
                r"\s+(?P<b>[\d.]+) MiB/s",
                "sequential read through the mount, {state}, {tool}",
                "MiB/s",
                "v",
                "{base}",
                "b",
                ">= 0.80",
            ),
            Pattern(
                r"^safetensors load (?P<state>copied|cached): mount\s+(?P<v>[\d.]+) s"
                r"\s+local disk\s+(?P<b>[\d.]+) s",
                "safetensors load (safe_open, every tensor) through the mount, {state}",
                "s",
                "v",
                "the same file on local disk",
                "b",
            ),
        ],
    ),
}
FILER_SYNC = "filer_sync"
ALL = [*SUITES, FILER_SYNC]


def command_line(module: str, args: list[str]) -> str:
    return " ".join(["python", "-m", module, *args])


def run_suite(name: str, quick: bool, log: Callable[[str], None]) -> list[Figure]:
    """Runs one benchmark module as a process, its output line by line with arrival times;
    each pattern that matches makes a figure whose load is the stretch since the last one."""
    module, full, small, patterns = SUITES[name]
    args = small if quick else full
    cmd = command_line(module, args)
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    timeline = LoadTimeline({module.rsplit(".", 1)[1] + " (process tree)": proc.pid}).start()
    numbers: dict[str, float] = {}
    found: list[tuple[Pattern, dict[str, str], float, float]] = []
    since = time.perf_counter()
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter()
            log(f"  [{name}] {line.rstrip()}")
            tail = [*tail[-40:], line]
            for pat in patterns:
                m = re.search(pat.regex, line)
                if m is None:
                    continue
                groups = m.groupdict()
                numbers.update({k: float(v) for k, v in groups.items() if _number(v)})
                if pat.title:  # a line only read for its numbers ends no stretch
                    if found and now - found[-1][3] < SAME_PRINT_S:
                        since = found[-1][2]  # printed together: measured in one stretch
                    found.append((pat, groups, since, now))
                    since = now
                break
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        timeline.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited with {proc.returncode}:\n{''.join(tail)}")
    if "n" in numbers:
        numbers["budget_create"] = 60.0 * numbers["n"] / 1_000_000
    figures = []
    for pat, groups, t0, t1 in found:
        local = {**numbers, **{k: float(v) for k, v in groups.items() if _number(v)}}
        baseline = pat.baseline if isinstance(pat.baseline, float) else local[pat.baseline]
        figures.append(
            Figure(
                suite=name,
                title=pat.title.format(**groups),
                value=local[pat.value],
                unit=pat.unit,
                baseline_title=pat.baseline_title.format(**groups),
                baseline=baseline,
                target=pat.target,
                command=cmd,
                loads=[timeline.window(t0, t1)],
            )
        )
    return figures


def _number(v: str | None) -> bool:
    return v is not None and re.fullmatch(r"[\d.]+", v) is not None


def run_filer_sync(quick: bool) -> list[Figure]:
    from scenarios import bench_filer_sync as fs

    if quick:
        argv = ["--seconds", "2", "--rounds", "1", "--backlog-files", "2", "--outage-files", "20"]
        argv += ["--nodes", "1"]
    else:
        argv = []
    args = fs.parser().parse_args(argv)
    figs = fs.run(args)
    cmd = command_line("scenarios.bench_filer_sync", argv)
    out = []
    for key, title, unit, m, f, target in fs.summary(figs):
        loads = figs.loads.get(fs.load_key(key), [])
        base = "filer.sync, same run"
        out.append(Figure(FILER_SYNC, f"{title}, mirrorfs", m, unit, base, f, target, cmd, loads))
    return out


def render(figures: list[Figure], notes: list[str], argv: list[str]) -> str:
    lines = [
        "# mirrorfs benchmark report",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {os.cpu_count()} cores:"
        f" `python -m scenarios.bench {' '.join(argv)}`.",
        "Each figure is beside its baseline from the same run; ratio = figure / baseline;"
        " the target is the DESIGN §9 budget on the ratio.",
        "",
        "| suite | figure | value | baseline | baseline value | ratio | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        lines.append(
            f"| {f.suite} | {f.title} | {f.value:.2f} {f.unit} | {f.baseline_title} |"
            f" {f.baseline:.2f} {f.unit} | {f.ratio:.2f} | {f.target or '-'} |"
        )
    lines += ["", "## Load during each figure, and the command that reproduces it", ""]
    for f in figures:
        lines.append(f"- **{f.suite}: {f.title}** — `{f.command}`")
        for i, load in enumerate(f.loads):
            prefix = f"round {i + 1}: " if len(f.loads) > 1 else ""
            lines.append(f"  - load: {prefix}{load.line()}")
        if not f.loads:
            lines.append("  - load: not metered")
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scenarios.bench", description=__doc__.splitlines()[0]
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--only", action="append", choices=ALL, help="run only this suite (repeatable)")
    p.add_argument("--out", type=Path, default=Path("bench-report"), help="report directory")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    figures: list[Figure] = []
    notes: list[str] = []
    failed = False
    for name in args.only or ALL:
        print(f"== {name}", flush=True)
        try:
            if name == FILER_SYNC:
                figures += run_filer_sync(args.quick)
            else:
                figures += run_suite(name, args.quick, lambda s: print(s, flush=True))
        except Exception as exc:  # noqa: BLE001 - one suite's failure is reported, the rest run
            failed = True
            notes.append(f"suite {name} failed: {str(exc).strip()[-1500:]}")
            print(f"suite {name} failed: {exc}", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = render(figures, notes, argv)
    (args.out / "bench.md").write_text(report)
    print(report)
    print(f"report: {args.out / 'bench.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
