"""The benchmark suite runs end to end and its report says what the issue asks: each figure, its
baseline from the same run, their ratio, and the machine's load during the figure. A smoke test
of the cheapest suite at --quick sizes, through `mirrorfs bench`; no performance is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROW = re.compile(
    r"^\| objstore \| (?P<title>[^|]+) \| (?P<value>[\d.]+) MiB/s \| (?P<base>[^|]+) \|"
    r" (?P<basev>[\d.]+) MiB/s \| (?P<ratio>[\d.]+) \| (?P<target>[^|]+) \|$"
)


def test_quick_objstore_report_has_figure_baseline_ratio_and_load(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "--quick", "--only", "objstore", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (out / "bench.md").read_text()
    rows = [m for line in report.splitlines() if (m := ROW.match(line))]
    assert {m["title"] for m in rows} == {
        "objstore put throughput (4 MiB blocks)",
        "objstore get throughput (4 MiB blocks)",
    }, report
    for m in rows:
        assert m["base"].startswith("raw aiobotocore"), m.group(0)
        ratio = float(m["value"]) / float(m["basev"])
        assert abs(ratio - float(m["ratio"])) < 0.01 + 0.01 * ratio, m.group(0)
        assert m["target"].strip() == ">= 0.95"
    loads = re.findall(
        r"^  - load: load avg \(1 min\) [\d.]+ -> [\d.]+; machine CPU \d+%.*"
        r"processes \(% of one core\): bench_objstore \(process tree\) \d+%$",
        report,
        flags=re.M,
    )
    assert len(loads) == 2, report  # one per figure
    assert "`python -m scenarios.bench_objstore --blocks 8 --rounds 1 --inflight 4`" in report
