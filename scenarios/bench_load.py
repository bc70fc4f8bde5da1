"""The machine's load while a benchmark figure is measured, so a reader can tell a slow figure
from a busy machine: load average before and after, system-wide CPU %, and the CPU % of the
processes involved (their whole trees, sampled while they run, so short-lived children count).

A `LoadTimeline` samples in a thread; `window(t0, t1)` gives the load of any stretch of it (a
benchmark run as a subprocess prints figure after figure: each gets the stretch since the
previous one). `LoadMeter` is the one-stretch form:

    with LoadMeter(pids) as meter: ...measure...
    meter.load.line()  # "load avg 1.90 -> 2.40; machine CPU 87% of 2 cores ...; weed A 35%, ..."
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import psutil

SAMPLE_INTERVAL_S = 0.5

Roots = dict[str, int] | Callable[[], dict[str, int]]


@dataclass
class Load:
    load_before: float = 0.0  # 1-minute load average
    load_after: float = 0.0
    machine_cpu_pct: float = 0.0  # of all cores
    seconds: float = 0.0
    # label -> CPU % of one core over the stretch (100 = one core busy)
    processes: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        procs = ", ".join(f"{k} {v:.0f}%" for k, v in sorted(self.processes.items()))
        return (
            f"load avg (1 min) {self.load_before:.2f} -> {self.load_after:.2f};"
            f" machine CPU {self.machine_cpu_pct:.0f}% of {psutil.cpu_count()} cores"
            f" over {self.seconds:.1f} s; processes (% of one core): {procs or 'none'}"
        )


@dataclass
class _Sample:
    t: float
    load1: float
    busy: float  # machine CPU seconds not idle
    total: float
    procs: dict[tuple[str, int, float], float]  # (label, pid, create time) -> CPU seconds


class LoadTimeline:
    """Samples every SAMPLE_INTERVAL_S from `start()` to `stop()`. `roots` maps a label to a
    pid whose process tree is metered; a callable is asked at every sample, so a process
    restarted meanwhile is metered too. A label in `flat` meters its process alone (the
    benchmark, whose children are the systems under test, metered under their own labels)."""

    def __init__(self, roots: Roots | None = None, *, flat: frozenset[str] = frozenset()) -> None:
        self.roots: Roots = roots if roots is not None else {}
        self.flat = flat  # labels metered without their children (the benchmark itself)
        self.samples: list[_Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, label: str, pid: int) -> None:
        assert isinstance(self.roots, dict)
        self.roots[label] = pid

    def sample(self) -> None:
        roots = self.roots() if callable(self.roots) else dict(self.roots)
        procs: dict[tuple[str, int, float], float] = {}
        for label, pid in roots.items():
            try:
                root = psutil.Process(pid)
                tree = [root] if label in self.flat else [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in tree:
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        procs[(label, p.pid, p.create_time())] = t.user + t.system
                except psutil.Error:
                    continue
        cpu = psutil.cpu_times()
        idle = cpu.idle + getattr(cpu, "iowait", 0.0)
        total = sum(cpu)
        with self._lock:
            self.samples.append(
                _Sample(time.perf_counter(), os.getloadavg()[0], total - idle, total, procs)
            )

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def start(self) -> LoadTimeline:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="load-timeline", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def window(self, t0: float, t1: float) -> Load:
        """The load between perf_counter times t0 and t1 (the nearest samples around them)."""
        with self._lock:
            samples = list(self.samples)
        before = [s for s in samples if s.t <= t0] or samples[:1]
        after = [s for s in samples if s.t >= t1] or samples[-1:]
        a, b = before[-1], after[0]
        secs = max(1e-9, b.t - a.t)
        # Each process's last reading in the stretch, less its reading at the start (0 if it
        # was born later); a process that exited meanwhile counts up to its last sample.
        last: dict[tuple[str, int, float], float] = {}
        for x in samples:
            if a.t <= x.t <= b.t:
                last.update(x.procs)
        per: dict[str, float] = {}
        for key, used in last.items():
            per[key[0]] = per.get(key[0], 0.0) + used - a.procs.get(key, 0.0)
        total = max(1e-9, b.total - a.total)
        return Load(
            load_before=a.load1,
            load_after=b.load1,
            machine_cpu_pct=100 * (b.busy - a.busy) / total,
            seconds=secs,
            processes={k: 100 * max(0.0, v) / secs for k, v in per.items()},
        )


class LoadMeter:
    """The load from `__enter__` to `__exit__`, in `.load`."""

    def __init__(self, roots: Roots | None = None, *, flat: frozenset[str] = frozenset()) -> None:
        self.timeline = LoadTimeline(roots, flat=flat)
        self.load = Load()

    def __enter__(self) -> LoadMeter:
        self.timeline.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.timeline.stop()
        s = self.timeline.samples
        self.load = self.timeline.window(s[0].t, s[-1].t)
