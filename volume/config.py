"""The volume's topology file, `mirrorfs.toml`: one source region, its nodes, and its mirrors.

Every command finds the volume through it (`--config` or `MIRRORFS_CONFIG`). Relative paths in it
are relative to the file, so a demo directory can be moved whole. Unknown keys are errors: a
typo must not silently fall back to a default. Errors name the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from volume.errors import ConfigError

CONFIG_ENV = "MIRRORFS_CONFIG"
CONFIG_NAME = "mirrorfs.toml"
DEFAULT_TICK_INTERVAL_S = 0.2
DEFAULT_RETENTION_MIN_S = 2 * 3600.0
DEFAULT_RETENTION_MIN_RECORDS = 100_000
DEFAULT_WINDOW_S = 5.0
DEFAULT_UPLOAD_GRACE_S = 3600.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Strict):
    id: int = Field(ge=1)
    raft: str = Field(description="host:port of the Raft peer port")
    api: str = Field(description="base URL of the node's HTTP API")
    data_dir: str = Field(description="journal, dump and changelog segments of this node")

    @field_validator("raft")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {v!r}")
        return v


class SourceConfig(_Strict):
    bucket: str
    nodes: list[NodeConfig] = Field(min_length=1)
    tick_interval_s: float = Field(default=DEFAULT_TICK_INTERVAL_S, gt=0)
    retention_min_s: float = Field(default=DEFAULT_RETENTION_MIN_S, ge=0)
    retention_min_records: int = Field(default=DEFAULT_RETENTION_MIN_RECORDS, ge=0)
    # A hard cap (0 = none) that wins over mirrors' holds: a mirror offline for days must not
    # grow the source's log without bound; it resyncs from a snapshot when it comes back.
    retention_max_records: int = Field(default=0, ge=0)
    segment_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    gc_grace_s: float = Field(default=3600.0, ge=0)
    # Slice ids a client reserved and never committed expire this long after they were
    # reserved, and the upload sweeper then deletes their blocks (a client that died between
    # upload and commit). It must outlast any one upload-to-commit span: a put commits at least
    # every quarter of it (fallback/writer.py), and a late commit of an expired id is refused.
    # The same age makes a put's abandoned temporary file removable by the next put.
    upload_grace_s: float = Field(default=DEFAULT_UPLOAD_GRACE_S, gt=0)
    compaction_min_entries: int = Field(default=50_000, ge=10)

    @field_validator("nodes")
    @classmethod
    def _unique_ids(cls, nodes: list[NodeConfig]) -> list[NodeConfig]:
        ids = [n.id for n in nodes]
        if sorted(ids) != list(range(1, len(ids) + 1)):
            raise ValueError(f"node ids must be 1..{len(ids)}, got {ids}")
        return nodes


class MirrorConfig(_Strict):
    bucket: str
    api: str = Field(description="base URL of the mirror region's status API")
    data_dir: str
    dsn: str = Field(default="", description="PostgreSQL DSN; empty: an embedded server")
    window_s: float = Field(default=DEFAULT_WINDOW_S, ge=0)


class VolumeConfig(_Strict):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]*$")
    token: str = Field(min_length=16, description="bearer token of every HTTP API")
    secret: str = Field(min_length=16, description="Raft password: encrypts the peer port")
    source: SourceConfig
    mirrors: dict[str, MirrorConfig] = Field(default_factory=dict)
    path: Path | None = Field(default=None, exclude=True)

    def resolve(self, p: str) -> Path:
        """A path from the file, made absolute against the file's directory."""
        base = self.path.parent if self.path else Path.cwd()
        return (base / p).resolve()

    def node(self, node_id: int) -> NodeConfig:
        for n in self.source.nodes:
            if n.id == node_id:
                return n
        raise ConfigError(
            f"no node {node_id}; nodes are 1..{len(self.source.nodes)}",
            path=str(self.path),
            key="source.nodes",
        )

    def mirror(self, name: str) -> MirrorConfig:
        try:
            return self.mirrors[name]
        except KeyError:
            known = ", ".join(sorted(self.mirrors)) or "none"
            raise ConfigError(
                f"no mirror named {name!r} (known: {known})", path=str(self.path), key="mirrors"
            ) from None

    @property
    def api_urls(self) -> list[str]:
        return [n.api for n in self.source.nodes]

    def mirror_region(self, name: str) -> MirrorRegion:
        """Everything a mirror region's processes need, resolved once (ConfigError if there
        is no such mirror): pass this value down instead of the file and a name."""
        m = self.mirror(name)
        return MirrorRegion(
            name=name,
            volume=self.name,
            token=self.token,
            source_api_urls=tuple(self.api_urls),
            source_bucket=self.source.bucket,
            gc_grace_s=self.source.gc_grace_s,
            bucket=m.bucket,
            api=m.api,
            data_dir=self.resolve(m.data_dir),
            dsn=m.dsn,
            window_s=m.window_s,
        )


@dataclass(frozen=True)
class MirrorRegion:
    """One mirror region as its daemon, workers and operator verbs see it."""

    name: str
    volume: str
    token: str
    source_api_urls: tuple[str, ...]
    source_bucket: str
    gc_grace_s: float
    bucket: str
    api: str
    data_dir: Path  # absolute
    dsn: str  # "" = the embedded PostgreSQL under data_dir/pg
    window_s: float

    @property
    def embedded_pg_dir(self) -> Path:
        return self.data_dir / "pg"


def find_config_path(explicit: str | Path | None) -> Path:
    """`--config`, else $MIRRORFS_CONFIG, else ./mirrorfs.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path.cwd() / CONFIG_NAME


def parse_config(data: dict[str, Any], path: Path | None = None) -> VolumeConfig:
    try:
        cfg = VolumeConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(
            f"{first['msg']}{more}", path=str(path) if path else None, key=key
        ) from None
    return cfg.model_copy(update={"path": path.resolve() if path else None})


def load_config(explicit: str | Path | None = None) -> VolumeConfig:
    """Read and validate the topology file. Raises ConfigError naming the file and key."""
    path = find_config_path(explicit)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "config file not found; run `mirrorfs init DIR` or pass --config",
            path=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(path)) from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(path)) from None
    return parse_config(data, path)


def dump_config(cfg: VolumeConfig) -> str:
    """TOML text of a config (the writer side of `init` and `mirror create`)."""
    lines = [
        f"name = {_q(cfg.name)}",
        f"token = {_q(cfg.token)}",
        f"secret = {_q(cfg.secret)}",
        "",
        "[source]",
    ]
    src = cfg.source.model_dump(exclude={"nodes"})
    lines += [f"{k} = {_v(v)}" for k, v in src.items()]
    for node in cfg.source.nodes:
        lines += ["", "[[source.nodes]]"]
        lines += [f"{k} = {_v(v)}" for k, v in node.model_dump().items()]
    for name, mirror in sorted(cfg.mirrors.items()):
        lines += ["", f"[mirrors.{_q(name)}]"]
        lines += [f"{k} = {_v(v)}" for k, v in mirror.model_dump().items()]
    return "\n".join(lines) + "\n"


def write_config(cfg: VolumeConfig, path: Path) -> None:
    """Atomically (re)write the file: a crash leaves the old file or the new one."""
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(dump_config(cfg))
    os.replace(tmp, path)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _v(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return _q(str(v))
