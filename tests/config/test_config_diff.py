"""diff_configs: what to start, stop, restart or change live."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stunner_dp.config import (
    AuthConfig,
    ClusterConfig,
    ConfigDiff,
    ListenerConfig,
    StunnerConfig,
    diff_configs,
)

UDP = ListenerConfig(name="udp", protocol="TURN-UDP", routes=("c",))
TCP = ListenerConfig(name="tcp", protocol="TURN-TCP", routes=("c",))
BASE = StunnerConfig(
    auth=AuthConfig(username="u", password="p"),
    listeners=(UDP, TCP),
    clusters=(ClusterConfig(name="c", endpoints=("10.0.0.0/8",)),),
)


def with_udp(**changes: object) -> StunnerConfig:
    return replace(BASE, listeners=(replace(UDP, **changes), TCP))  # type: ignore[arg-type]


def test_same_config_is_empty() -> None:
    d = diff_configs(BASE, replace(BASE))
    assert d.empty and d == ConfigDiff()


def test_listener_added_and_removed() -> None:
    new = replace(BASE, listeners=(TCP, ListenerConfig(name="dtls", protocol="TURN-DTLS")))
    d = diff_configs(BASE, new)
    assert d.listeners_to_start == ("dtls",)
    assert d.listeners_to_stop == ("udp",)
    assert d.listeners_to_restart == () and d.listeners_changed_live == ()
    assert not d.empty


@pytest.mark.parametrize(
    "changes",
    [
        {"protocol": "TURN-TCP"},
        {"address": "10.0.0.5"},
        {"port": 3479},
        {"cert": "Y2VydA=="},
        {"key": "a2V5"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_socket_changes_restart(changes: dict[str, object]) -> None:
    d = diff_configs(BASE, with_udp(**changes))
    assert d.listeners_to_restart == ("udp",)
    assert d.listeners_changed_live == () and d.listeners_to_start == ()


@pytest.mark.parametrize(
    "changes",
    [
        {"routes": ()},
        {"min_relay_port": 31000},
        {"max_relay_port": 31000},
        {"public_address": "1.2.3.4"},
        {"public_port": 443},
    ],
    ids=lambda c: next(iter(c)),
)
def test_live_changes(changes: dict[str, object]) -> None:
    d = diff_configs(BASE, with_udp(**changes))
    assert d.listeners_changed_live == ("udp",)
    assert d.listeners_to_restart == ()


def test_realm_change_restarts_every_listener() -> None:
    new = replace(BASE, auth=replace(BASE.auth, realm="other.realm"))
    d = diff_configs(BASE, new)
    assert d.listeners_to_restart == ("udp", "tcp")
    assert d.auth_changed


def test_credentials_change_live() -> None:
    d = diff_configs(BASE, replace(BASE, auth=replace(BASE.auth, password="new")))
    assert d.auth_changed and d.listeners_to_restart == ()
    assert not d.empty


def test_clusters_and_admin() -> None:
    new = replace(BASE, clusters=(ClusterConfig(name="c", endpoints=("10.1.0.0/16",)),))
    d = diff_configs(BASE, new)
    assert d.clusters_changed and not d.admin_changed and not d.auth_changed
    d = diff_configs(BASE, replace(BASE, admin=replace(BASE.admin, loglevel="all:DEBUG")))
    assert d.admin_changed and not d.clusters_changed
