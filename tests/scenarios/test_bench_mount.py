"""The mount benchmark runs end to end at its smallest size and prints every figure the suite
(scenarios/bench.py) reads from it: fio and cat, cold, copied and cached, each beside its
baseline, and the safetensors load copied and cached beside the local file. Afterwards no
mount, no process and no scratch directory of its run is left. No performance is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil

from cli.mount import mounted
from scenarios.bench import SUITES

EXPECTED = {
    *(
        f"sequential read through the mount, {state}, {tool}"
        for state in ("cold", "copied", "cached")
        for tool in ("fio", "cat")
    ),
    "safetensors load (safe_open, every tensor) through the mount, copied",
    "safetensors load (safe_open, every tensor) through the mount, cached",
}
BASELINES = {"cold": "raw GET source bucket", "copied": "raw GET mirror bucket"}


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(str(path))]


def processes_naming(path: Path) -> list[str]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        args = p.info["cmdline"] or []
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(str(path) in a for a in args):
            out.append(" ".join(args))
    return out


def test_smallest_run_prints_every_figure_and_leaves_nothing_behind(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "scenarios.bench_mount", "--size", "6MiB"]
    done = subprocess.run(
        [*cmd, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found: dict[str, tuple[float, str, float]] = {}
    for line in done.stdout.splitlines():
        for pat in SUITES["mount"][3]:
            if m := re.search(pat.regex, line):
                g = m.groupdict()
                found[pat.title.format(**g)] = (
                    float(g["v"]),
                    pat.baseline_title.format(**g),
                    float(g["b"]),
                )
    assert set(found) == EXPECTED, done.stdout
    for title, (value, base_title, base) in found.items():
        assert value > 0 and base > 0, (title, value, base)
        state = title.rsplit(", ", 2)[-2] if "sequential" in title else ""
        if state in BASELINES:
            assert base_title == BASELINES[state], title
        elif state == "cached":
            assert base_title == "local file", title
    assert "page cache: dropped before every read" in done.stdout or "NOT dropped" in done.stdout
    assert mounts_under(tmp_path) == []
    assert processes_naming(tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # the run's scratch directory is removed
    assert not mounted(tmp_path)


def test_a_bad_size_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scenarios.bench_mount", "--size", "lots"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: --size:"), done.stderr
    assert "Traceback" not in done.stderr
