"""The machine's load while a benchmark figure is measured, so a reader can tell a slow figure
from a busy machine: load average before and after, system-wide CPU %, and the CPU % of the
processes involved (their whole trees, sampled while they run, so short-lived children count).

    with LoadMeter(pids) as load: ...measure...
    load.line()  # "load 1.9 -> 2.4; machine CPU 87%; processes: weed 35%, mirror run 41%"
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


@dataclass
class Load:
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    machine_cpu_pct: float = 0.0
    seconds: float = 0.0
    # label -> CPU % of one core over the interval (100 = one core busy)
    processes: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        procs = ", ".join(f"{k} {v:.0f}%" for k, v in sorted(self.processes.items()))
        return (
            f"load avg (1 min) {self.load_before[0]:.2f} -> {self.load_after[0]:.2f};"
            f" machine CPU {self.machine_cpu_pct:.0f}% of {psutil.cpu_count()} cores"
            f" over {self.seconds:.0f} s; processes (% of one core): {procs or 'none'}"
        )


class LoadMeter:
    """Measures from `__enter__` to `__exit__`. `roots` maps a label to a pid whose process
    tree is metered (descendants found while sampling are added to the label)."""

    def __init__(self, roots: dict[str, int] | Callable[[], dict[str, int]] | None = None) -> None:
        # A callable is asked at every sample: a process restarted meanwhile is metered too.
        self.roots = roots if callable(roots) else dict(roots or {})
        self.load = Load()
        # (label, pid, create_time) -> (cpu seconds at first sight, latest cpu seconds)
        self._cpu: dict[tuple[str, int, float], tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def _sample(self, first: bool = False) -> None:
        roots = self.roots() if callable(self.roots) else self.roots
        for label, pid in list(roots.items()):
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        key = (label, p.pid, p.create_time())
                except psutil.Error:
                    continue
                used = t.user + t.system
                # A process first seen after the start counts from its birth (0 s).
                base = used if first else 0.0
                self._cpu[key] = (self._cpu.get(key, (base, used))[0], used)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self._sample()

    def __enter__(self) -> LoadMeter:
        self.load.load_before = os.getloadavg()
        psutil.cpu_percent(None)
        self._start = time.perf_counter()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, name="load-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        secs = max(1e-9, time.perf_counter() - self._start)
        self.load.seconds = secs
        self.load.machine_cpu_pct = psutil.cpu_percent(None)
        self.load.load_after = os.getloadavg()
        per: dict[str, float] = {}
        for (label, _, _), (first, last) in self._cpu.items():
            per[label] = per.get(label, 0.0) + (last - first)
        self.load.processes = {k: 100 * v / secs for k, v in per.items()}
