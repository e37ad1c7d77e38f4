"""Hostile or runaway configs are refused with the bound they break, before they cost much:
YAML alias bombs, deep nesting (YAML and JSON), oversized files, too many listeners, clusters or
endpoints. Configs inside the bounds, aliases included, still load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stunner_dp.config import ConfigError, load_config_file, load_config_text, parse_config
from stunner_dp.config.limits import (
    MAX_CLUSTERS,
    MAX_CONFIG_BYTES,
    MAX_ENDPOINTS,
    MAX_LISTENERS,
    MAX_YAML_ALIASES,
)
from stunner_dp.testing import make_config


def _config(**overrides: Any) -> dict[str, Any]:
    return make_config(port=34780, min_relay_port=30000, max_relay_port=30100, **overrides)


def alias_bomb(levels: int = 7, width: int = 10) -> str:
    """A valid config plus a key that expands to width**levels strings (10 M here)."""
    lines = ["  a: &a [" + ",".join(["lol"] * width) + "]"]
    names = "abcdefghij"
    for i in range(1, levels):
        lines.append(f"  {names[i]}: &{names[i]} [" + ",".join([f"*{names[i - 1]}"] * width) + "]")
    return yaml.safe_dump(_config()) + "bomb:\n" + "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_by_name() -> None:
    text = alias_bomb()
    assert len(text) < 2000
    with pytest.raises(ConfigError) as err:
        load_config_text(text)
    assert err.value.field == "config"
    assert "values" in str(err.value) and "aliases" in str(err.value)


def test_too_many_aliases_are_refused() -> None:
    refs = ",".join(["*x"] * (MAX_YAML_ALIASES + 1))
    text = yaml.safe_dump(_config()) + f"x: &x 1\ny: [{refs}]\n"
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_ALIASES} YAML aliases"):
        load_config_text(text)


def test_a_few_aliases_still_load() -> None:
    text = """
version: v1
auth: {type: static, credentials: {username: u, password: p}}
listeners:
  - {name: a, protocol: TURN-UDP, port: 3480, routes: &routes [peers]}
  - {name: b, protocol: TURN-TCP, port: 3480, routes: *routes}
clusters: [{name: peers, endpoints: [127.0.0.1]}]
"""
    config = load_config_text(text)
    assert [lis.routes for lis in config.listeners] == [("peers",), ("peers",)]


@pytest.mark.parametrize("depth", [40, 900, 100_000])
def test_deep_yaml_is_refused_by_name(depth: int) -> None:
    text = yaml.safe_dump(_config()) + "deep: " + "[" * depth + "]" * depth + "\n"
    with pytest.raises(ConfigError) as err:
        load_config_text(text)
    assert err.value.field == "config"
    assert "nest" in str(err.value)  # ours, or libyaml's "exceeded maximum nesting depth"


@pytest.mark.parametrize("depth", [40, 5000, 100_000])
def test_deep_json_is_refused_by_name(depth: int) -> None:
    text = json.dumps(_config())[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(ConfigError, match="nested more than 32 levels deep"):
        load_config_text(text)


def test_deep_data_given_to_parse_config_is_refused() -> None:
    data: Any = []
    for _ in range(5000):
        data = [data]
    with pytest.raises(ConfigError, match="nested more than"):
        parse_config(dict(_config(), deep=data))


def test_an_oversized_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    head = yaml.safe_dump(_config())
    path.write_text(head + "# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_BYTES} bytes") as err:
        load_config_file(path)
    assert err.value.field == "config"


def test_too_many_listeners_clusters_endpoints() -> None:
    lis = _config()["listeners"][0]
    many = [dict(lis, name=f"l{i}") for i in range(MAX_LISTENERS + 1)]
    with pytest.raises(ConfigError) as err:
        parse_config(_config(listeners=many))
    assert err.value.field == "listeners" and f"at most {MAX_LISTENERS}" in str(err.value)

    clusters = [{"name": f"c{i}", "endpoints": []} for i in range(MAX_CLUSTERS + 1)]
    with pytest.raises(ConfigError) as err:
        parse_config(_config(clusters=clusters))
    assert err.value.field == "clusters"

    half = MAX_ENDPOINTS // 2 + 1
    clusters = [{"name": f"c{i}", "endpoints": ["127.0.0.1"] * half} for i in range(2)]
    with pytest.raises(ConfigError) as err:
        parse_config(_config(clusters=clusters))
    assert err.value.field == "clusters[1].endpoints"
    assert f"at most {MAX_ENDPOINTS} endpoints" in str(err.value)


def test_a_big_config_inside_the_bounds_loads() -> None:
    endpoints = [f"10.{i // 250}.{i % 250}.1/32" for i in range(20_000)]
    config = load_config_text(json.dumps(_config(endpoints=endpoints)))
    assert len(config.clusters[0].endpoints) == 20_000
