"""Every knob lives in mirrorfs.toml and the README's table; secrets may come from the env
without ever being written into the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cli.source import new_volume
from mirror import ReplicatorConfig
from volume.config import (
    ENV_SECRETS,
    MirrorConfig,
    NodeConfig,
    SourceConfig,
    VolumeConfig,
    load_config,
    write_config,
)
from volume.errors import ConfigError

README = Path(__file__).parents[2] / "README.md"


def volume_with_mirror(tmp_path: Path) -> Path:
    cfg = new_volume(tmp_path, nodes=1, bucket=None, name="v")
    eu = MirrorConfig(
        bucket="file:///tmp/eu",
        api="http://127.0.0.1:1",
        data_dir="mirrors/eu",
        dsn="postgresql://eu:filepw@db/eu",
        copy_concurrency=4,
        copy_bandwidth_bytes_per_s=1e6,
        copy_mode="server",
    )
    path = tmp_path / "mirrorfs.toml"
    write_config(cfg.model_copy(update={"mirrors": {"eu-west": eu}}), path)
    return path


def test_secrets_from_the_environment_are_used_and_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = volume_with_mirror(tmp_path)
    before = path.read_text()
    env_token, env_dsn = "t" * 32, "postgresql://eu:envpw@db/eu"
    monkeypatch.setenv("MIRRORFS_TOKEN", env_token)
    monkeypatch.setenv("MIRRORFS_MIRROR_EU_WEST_DSN", env_dsn)
    monkeypatch.setenv("MIRRORFS_SECRET", "")  # empty: ignored
    cfg = load_config(path)
    assert cfg.token == env_token and cfg.mirror("eu-west").dsn == env_dsn
    assert cfg.mirror_region("eu-west").dsn == env_dsn
    assert cfg.secret in before
    write_config(cfg, path)  # what `mirror create` / `mirror remove` do
    after = path.read_text()
    assert after == before and env_token not in after and "envpw" not in after

    monkeypatch.setenv("MIRRORFS_TOKEN", "short")
    with pytest.raises(ConfigError, match="environment") as err:
        load_config(path)
    assert err.value.key == "token"


def test_copier_knobs_reach_the_daemon_and_the_worker(tmp_path: Path) -> None:
    region = load_config(volume_with_mirror(tmp_path)).mirror_region("eu-west")
    daemon = ReplicatorConfig.of(region)
    assert (daemon.concurrency, daemon.bandwidth_bytes_per_s) == (4, 1e6)
    assert daemon.server_side
    worker = ReplicatorConfig.of(region, concurrency=32, bandwidth_bytes_per_s=None)
    assert (worker.concurrency, worker.bandwidth_bytes_per_s) == (32, 1e6)
    assert worker.server_side


def test_an_unknown_copy_mode_is_refused_with_its_place(tmp_path: Path) -> None:
    path = volume_with_mirror(tmp_path)
    path.write_text(path.read_text().replace('copy_mode = "server"', 'copy_mode = "fast"'))
    with pytest.raises(ConfigError, match="copy_mode"):
        load_config(path)


@pytest.mark.parametrize(
    ("model", "prefix"),
    [
        (VolumeConfig, ""),
        (SourceConfig, "source."),
        (NodeConfig, "source.nodes[]."),
        (MirrorConfig, "mirrors.NAME."),
    ],
)
def test_readme_lists_every_key_with_its_default(model: type[BaseModel], prefix: str) -> None:
    text = README.read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| ([^|]*) \|", text, re.MULTILINE))
    for name, info in model.model_fields.items():
        if info.exclude or (
            isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        ):
            continue
        if name in ("nodes", "mirrors", "source"):
            continue
        key = prefix + name
        assert key in rows, f"README's config table has no row for `{key}`"
        if info.default is PydanticUndefined or info.default_factory is not None:
            assert rows[key].strip() in ("required", "minted"), (key, rows[key])
        else:
            shown = rows[key].strip().strip("`")
            d = info.default
            want = str(d).lower() if isinstance(d, bool) else d
            assert shown in (repr(want), str(want), f'"{want}"'), (key, shown, want)
    for var in ENV_SECRETS:
        assert var in text, f"README does not mention {var}"
