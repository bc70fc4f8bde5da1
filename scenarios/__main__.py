"""`python -m scenarios list|run NAME|FILE [--out DIR] [--scale F]`: what `mirrorfs scenario`
runs (cli/ sits below scenarios/ and never imports it, so the command starts this module).
Exit 1 when a check fails, 2 for a scenario file that does not parse."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from cli.logs import LogFormat, LogLevel, setup_logging
from scenarios.model import Scenario, ScenarioError, load, resolve, standard
from scenarios.report import write_report
from scenarios.runner import MUTATIONS, Result, Run


async def run_scenario(scenario: Scenario, out: Path, *, mutation: str | None = None) -> Result:
    """Run, check, and write the report under `out` (scenarios/report.py)."""
    result = await Run(scenario, out / "work", mutation=mutation).run()
    write_report(result, out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mirrorfs scenario")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the standard scenarios")
    run = sub.add_parser("run", help="run a scenario and check it")
    run.add_argument("scenario", help="a standard scenario's name or a TOML file")
    run.add_argument("--out", type=Path, default=None, help="report directory")
    run.add_argument("--scale", type=float, default=1.0, help="multiply every duration")
    run.add_argument("--mutation", choices=MUTATIONS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup_logging(LogLevel.WARNING, LogFormat.AUTO)
    try:
        if args.cmd == "list":
            for name, path in standard().items():
                print(f"{name:24} {load(path).description}")
            return 0
        scenario = load(resolve(args.scenario)).scaled(args.scale)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix=f"scenario-{scenario.name}-"))
    result = asyncio.run(run_scenario(scenario, out, mutation=args.mutation))
    verdict = "passed" if result.passed else f"FAILED ({len(result.violations)} violation(s))"
    print(f"scenario {scenario.name}: {verdict}; report {out / 'report.md'}")
    for v in result.violations[:20]:
        print(f"  {v}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
