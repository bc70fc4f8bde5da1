"""A bad config file says which file and which key, and nothing starts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import structlog

from cli.source import new_volume
from volume.config import load_config, write_config
from volume.errors import ConfigError


def good(tmp_path: Path) -> Path:
    path = tmp_path / "mirrorfs.toml"
    write_config(new_volume(tmp_path, nodes=3, bucket=None, name="v"), path)
    return path


def test_roundtrip(tmp_path: Path) -> None:
    cfg = load_config(good(tmp_path))
    assert [n.id for n in cfg.source.nodes] == [1, 2, 3]
    assert cfg.resolve("source/node1") == (tmp_path / "source/node1").resolve()


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (
            lambda t: t.replace("tick_interval_s = 0.2", "tick_interval_s = -1"),
            "source.tick_interval_s",
        ),
        (lambda t: t.replace("tick_interval_s", "tick_intervall_s"), "source.tick_intervall_s"),
        (lambda t: t.replace('name = "v"', 'name = "Bad Name"'), "name"),
        (lambda t: t.replace("id = 2", "id = 7"), "source.nodes"),
        (lambda t: t.replace('raft = "127.0.0.1:', 'raft = "nohost'), "source.nodes.0.raft"),
        (lambda t: "\n".join(x for x in t.splitlines() if not x.startswith("token")), "token"),
    ],
)
def test_bad_key_names_file_and_key(tmp_path: Path, edit: object, key: str) -> None:
    path = good(tmp_path)
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert key in str(info.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "mirrorfs.toml"
    path.write_text("name = \n[[[")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = good(tmp_path)
    monkeypatch.setenv("MIRRORFS_CONFIG", str(path))
    assert load_config(None).name == "v"


def test_written_0600_over_a_stale_tmp_file_and_an_open_file(tmp_path: Path) -> None:
    path = tmp_path / "mirrorfs.toml"
    path.write_text("old")
    path.chmod(0o644)
    stale = tmp_path / "mirrorfs.toml.tmp"  # left by a crash mid-write, world-readable
    stale.write_text("junk")
    stale.chmod(0o666)
    old_umask = os.umask(0o000)  # a umask can only narrow a mode; with none, still 0600
    try:
        write_config(new_volume(tmp_path, nodes=1, bucket=None, name="v"), path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not stale.exists()
    assert load_config(path).name == "v"


def test_a_config_others_may_read_loads_with_a_warning(tmp_path: Path) -> None:
    path = good(tmp_path)
    warnings: list[str] = []
    with structlog.testing.capture_logs() as logs:
        load_config(path, on_warning=warnings.append)
    assert warnings == [] and logs == []
    path.chmod(0o640)
    with structlog.testing.capture_logs() as logs:
        cfg = load_config(path, on_warning=warnings.append)
    assert cfg.name == "v"
    [line] = warnings
    assert str(path) in line and f"chmod 600 {path}" in line and "0640" in line
    [event] = logs
    assert event["event"] == "config.readable_by_others" and event["log_level"] == "warning"
    assert event["path"] == str(path) and event["fix"] == f"chmod 600 {path}"
    assert load_config(path).name == "v"  # no callback: logged only
