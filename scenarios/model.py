"""The scenario file (TOML) as a typed model; errors name the file and the key.

A scenario declares where the regions are (source nodes, mirrors, each mirror's link to the
source), what users do (writers at the source, readers in each mirror with their windows and
policies), what breaks and when (faults on a timeline, in seconds from the workload's start)
and how long everything may take. `scaled(f)` shortens every duration by the same factor, so
CI runs the standard scenarios as short versions of the same story.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STANDARD_DIR = Path(__file__).parent / "standard"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Topology(_Strict):
    source_nodes: int = Field(default=3, ge=1, le=5)
    mirrors: list[str] = Field(min_length=1)
    # file: the source bucket is a local directory (block traffic is not shaped by the links);
    # s3: a SeaweedFS S3 server, reached by each mirror (replicator and readers) through its link
    bucket: str = Field(default="file", pattern="^(file|s3)$")
    tick_interval_s: float = Field(default=0.2, gt=0)


class LinkSpec(_Strict):
    """The link between a mirror region and the source (its daemon and its readers)."""

    latency_ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    bandwidth_mbit: float = Field(default=0.0, ge=0)  # 0: unlimited
    loss: float = Field(default=0.0, ge=0, lt=1)
    reset: float = Field(default=0.0, ge=0, lt=1)


class Sizes(_Strict):
    """File sizes: log-uniform between min and max bytes (many small, some large)."""

    min_bytes: int = Field(default=1000, ge=0)
    max_bytes: int = Field(default=100_000, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Sizes:
        if self.max_bytes < self.min_bytes:
            raise ValueError("max_bytes is below min_bytes")
        return self


class Readers(_Strict):
    mirror: str
    count: int = Field(default=1, ge=0)
    window_s: float = Field(default=1.0, ge=0)
    policy: str = Field(default="source", pattern="^(source|error|serve)$")
    large_file: bool = False  # read the large file (the model-load storm) instead of the others


class Workload(_Strict):
    files: int = Field(default=20, ge=1)
    sizes: Sizes = Sizes()
    write_rate: float = Field(default=5.0, gt=0)  # writes per second, at the source
    large_file_mb: float = Field(default=0.0, ge=0)  # one file this large (0: none)
    large_file_at_s: float = Field(default=0.0, ge=0)  # written then (0: before the workload)
    readers: list[Readers] = []


class FaultKind(StrEnum):
    KILL_LEADER = "kill_leader"  # kill -9 the source leader; restarted after duration_s
    PARTITION = "partition"  # cut a mirror's link for duration_s
    KILL_DAEMON = "kill_daemon"  # kill -9 a mirror's region daemon; restarted after duration_s
    PAUSE = "pause_replication"  # `mirrorfs mirror pause`; resumed after duration_s
    STOP_BUCKET = "stop_bucket"  # kill the source bucket's S3 server; restarted after duration_s
    RESTART_POSTGRES = "restart_postgres"  # stop the mirrors' PostgreSQL for duration_s


class Fault(_Strict):
    at_s: float = Field(ge=0)
    kind: FaultKind
    target: str | None = None  # the mirror (partition, kill_daemon, pause)
    duration_s: float = Field(default=0.0, ge=0)


class Checks(_Strict):
    converge_s: float = Field(default=60.0, gt=0)  # after the workload, for every mirror
    tolerance_s: float = Field(default=0.05, ge=0)  # clock allowance of the staleness check
    min_reads: int = Field(default=1, ge=0)


class Scenario(_Strict):
    name: str
    description: str = ""
    duration_s: float = Field(gt=0)
    time_limit_s: float = Field(gt=0)
    seed: int = 1
    topology: Topology
    links: dict[str, LinkSpec] = {}
    workload: Workload = Workload()
    faults: list[Fault] = []
    checks: Checks = Checks()

    @model_validator(mode="after")
    def _names(self) -> Scenario:
        mirrors = set(self.topology.mirrors)
        for name in self.links:
            if name not in mirrors:
                raise ValueError(f"links.{name}: no such mirror in topology.mirrors")
        for i, r in enumerate(self.workload.readers):
            if r.mirror not in mirrors:
                raise ValueError(f"workload.readers[{i}].mirror {r.mirror!r}: no such mirror")
        for i, f in enumerate(self.faults):
            if f.kind == FaultKind.STOP_BUCKET and self.topology.bucket != "s3":
                raise ValueError(f"faults[{i}]: stop_bucket needs topology.bucket = 's3'")
            # the mirrors share one PostgreSQL server (a database each): its restart hits all
            global_kinds = (
                FaultKind.KILL_LEADER,
                FaultKind.STOP_BUCKET,
                FaultKind.RESTART_POSTGRES,
            )
            if f.kind not in global_kinds and f.target not in mirrors:
                raise ValueError(f"faults[{i}].target {f.target!r}: {f.kind} needs a mirror")
            if f.at_s + f.duration_s > self.duration_s:
                raise ValueError(f"faults[{i}]: ends after the workload (duration_s)")
        return self

    def link(self, mirror: str) -> LinkSpec:
        return self.links.get(mirror, LinkSpec())

    def scaled(self, factor: float) -> Scenario:
        """Every duration times `factor` (the CI versions use factor < 1)."""
        if factor == 1:
            return self
        faults = [
            f.model_copy(update={"at_s": f.at_s * factor, "duration_s": f.duration_s * factor})
            for f in self.faults
        ]
        return self.model_copy(
            update={
                "duration_s": self.duration_s * factor,
                "time_limit_s": self.time_limit_s * factor + 60,
                "faults": faults,
            }
        )


class ScenarioError(ValueError):
    pass


def load(path: Path) -> Scenario:
    """The scenario in `path`; ScenarioError naming the file and the key on any problem."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"{path}: {key}: {e['msg']}")
        raise ScenarioError("\n".join(lines)) from exc


def standard() -> dict[str, Path]:
    """The standard scenarios by name."""
    return {p.stem: p for p in sorted(STANDARD_DIR.glob("*.toml"))}


def resolve(name_or_file: str) -> Path:
    path = Path(name_or_file)
    if path.suffix == ".toml" or path.exists():
        return path
    known = standard()
    if name_or_file not in known:
        raise ScenarioError(f"no scenario {name_or_file!r}; standard: {', '.join(known)}")
    return known[name_or_file]
