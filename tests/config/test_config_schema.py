"""STUNner's v1 schema walked field by field (l7mp/stunner pkg/apis/v1: admin.go, auth.go,
listener.go, cluster.go, stunner.go): every field stunnerd accepts is accepted here, and is
either honoured or accepted with a warning that says it has no effect here.

The table below is the list; a field added to stunnerd's schema belongs in it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from stunner_dp.config import ConfigError, parse_config

CERT = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="  # base64 of a PEM line: shape only

# field path -> (a value stunnerd accepts, "honoured" or the words the warning must carry)
HONOURED = "honoured"
V1_FIELDS: dict[str, tuple[Any, str]] = {
    "version": ("v1", HONOURED),
    "admin.name": ("stunner/udp-gateway", HONOURED),
    "admin.loglevel": ("all:DEBUG", HONOURED),
    "admin.metrics_endpoint": ("http://:8080/metrics", HONOURED),
    "admin.healthcheck_endpoint": ("http://:8086", HONOURED),
    "admin.user_quota": (5, HONOURED),
    # read by the kernel offload (stunner_dp/net/offload.py)
    "admin.offload_engine": ("TC", HONOURED),
    "admin.offload_interfaces": (["eth0"], HONOURED),
    "admin.license_config": ({"key": "k", "hmac": "h"}, "has no effect here"),
    "auth.type": ("ephemeral", HONOURED),
    "auth.realm": ("example.org", HONOURED),
    "auth.credentials": ({"secret": "s"}, HONOURED),
    "listeners[0].name": ("udp", HONOURED),
    "listeners[0].protocol": ("TURN-TLS", HONOURED),
    "listeners[0].public_address": ("203.0.113.7", HONOURED),
    "listeners[0].public_port": (443, HONOURED),
    "listeners[0].address": ("10.0.0.1", HONOURED),
    "listeners[0].port": (3479, HONOURED),
    "listeners[0].cert": (CERT, HONOURED),
    "listeners[0].key": (CERT, HONOURED),
    "listeners[0].routes": (["media"], HONOURED),
    "clusters[0].name": ("media", HONOURED),
    "clusters[0].type": ("STRICT_DNS", HONOURED),
    "clusters[0].protocol": ("TCP", "has no effect here"),
    "clusters[0].endpoints": (["10.1.0.0/16", "192.0.2.1:<5000-6000>"], HONOURED),
}


def base() -> dict[str, Any]:
    return {
        "version": "v1",
        "admin": {},
        "auth": {"type": "static", "credentials": {"username": "u", "password": "p"}},
        "listeners": [
            {"name": "udp", "protocol": "TURN-TLS", "cert": CERT, "key": CERT, "routes": ["media"]}
        ],
        "clusters": [{"name": "media", "endpoints": ["10.0.0.0/8"]}],
    }


def with_field(path: str, value: Any) -> dict[str, Any]:
    raw = base()
    *parents, key = path.replace("[0]", ".0").split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[key] = copy.deepcopy(value)
    if path in ("auth.credentials", "auth.type"):
        raw["auth"].update(type="ephemeral", credentials={"secret": "s"})
    if path == "clusters[0].type":
        raw["clusters"][0]["endpoints"] = ["media.example.svc"]
    return raw


@pytest.mark.parametrize("path", list(V1_FIELDS))
def test_every_v1_field_is_accepted_and_honoured_or_warned(path: str) -> None:
    value, handling = V1_FIELDS[path]
    config = parse_config(with_field(path, value), env={})
    warnings = [n for n in config.notes if path in n]
    if handling == HONOURED:
        assert not config.notes, config.notes
    else:
        assert len(warnings) == 1, config.notes
        assert handling in warnings[0]


def test_the_base_config_warns_of_nothing() -> None:
    assert parse_config(base(), env={}).notes == ()


def test_the_table_covers_the_model() -> None:
    """Every listener, cluster and auth field the model keeps is walked above, and every walked
    admin field is kept (admin also holds stunner-dp's own extension keys, not stunnerd's)."""
    config = parse_config(base(), env={}).to_dict()
    legacy = {"listeners[0].min_relay_port", "listeners[0].max_relay_port"}  # v1alpha1's, kept
    walked = set(V1_FIELDS)
    for section in ("listeners", "clusters"):
        for key in config[section][0]:
            name = f"{section}[0].{key}"
            assert name in walked or name in legacy, name
    assert {f"auth.{key}" for key in config["auth"]} <= walked
    kept_admin = {f"admin.{key}" for key in config["admin"]}
    assert {f for f in walked if f.startswith("admin.")} - kept_admin == {"admin.license_config"}


# --- auth.type none: STUNner's STUN server mode ---------------------------------------------


@pytest.mark.parametrize("credentials", [None, {}, {"username": "ignored"}])
def test_auth_type_none_is_accepted(credentials: dict[str, str] | None) -> None:
    raw = base()
    raw["auth"] = {"type": "none"}
    if credentials is not None:
        raw["auth"]["credentials"] = credentials
    config = parse_config(raw, env={})
    assert config.auth.type == "none"
    assert config.notes == ()


# --- admin.offload_engine / offload_interfaces ------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("none", "None"),
        ("NONE", "None"),
        ("tc", "TC"),
        ("Xdp", "XDP"),
        ("AUTO", "Auto"),
        ("", "None"),
    ],
)
def test_offload_engine_takes_stunners_spellings(given: str, normalised: str) -> None:
    raw = base()
    raw["admin"]["offload_engine"] = given
    config = parse_config(raw, env={})
    assert config.admin.offload_engine == normalised
    assert config.to_dict()["admin"]["offload_engine"] == normalised
    assert not config.notes  # read by the kernel offload: no "has no effect" warning


def test_offload_engine_absent_is_none_and_silent() -> None:
    config = parse_config(base(), env={})
    assert config.admin.offload_engine == "None"
    assert config.admin.offload_interfaces == ()


def test_offload_interfaces_are_kept_sorted() -> None:
    raw = base()
    raw["admin"].update(offload_engine="Auto", offload_interfaces=["eth1", "eth0"])
    config = parse_config(raw, env={})
    assert config.admin.offload_interfaces == ("eth0", "eth1")
    assert parse_config(config.to_dict(), env={}) == config


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("offload_engine", "eBPF", "admin.offload_engine"),
        ("offload_engine", 1, "admin.offload_engine"),
        ("offload_interfaces", "eth0", "admin.offload_interfaces"),
        ("offload_interfaces", ["eth0", 7], "admin.offload_interfaces[1]"),
        ("offload_interfaces", [""], "admin.offload_interfaces[0]"),
        ("offload_interfaces", ["a-name-far-too-long"], "admin.offload_interfaces[0]"),
        ("license_config", "key", "admin.license_config"),
    ],
)
def test_bad_offload_fields_name_the_field(key: str, value: Any, named: str) -> None:
    raw = base()
    raw["admin"][key] = value
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={})
    assert err.value.field == named
