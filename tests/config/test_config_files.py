"""Every shipped config loads; every file in invalid/ fails on the field its first line names."""

from __future__ import annotations

from pathlib import Path

import pytest

from stunner_dp.config import ConfigError, load_config_file

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([ROOT / "config" / "stunnerd.yaml", *(ROOT / "config" / "examples").glob("*")])
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def expected_field(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <field>'"
    return first.removeprefix("# expect: ").strip()


def test_there_are_enough_files() -> None:
    assert len(SHIPPED) >= 6
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    config = load_config_file(path, env={})
    assert config.listeners, "every shipped config serves something"
    for lis in config.listeners:
        assert lis.routes, f"{lis.name} routes nowhere"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_loads_with_file_url(path: Path) -> None:
    assert load_config_file(f"file://{path}", env={}) == load_config_file(path, env={})


def test_default_config() -> None:
    c = load_config_file(ROOT / "config" / "stunnerd.yaml", env={})
    assert c.admin.name == "stunner-dp"
    assert c.admin.metrics_endpoint == "http://:8080/metrics"
    assert c.admin.healthcheck_endpoint == "http://:8086"
    assert (c.auth.type, c.auth.realm) == ("static", "stunner.l7mp.io")
    assert [(lis.name, lis.protocol, lis.port) for lis in c.listeners] == [
        ("udp-listener", "TURN-UDP", 3478),
        ("tcp-listener", "TURN-TCP", 3478),
    ]
    assert all(lis.address == "0.0.0.0" for lis in c.listeners)
    with_addr = load_config_file(
        ROOT / "config" / "stunnerd.yaml", env={"STUNNER_ADDR": "10.1.1.1"}
    )
    assert all(lis.address == "10.1.1.1" for lis in with_addr.listeners)
    assert c.clusters[0].endpoints == ("0.0.0.0/0", "::/0")
    text = (ROOT / "config" / "stunnerd.yaml").read_text(encoding="utf-8")
    assert "DEMO" in text


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_config_names_field(path: Path) -> None:
    field = expected_field(path)
    with pytest.raises(ConfigError) as info:
        load_config_file(path, env={})
    assert info.value.field == field
    assert field in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config_file(f"file://{missing}")
    assert str(missing) in str(info.value)


def test_bad_yaml_file_names_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1\nauth: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(bad)
    assert str(bad) in str(info.value) and "line" in str(info.value)
