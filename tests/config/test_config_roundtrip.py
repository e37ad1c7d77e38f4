"""to_dict: the stunnerd v1 shape, a lossless round trip, and redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stunner_dp.config import (
    AdminConfig,
    AuthConfig,
    ClusterConfig,
    ListenerConfig,
    StunnerConfig,
    load_config_file,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted([ROOT / "config" / "stunnerd.yaml", *(ROOT / "config" / "examples").glob("*")])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_round_trip_of_shipped_files(path: Path) -> None:
    cfg = load_config_file(path, env={"STUNNER_ADDR": "10.0.0.1"})
    assert parse_config(cfg.to_dict(), env={}) == cfg
    # the dict is plain JSON, as the CDS server sends it
    assert parse_config(json.loads(json.dumps(cfg.to_dict())), env={}) == cfg


def test_v1_shape() -> None:
    cfg = StunnerConfig(
        auth=AuthConfig(username="u", password="p"),
        listeners=(ListenerConfig(name="l", protocol="TURN-UDP", routes=("c",)),),
        clusters=(ClusterConfig(name="c", endpoints=("10.0.0.0/8",)),),
    )
    d = cfg.to_dict()
    assert d["version"] == "v1"
    assert d["auth"] == {
        "type": "static",
        "realm": "stunner.l7mp.io",
        "credentials": {"username": "u", "password": "p"},
    }
    assert d["admin"]["healthcheck_endpoint"] == "http://:8086"
    assert d["listeners"][0]["routes"] == ["c"]
    assert d["clusters"][0] == {
        "name": "c",
        "type": "STATIC",
        "protocol": "UDP",
        "endpoints": ["10.0.0.0/8"],
    }


def test_redaction_hides_secrets_only() -> None:
    cfg = StunnerConfig(
        auth=AuthConfig(type="ephemeral", username="u", password="pw", secret="sekrit"),
        listeners=(ListenerConfig(name="t", protocol="TURN-TLS", cert="Y2VydA==", key="a2V5"),),
    )
    shown = cfg.to_dict(redact=True)
    text = json.dumps(shown)
    assert "pw" not in text and "sekrit" not in text and "a2V5" not in text
    assert shown["auth"]["credentials"] == {
        "username": "u",
        "password": "<redacted>",
        "secret": "<redacted>",
    }
    assert shown["listeners"][0]["key"] == "<redacted>"
    assert shown["listeners"][0]["cert"] == "Y2VydA=="
    assert cfg.to_dict()["auth"]["credentials"]["secret"] == "sekrit"


def test_healthcheck_disabled_survives_round_trip() -> None:
    cfg = StunnerConfig(
        admin=AdminConfig(healthcheck_endpoint=""), auth=AuthConfig(username="u", password="p")
    )
    assert parse_config(cfg.to_dict(), env={}).admin.healthcheck_endpoint == ""


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-/", min_size=1, max_size=12)
ports = st.integers(min_value=1, max_value=65535)


@st.composite
def configs(draw: st.DrawFn) -> StunnerConfig:
    cluster_names = draw(st.lists(names, max_size=3, unique=True))
    clusters = tuple(
        ClusterConfig(
            name=n,
            protocol=draw(st.sampled_from(["UDP", "TCP"])),
            endpoints=tuple(
                draw(st.lists(st.sampled_from(["10.0.0.0/8", "::1", "1.2.3.4:<1-2>"]), max_size=3))
            ),
        )
        for n in cluster_names
    )
    listeners = []
    for n in draw(st.lists(names, max_size=3, unique=True)):
        lo, hi = sorted((draw(ports), draw(ports)))
        listeners.append(
            ListenerConfig(
                name=n,
                protocol=draw(st.sampled_from(["TURN-UDP", "TURN-TCP"])),
                address=draw(st.sampled_from(["0.0.0.0", "10.0.0.1", "::1"])),
                port=draw(ports),
                public_port=draw(st.integers(min_value=0, max_value=65535)),
                min_relay_port=lo,
                max_relay_port=hi,
                routes=tuple(draw(st.lists(st.sampled_from(cluster_names), max_size=2)))
                if cluster_names
                else (),
            )
        )
    secret = draw(st.text(min_size=1, max_size=10))
    return StunnerConfig(
        admin=AdminConfig(user_quota=draw(st.integers(min_value=0, max_value=100))),
        auth=AuthConfig(type="ephemeral", secret=secret),
        listeners=tuple(listeners),
        clusters=clusters,
    )


@given(configs())
def test_round_trip_property(cfg: StunnerConfig) -> None:
    assert parse_config(cfg.to_dict(), env={}) == cfg
