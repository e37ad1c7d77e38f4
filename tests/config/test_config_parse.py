"""parse_config / load_config_text: defaults, aliases, env expansion, v1alpha1, JSON, errors."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from stunner_dp.config import (
    AdminConfig,
    AuthConfig,
    ClusterConfig,
    ConfigError,
    ListenerConfig,
    StunnerConfig,
    load_config_text,
    parse_config,
)
from stunner_dp.config.errors import MISSING

AUTH = {"credentials": {"username": "user-1", "password": "pass-1"}}


def cfg(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"version": "v1", "auth": AUTH}
    data.update(sections)
    return data


def one_listener(env: dict[str, str] | None = None, **fields: Any) -> ListenerConfig:
    raw = {"name": "l", **fields}
    return parse_config(cfg(listeners=[raw]), env={} if env is None else env).listeners[0]


def error(data: Any, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={} if env is None else env)
    return info.value


def test_minimal_config_gets_stunnerd_defaults() -> None:
    c = parse_config({"version": "v1", "auth": AUTH}, env={})
    assert c.admin == AdminConfig()
    assert c.admin.healthcheck_endpoint == "http://:8086"
    assert c.auth == AuthConfig(username="user-1", password="pass-1")
    assert c.auth.realm == "stunner.l7mp.io"
    assert c.listeners == () and c.clusters == ()
    assert c.version == "v1"


def test_listener_and_cluster_defaults() -> None:
    c = parse_config(cfg(listeners=[{"name": "l"}], clusters=[{"name": "c"}]), env={})
    assert c.listeners[0] == ListenerConfig(name="l", protocol="TURN-UDP")
    assert c.listeners[0].address == "0.0.0.0"
    assert (c.listeners[0].port, c.listeners[0].min_relay_port) == (3478, 30000)
    assert c.listeners[0].max_relay_port == 32767
    assert c.clusters[0] == ClusterConfig(name="c", type="STATIC", protocol="UDP")


def test_zero_ports_mean_default_like_stunnerd() -> None:
    lis = one_listener(port=0, min_relay_port=0, max_relay_port=0)
    assert (lis.port, lis.min_relay_port, lis.max_relay_port) == (3478, 30000, 32767)


@pytest.mark.parametrize(
    ("given", "protocol", "transport"),
    [
        ("TURN-UDP", "TURN-UDP", "udp"),
        ("turn-udp", "TURN-UDP", "udp"),
        ("udp", "TURN-UDP", "udp"),
        ("UDP", "TURN-UDP", "udp"),
        ("TCP", "TURN-TCP", "tcp"),
        ("Turn-Tcp", "TURN-TCP", "tcp"),
        ("tls", "TURN-TLS", "tls"),
        ("TURN-DTLS", "TURN-DTLS", "dtls"),
        ("dtls", "TURN-DTLS", "dtls"),
        ("", "TURN-UDP", "udp"),
    ],
)
def test_listener_protocol_aliases(given: str, protocol: str, transport: str) -> None:
    extra: dict[str, Any] = {"cert": "Y2VydA==", "key": "a2V5"} if "tls" in transport else {}
    lis = one_listener(protocol=given, **extra)
    assert (lis.protocol, lis.transport) == (protocol, transport)


@pytest.mark.parametrize(
    ("given", "normal", "creds"),
    [
        ("static", "static", {"username": "u", "password": "p"}),
        ("plaintext", "static", {"username": "u", "password": "p"}),
        ("STATIC", "static", {"username": "u", "password": "p"}),
        ("", "static", {"username": "u", "password": "p"}),
        ("ephemeral", "ephemeral", {"secret": "s"}),
        ("longterm", "ephemeral", {"secret": "s"}),
        ("timewindowed", "ephemeral", {"secret": "s"}),
        ("Ephemeral", "ephemeral", {"secret": "s"}),
    ],
)
def test_auth_type_aliases(given: str, normal: str, creds: dict[str, str]) -> None:
    c = parse_config({"version": "v1", "auth": {"type": given, "credentials": creds}}, env={})
    assert c.auth.type == normal


def test_cluster_type_and_protocol_are_case_insensitive() -> None:
    raw = {"name": "c", "type": "strict_dns", "protocol": "tcp", "endpoints": ["a.b"]}
    c = parse_config(cfg(clusters=[raw]), env={}).clusters[0]
    assert (c.type, c.protocol) == ("STRICT_DNS", "TCP")


def test_unknown_keys_are_ignored() -> None:
    data = cfg(listeners=[{"name": "l", "frobnicate": 1}], extra={"x": 1})
    data["admin"] = {"offload_engine": "XDP"}
    assert parse_config(data, env={}).listeners[0].name == "l"


def test_env_expansion_everywhere_but_credentials() -> None:
    env = {"STUNNER_ADDR": "10.0.0.7", "NS": "prod", "SECRET": "leak", "PORT": "3479"}
    data = {
        "version": "v1",
        "admin": {"name": "${NS}/gw", "metrics_endpoint": "http://:$PORT/metrics"},
        "auth": {
            "realm": "$NS.example.org",
            "credentials": {"username": "$NS", "password": "$SECRET"},
        },
        "listeners": [
            {"name": "$NS-l", "address": "$STUNNER_ADDR", "port": "${PORT}", "routes": ["$NS-c"]}
        ],
        "clusters": [{"name": "${NS}-c", "endpoints": ["$STUNNER_ADDR"]}],
    }
    c = parse_config(data, env=env)
    assert c.admin.name == "prod/gw"
    assert c.admin.metrics_endpoint == "http://:3479/metrics"
    assert c.auth.realm == "prod.example.org"
    assert (c.auth.username, c.auth.password) == ("$NS", "$SECRET")
    lis = c.listeners[0]
    assert (lis.name, lis.address, lis.port, lis.routes) == (
        "prod-l",
        "10.0.0.7",
        3479,
        ("prod-c",),
    )
    assert c.clusters[0].endpoints == ("10.0.0.7",)


def test_unset_env_var_falls_back_to_default() -> None:
    lis = one_listener(address="$STUNNER_ADDR", port="${NOPE}")
    assert (lis.address, lis.port) == ("0.0.0.0", 3478)
    c = parse_config(cfg(admin={"name": "$NOPE", "loglevel": "${NOPE}"}), env={})
    assert c.admin.name == "default-stunnerd" and c.admin.loglevel == "all:INFO"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUNNER_ADDR", "192.0.2.1")
    c = parse_config(cfg(listeners=[{"name": "l", "address": "$STUNNER_ADDR"}]))
    assert c.listeners[0].address == "192.0.2.1"


def test_dollar_without_name_is_kept() -> None:
    assert one_listener(name="a$-b$").name == "a$-b$"


def test_healthcheck_endpoint_empty_disables_absent_defaults() -> None:
    assert parse_config(cfg(admin={}), env={}).admin.healthcheck_endpoint == "http://:8086"
    off = parse_config(cfg(admin={"healthcheck_endpoint": ""}), env={})
    assert off.admin.healthcheck_endpoint == ""


def test_admin_extension_keys() -> None:
    admin = {
        "user_quota": 5,
        "max_allocations": 1000,
        "max_permissions_per_allocation": 8,
        "max_channels_per_allocation": 0,
    }
    a = parse_config(cfg(admin=admin), env={}).admin
    assert (a.user_quota, a.max_allocations) == (5, 1000)
    assert (a.max_permissions_per_allocation, a.max_channels_per_allocation) == (8, 0)


def test_address_is_normalised_and_ipv6_allowed() -> None:
    assert one_listener(address=" ::FFFF:10.0.0.1 ").address == "::ffff:a00:1"
    assert one_listener(address="2001:DB8::1").address == "2001:db8::1"


def test_public_address_may_be_a_hostname() -> None:
    lis = one_listener(public_address="lb.example.com", public_port=443)
    assert (lis.public_address, lis.public_port) == ("lb.example.com", 443)


def test_v1alpha1_is_converted() -> None:
    text = """
version: v1alpha1
admin: {name: old-stunnerd, loglevel: "all:DEBUG"}
auth:
  type: longterm
  realm: old.realm
  credentials: {secret: s3cret}
listeners:
  - {name: udp, protocol: udp, address: 10.0.0.1, port: 3478, routes: [media]}
  - {name: tcp, protocol: TCP, min_relay_port: 40000, max_relay_port: 41000}
clusters:
  - {name: media, type: STATIC, protocol: udp, endpoints: [10.0.0.0/8]}
"""
    c = load_config_text(text, env={})
    assert c.version == "v1"
    assert c.admin.name == "old-stunnerd"
    assert c.auth == AuthConfig(type="ephemeral", realm="old.realm", secret="s3cret")
    udp, tcp = c.listeners
    assert (udp.protocol, udp.min_relay_port, udp.max_relay_port) == ("TURN-UDP", 32768, 65535)
    assert (tcp.protocol, tcp.min_relay_port, tcp.max_relay_port) == ("TURN-TCP", 40000, 41000)
    assert c.clusters[0].protocol == "UDP"
    plain = load_config_text(
        "version: v1alpha1\nauth: {type: plaintext, credentials: {username: u, password: p}}",
        env={},
    )
    assert plain.auth.type == "static"


def test_json_text_loads_same_as_yaml() -> None:
    data = cfg(listeners=[{"name": "l", "routes": ["c"]}], clusters=[{"name": "c"}])
    as_json = load_config_text(json.dumps(data, indent="\t"), env={})
    assert as_json == parse_config(data, env={})


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"auth": AUTH}, "version", "v1"),
        (cfg(version=1), "version", "v1alpha1"),
        ([], "config", "mapping"),
        (cfg(listeners={"name": "l"}), "listeners", "list"),
        (cfg(listeners=["l"]), "listeners[0]", "mapping"),
        (cfg(listeners=[{"protocol": "UDP"}]), "listeners[0].name", "needs a name"),
        (cfg(listeners=[{"name": ""}]), "listeners[0].name", "needs a name"),
        (cfg(listeners=[{"name": 7}]), "listeners[0].name", "quote"),
        (cfg(listeners=[{"name": "l", "port": -1}]), "listeners[0].port", "1-65535"),
        (cfg(listeners=[{"name": "l", "port": "http"}]), "listeners[0].port", "integer"),
        (cfg(listeners=[{"name": "l", "port": True}]), "listeners[0].port", "integer"),
        (
            cfg(listeners=[{"name": "l", "max_relay_port": 65536}]),
            "listeners[0].max_relay_port",
            "1-65535",
        ),
        (
            cfg(listeners=[{"name": "l", "public_port": 99999}]),
            "listeners[0].public_port",
            "0-65535",
        ),
        (cfg(listeners=[{"name": "l", "routes": "c"}]), "listeners[0].routes", "list"),
        (
            cfg(listeners=[{"name": "l", "routes": ["x"]}]),
            "listeners[0].routes[0]",
            "none are defined",
        ),
        (
            cfg(listeners=[{"name": "l", "protocol": "DTLS", "cert": "Y2VydA=="}]),
            "listeners[0].key",
            "cert and key",
        ),
        (
            cfg(listeners=[{"name": "l", "protocol": "TLS", "cert": "-----BEGIN", "key": "a2V5"}]),
            "listeners[0].cert",
            "base64",
        ),
        (cfg(clusters=[{"name": "c"}, {"name": "c"}]), "clusters[1].name", "unique"),
        (cfg(clusters=[{"endpoints": []}]), "clusters[0].name", "needs a name"),
        (cfg(clusters=[{"name": "c", "type": "EDS"}]), "clusters[0].type", "STRICT_DNS"),
        (cfg(clusters=[{"name": "c", "protocol": "SCTP"}]), "clusters[0].protocol", "UDP or TCP"),
        (
            cfg(clusters=[{"name": "c", "endpoints": ["host.example"]}]),
            "clusters[0].endpoints[0]",
            "CIDR",
        ),
        (
            cfg(clusters=[{"name": "c", "endpoints": ["1.2.3.4:80"]}]),
            "clusters[0].endpoints[0]",
            "min-max",
        ),
        (
            cfg(clusters=[{"name": "c", "endpoints": ["1.2.3.4:<0-80>"]}]),
            "clusters[0].endpoints[0]",
            "1 <= min",
        ),
        (
            cfg(clusters=[{"name": "c", "endpoints": ["1.2.3.4:<80>"]}]),
            "clusters[0].endpoints[0]",
            "<min-max>",
        ),
        (cfg(clusters=[{"name": "c", "endpoints": [10]}]), "clusters[0].endpoints[0]", "string"),
        (
            {"version": "v1", "auth": {"credentials": {"password": "p"}}},
            "auth.credentials.username",
            "username",
        ),
        (
            {"version": "v1", "auth": {"credentials": {"username": "u", "password": ""}}},
            "auth.credentials.password",
            "password",
        ),
        (
            {"version": "v1", "auth": {"credentials": {"username": "u", "password": 1234}}},
            "auth.credentials.password",
            "quote",
        ),
        (
            {"version": "v1", "auth": {"type": "ephemeral"}},
            "auth.credentials.secret",
            "shared secret",
        ),
        ({"version": "v1", "auth": {"credentials": "u:p"}}, "auth.credentials", "mapping"),
        ({"version": "v1", "auth": {"realm": "a\nb", **AUTH}}, "auth.realm", "printable"),
        (cfg(admin={"user_quota": "lots"}), "admin.user_quota", "integer"),
        (cfg(admin={"max_allocations": -5}), "admin.max_allocations", "unlimited"),
        (cfg(admin=[]), "admin", "mapping"),
    ],
)
def test_errors_name_the_field(data: Any, field: str, words: str) -> None:
    err = error(data)
    assert err.field == field
    message = str(err)
    assert message.startswith(field + ": ")
    assert words in message
    assert "\n" not in message


def test_error_message_shapes() -> None:
    err = error(cfg(listeners=[{"name": "a"}, {"name": "b", "port": 70000}]))
    assert str(err) == "listeners[1].port: 70000 is not valid: a port is 1-65535"
    assert (err.field, err.value) == ("listeners[1].port", 70000)
    assert err.allowed == "a port is 1-65535"
    err = error({"version": "v1", "auth": {"type": "ephemeral"}})
    assert str(err) == (
        "auth.credentials.secret: missing: ephemeral auth needs a shared secret"
        " (set auth.credentials.secret)"
    )
    assert isinstance(err, ValueError)


def test_error_pickles() -> None:
    err = error({"version": "v1", "auth": {"type": "ephemeral"}})
    back = pickle.loads(pickle.dumps(err))
    assert (back.field, back.allowed, str(back)) == (err.field, err.allowed, str(err))
    assert back.value is MISSING


def test_route_error_lists_existing_clusters() -> None:
    data = cfg(
        listeners=[{"name": "l", "routes": ["a", "zzz"]}],
        clusters=[{"name": "a"}, {"name": "b"}],
    )
    err = error(data)
    assert err.field == "listeners[0].routes[1]"
    assert "(a, b)" in str(err) and '"zzz"' in str(err)


def test_credentials_never_echoed_in_errors() -> None:
    data = {"version": "v1", "auth": {"type": "ephemeral", "credentials": {"password": "hunter2"}}}
    assert "hunter2" not in str(error(data))


def test_bad_yaml_reports_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text("version: v1\nlisteners:\n  - name: a\n   port: 1\n")
    assert info.value.field == "config"
    assert "line 4" in str(info.value)


def test_empty_text_is_an_error() -> None:
    with pytest.raises(ConfigError, match="empty"):
        load_config_text("# nothing\n")


def test_listener_lookup() -> None:
    c = parse_config(cfg(listeners=[{"name": "a"}, {"name": "b", "port": 1}]), env={})
    found = c.listener("b")
    assert found is not None and found.port == 1
    assert c.listener("nope") is None
    assert isinstance(c, StunnerConfig)
