"""listeners[].nat_discovery (RFC 5780, extension): parsed, round-tripped, restarts the listener
when it changes, and every bad value is refused naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from stunner_dp.config import ConfigError, NatDiscoveryConfig, diff_configs, parse_config

AUTH = {"credentials": {"username": "user-1", "password": "pass-1"}}
GOOD = {"alternate_address": "127.0.0.2", "alternate_port": 3479}


def config(**listener: Any) -> dict[str, Any]:
    raw = {"name": "l", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": 3478, **listener}
    return {"version": "v1", "auth": AUTH, "listeners": [raw]}


def test_parsed_and_round_tripped() -> None:
    parsed = parse_config(config(nat_discovery=GOOD))
    assert parsed.listeners[0].nat_discovery == NatDiscoveryConfig("127.0.0.2", 3479)
    again = parse_config(parsed.to_dict())
    assert again.listeners[0].nat_discovery == parsed.listeners[0].nat_discovery


def test_absent_is_off() -> None:
    parsed = parse_config(config())
    assert parsed.listeners[0].nat_discovery is None
    assert "nat_discovery" not in parsed.to_dict()["listeners"][0]


def test_env_expanded() -> None:
    raw = config(nat_discovery={"alternate_address": "$ALT", "alternate_port": "${ALT_PORT}"})
    parsed = parse_config(raw, env={"ALT": "127.0.0.2", "ALT_PORT": "4000"})
    assert parsed.listeners[0].nat_discovery == NatDiscoveryConfig("127.0.0.2", 4000)


def test_a_change_restarts_the_listener() -> None:
    old = parse_config(config(nat_discovery=GOOD))
    new = parse_config(config(nat_discovery={**GOOD, "alternate_port": 3500}))
    assert diff_configs(old, new).listeners_to_restart == ("l",)
    assert diff_configs(old, parse_config(config())).listeners_to_restart == ("l",)


@pytest.mark.parametrize(
    ("listener", "field"),
    [
        ({"nat_discovery": "yes"}, "listeners[0].nat_discovery"),
        ({"protocol": "TURN-TCP", "nat_discovery": GOOD}, "listeners[0].nat_discovery"),
        ({"address": "0.0.0.0", "nat_discovery": GOOD}, "listeners[0].address"),
        (
            {"nat_discovery": {"alternate_port": 3479}},
            "listeners[0].nat_discovery.alternate_address",
        ),
        ({"nat_discovery": {**GOOD, "alternate_address": "host"}}, "alternate_address"),
        ({"nat_discovery": {**GOOD, "alternate_address": "127.0.0.1"}}, "alternate_address"),
        ({"nat_discovery": {**GOOD, "alternate_address": "::1"}}, "alternate_address"),
        ({"nat_discovery": {**GOOD, "alternate_address": "0.0.0.0"}}, "alternate_address"),
        ({"nat_discovery": {"alternate_address": "127.0.0.2"}}, "alternate_port"),
        ({"nat_discovery": {**GOOD, "alternate_port": 3478}}, "alternate_port"),
        ({"nat_discovery": {**GOOD, "alternate_port": 70000}}, "alternate_port"),
        ({"nat_discovery": {**GOOD, "alternate_port": "x"}}, "alternate_port"),
    ],
)
def test_bad_values_name_their_field(listener: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(**listener))
    assert info.value.field.endswith(field), info.value.field
