"""The volume's topology file, `mirrorfs.toml`: one source region, its nodes, and its mirrors.

Every command finds the volume through it (`--config` or `MIRRORFS_CONFIG`). Relative paths in it
are relative to the file, so a demo directory can be moved whole. Unknown keys are errors: a
typo must not silently fall back to a default. Errors name the file and the key.

The file holds secrets (the admin token, the Raft `secret` that also signs every token, the
mirrors' own tokens, DSN passwords): it is written 0600, and loading one that group or others
may read is a warning (not an error: the operator may have reasons, but should know).
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from volume.errors import ConfigError
from volume.tokens import TokenVerifier

log = structlog.get_logger(__name__)

CONFIG_ENV = "MIRRORFS_CONFIG"
CONFIG_NAME = "mirrorfs.toml"
DEFAULT_TICK_INTERVAL_S = 0.2
DEFAULT_RETENTION_MIN_S = 2 * 3600.0
DEFAULT_RETENTION_MIN_RECORDS = 100_000
DEFAULT_WINDOW_S = 5.0
DEFAULT_COPY_CONCURRENCY = 16
CONFIG_MODE = 0o600  # owner read/write only: the file holds the volume's secrets
# How long the source remembers a committed request, so a retry gets the first answer instead
# of applying it twice (a retry after it is refused). It must outlast every client's retry
# budget (volume/client.py DEFAULT_RETRY_S, 30 s) with room for clock skew and stalls; memory
# costs ~150 bytes per request remembered (changelog/raft/dedup.py), ~90 MB at 1000 requests/s.
DEFAULT_DEDUP_WINDOW_S = 600.0
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
    # See DEFAULT_DEDUP_WINDOW_S; keep it below retention_min_s, since a retry's answer is
    # rebuilt from the changelog records of the first attempt.
    dedup_window_s: float = Field(default=DEFAULT_DEDUP_WINDOW_S, gt=0)

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
    # A put from this region also PUTs its blocks into this region's bucket and marks them
    # copied once the replica shows the write: the copy is there at once and the replicator
    # never fetches them back across the boundary (DESIGN section 6, "Write").
    copy_writes: bool = False
    token: str = Field(
        default="",
        description="this mirror's own `mirror:NAME` token (minted by `mirror create`) for the "
        "source API; empty (a mirror created before scopes): the volume's admin token",
    )
    # The region daemon's block copier (`mirror worker` takes its own flags, defaulting to
    # these). 16 copies in flight keep one S3 bucket busy from one core (bench_replication).
    copy_concurrency: int = Field(default=DEFAULT_COPY_CONCURRENCY, ge=1, le=1024)
    copy_bandwidth_bytes_per_s: float = Field(
        default=0, ge=0, description="cap on the copier's source reads; 0: no cap"
    )
    # "server": the mirror's endpoint copies each block out of the source bucket itself
    # (CopyObject) and the copier reads it back to check it; for one S3 service across regions,
    # with credentials that may read the source bucket. "client": GET + PUT through the copier.
    copy_mode: Literal["client", "server"] = "client"


class VolumeConfig(_Strict):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]*$")
    # Minted by `init` (the name plus random hex), so two volumes that share a name are still
    # told apart: a mirror's database is stamped with it. "" in files written before it existed.
    id: str = Field(default="", max_length=128, pattern=r"^([a-z0-9][a-z0-9-]*)?$")
    token: str = Field(min_length=16, description="the admin token of every HTTP API")
    secret: str = Field(
        min_length=16, description="Raft password (encrypts the peer port); signs every token"
    )
    source: SourceConfig
    mirrors: dict[str, MirrorConfig] = Field(default_factory=dict)
    path: Path | None = Field(default=None, exclude=True)
    # Keys whose value came from the environment (ENV_SECRETS), with the file's own value:
    # writing the config back keeps the file's, so a secret given by env never lands in it.
    from_env: dict[str, str] = Field(default_factory=dict, exclude=True)

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

    def token_verifier(self) -> TokenVerifier:
        """What every HTTP service of the volume checks bearer tokens with."""
        return TokenVerifier.from_secret(self.secret, admin_token=self.token)

    def mirror_region(self, name: str) -> MirrorRegion:
        """Everything a mirror region's processes need, resolved once (ConfigError if there
        is no such mirror): pass this value down instead of the file and a name."""
        m = self.mirror(name)
        return MirrorRegion(
            name=name,
            volume=self.name,
            volume_id=self.id,
            token=m.token or self.token,
            verifier=self.token_verifier(),
            source_api_urls=tuple(self.api_urls),
            source_bucket=self.source.bucket,
            gc_grace_s=self.source.gc_grace_s,
            bucket=m.bucket,
            api=m.api,
            data_dir=self.resolve(m.data_dir),
            dsn=m.dsn,
            window_s=m.window_s,
            copy_concurrency=m.copy_concurrency,
            copy_bandwidth_bytes_per_s=m.copy_bandwidth_bytes_per_s,
            copy_writes=m.copy_writes,
            copy_mode=m.copy_mode,
        )


@dataclass(frozen=True)
class MirrorRegion:
    """One mirror region as its daemon, workers and operator verbs see it."""

    name: str
    volume: str
    volume_id: str  # "" for a volume whose config predates volume ids
    token: str = field(repr=False)  # this mirror's own token, for the source API
    verifier: TokenVerifier = field(repr=False)  # for the region's own status API
    source_api_urls: tuple[str, ...]
    source_bucket: str
    gc_grace_s: float
    bucket: str
    api: str
    data_dir: Path  # absolute
    dsn: str  # "" = the embedded PostgreSQL under data_dir/pg
    window_s: float
    copy_concurrency: int = DEFAULT_COPY_CONCURRENCY
    copy_bandwidth_bytes_per_s: float = 0.0  # 0: no cap
    copy_writes: bool = False
    copy_mode: str = "client"  # or "server" (see MirrorConfig.copy_mode)

    @property
    def embedded_pg_dir(self) -> Path:
        return self.data_dir / "pg"


def new_volume_id(name: str) -> str:
    """A fresh volume id: the name plus 16 random hex digits."""
    return f"{name}-{secrets.token_hex(8)}"


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


def load_config(
    explicit: str | Path | None = None, *, on_warning: Callable[[str], None] | None = None
) -> VolumeConfig:
    """Read and validate the topology file. Raises ConfigError naming the file and key.

    A file that group or others may read is logged (`config.readable_by_others`) and also
    handed to `on_warning` as one line (the CLI prints it); it still loads."""
    path = find_config_path(explicit)
    warning = readable_by_others(path)
    if warning:
        log.warning("config.readable_by_others", path=str(path), fix=f"chmod 600 {path}")
        if on_warning:
            on_warning(warning)
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
    return with_env_secrets(parse_config(data, path), os.environ)


ENV_SECRETS = {
    "MIRRORFS_TOKEN": "token",
    "MIRRORFS_SECRET": "secret",
    "MIRRORFS_MIRROR_{NAME}_TOKEN": "mirrors.{name}.token",
    "MIRRORFS_MIRROR_{NAME}_DSN": "mirrors.{name}.dsn",
}


def with_env_secrets(cfg: VolumeConfig, environ: Mapping[str, str]) -> VolumeConfig:
    """The config with the secrets the environment sets (ENV_SECRETS; {NAME} is the mirror's
    name upper-cased, '-' as '_'), so a deployment can keep them out of the file. An empty
    variable is ignored. Raises ConfigError naming the variable for a value that fails the
    key's checks."""
    from_env: dict[str, str] = {}
    top: dict[str, Any] = {}
    for var, key in (("MIRRORFS_TOKEN", "token"), ("MIRRORFS_SECRET", "secret")):
        if environ.get(var):
            top[key], from_env[key] = environ[var], getattr(cfg, key)
    mirrors = dict(cfg.mirrors)
    for name, m in cfg.mirrors.items():
        env_name = name.upper().replace("-", "_")
        changes: dict[str, str] = {}
        for field_name in ("token", "dsn"):
            value = environ.get(f"MIRRORFS_MIRROR_{env_name}_{field_name.upper()}")
            if value:
                changes[field_name] = value
                from_env[f"mirrors.{name}.{field_name}"] = getattr(m, field_name)
        if changes:
            mirrors[name] = m.model_copy(update=changes)
    if not from_env:
        return cfg
    data = {**cfg.model_dump(), **top, "mirrors": {k: v.model_dump() for k, v in mirrors.items()}}
    try:
        checked = VolumeConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{first['msg']} (set by the environment)", key=key) from None
    return checked.model_copy(update={"path": cfg.path, "from_env": from_env})


def dump_config(cfg: VolumeConfig) -> str:
    """TOML text of a config (the writer side of `init` and `mirror create`). Values that came
    from the environment are written as the file had them."""
    if cfg.from_env:
        cfg = _file_values(cfg)
    lines = [f"name = {_q(cfg.name)}"]
    if cfg.id:
        lines.append(f"id = {_q(cfg.id)}")
    lines += [
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


def _file_values(cfg: VolumeConfig) -> VolumeConfig:
    top = {k: v for k, v in cfg.from_env.items() if "." not in k}
    mirrors = dict(cfg.mirrors)
    for key, value in cfg.from_env.items():
        if key.startswith("mirrors."):
            _, name, field_name = key.split(".", 2)
            if name in mirrors:
                mirrors[name] = mirrors[name].model_copy(update={field_name: value})
    return cfg.model_copy(update={**top, "mirrors": mirrors, "from_env": {}})


def readable_by_others(path: Path) -> str | None:
    """A one-line warning if group or others may read or write `path`, else None (also when
    it cannot be stat'ed: reading it will say why)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"{path} is mode {mode:04o}: other users may read the volume's tokens and secret; "
        f"fix: chmod 600 {path}"
    )


def write_config(cfg: VolumeConfig, path: Path) -> None:
    """Atomically (re)write the file, mode 0600: a crash leaves the old file or the new one.

    The temporary file is made 0600 before a byte of it is written (fchmod, since a stale tmp
    file left by a crash keeps its old mode through O_CREAT, and a umask can only narrow)."""
    tmp = path.with_suffix(".toml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, CONFIG_MODE)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), CONFIG_MODE)
        f.write(dump_config(cfg))
        f.flush()
        os.fsync(f.fileno())  # the rename must not publish an empty file after a power loss
    os.replace(tmp, path)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _v(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return _q(str(v))
