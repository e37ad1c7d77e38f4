"""Peer access: clusters routed from a listener, special ranges, port ranges, mapped forms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import ip_address

import pytest

from stunner_dp.config import (
    AuthConfig,
    ClusterConfig,
    ListenerConfig,
    StunnerConfig,
    parse_config,
)
from stunner_dp.turn.access import SPECIAL_RANGES, PeerAccess, PortSet, strict_dns_hosts


def access(
    *endpoints: str,
    dns: bool = False,
    resolved: Mapping[str, Sequence[str]] | None = None,
) -> PeerAccess:
    """One listener "l" routed to one cluster "c" with these endpoints."""
    cfg = StunnerConfig(
        auth=AuthConfig(username="u", password="p"),
        listeners=(ListenerConfig(name="l", protocol="TURN-UDP", routes=("c",)),),
        clusters=(
            ClusterConfig(
                name="c", type="STRICT_DNS" if dns else "STATIC", endpoints=tuple(endpoints)
            ),
        ),
    )
    return PeerAccess.from_config(cfg, resolved)


WILDCARD = ("0.0.0.0/0", "::/0")

# (peer, an explicit endpoint naming its special range): the wildcard must deny every one of
# these, the explicit endpoint must allow it
SPECIAL_PEERS = [
    ("127.0.0.1", "127.0.0.0/8"),
    ("127.255.255.254", "127.0.0.1/8"),
    ("::1", "::1"),
    ("0.0.0.0", "0.0.0.0/8"),
    ("0.1.2.3", "0.0.0.0/8"),
    ("::", "::/128"),
    ("169.254.169.254", "169.254.169.254"),
    ("169.254.1.1", "169.254.0.0/16"),
    ("fe80::1", "fe80::/10"),
    ("224.0.0.1", "224.0.0.0/4"),
    ("239.255.255.250", "239.0.0.0/8"),
    ("ff02::1", "ff00::/8"),
    ("255.255.255.255", "255.255.255.255"),
    ("240.0.0.1", "240.0.0.0/4"),
    ("10.1.2.3", "10.0.0.0/8"),
    ("172.16.5.4", "172.16.0.0/12"),
    ("172.31.255.255", "172.16.0.0/12"),
    ("192.168.1.1", "192.168.0.0/16"),
    ("100.64.0.1", "100.64.0.0/10"),
    ("100.127.255.254", "100.64.0.0/10"),
    ("fd00::1", "fd00::/8"),
    ("fc00::1", "fc00::/7"),
    ("::1.2.3.4", "::/96"),
    ("::8.8.8.8", "::/96"),
    ("64:ff9b::808:808", "64:ff9b::/96"),
    ("64:ff9b::8.8.8.8", "64:ff9b::/96"),
    ("64:ff9b:1::1", "64:ff9b:1::/48"),
    ("2002:808:808::1", "2002::/16"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32"),
    ("192.0.0.8", "192.0.0.0/24"),
    ("192.88.99.1", "192.88.99.0/24"),
    ("198.18.0.1", "198.18.0.0/15"),
    ("198.19.255.255", "198.18.0.0/15"),
    ("192.0.2.1", "192.0.2.0/24"),
    ("198.51.100.7", "198.51.100.0/24"),
    ("203.0.113.9", "203.0.113.0/24"),
    ("2001:db8::1", "2001:db8::/32"),
    ("fec0::1", "fec0::/10"),
    ("100::1", "100::/64"),
]

GLOBAL_PEERS = [
    "8.8.8.8",
    "1.1.1.1",
    "11.0.0.1",
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.169.0.1",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001:82a::200e",
]


@pytest.mark.parametrize(("peer", "endpoint"), SPECIAL_PEERS)
def test_wildcard_does_not_reach_special_peers(peer: str, endpoint: str) -> None:
    assert access(*WILDCARD).ports_for("l", peer) is None
    assert not access(*WILDCARD).allowed("l", peer, 3478)


@pytest.mark.parametrize(("peer", "endpoint"), SPECIAL_PEERS)
def test_explicit_endpoint_reaches_special_peer(peer: str, endpoint: str) -> None:
    acc = access(endpoint)
    assert acc.ports_for("l", peer) == PortSet.ANY
    assert acc.allowed("l", peer, 1) and acc.allowed("l", peer, 65535)


@pytest.mark.parametrize(("peer", "endpoint"), SPECIAL_PEERS)
def test_explicit_endpoint_port_range_applies_to_special_peer(peer: str, endpoint: str) -> None:
    acc = access(f"{endpoint}:<5000-6000>")
    ports = acc.ports_for("l", peer)
    assert ports is not None and 5000 in ports and 6000 in ports
    assert 4999 not in ports and 6001 not in ports
    assert acc.allowed("l", peer, 5500) and not acc.allowed("l", peer, 3478)


@pytest.mark.parametrize("peer", GLOBAL_PEERS)
def test_wildcard_reaches_global_peers(peer: str) -> None:
    assert access(*WILDCARD).ports_for("l", peer) == PortSet.ANY


@pytest.mark.parametrize("peer", GLOBAL_PEERS)
def test_global_peer_outside_endpoints_is_denied(peer: str) -> None:
    assert access("10.0.0.0/8", "fd00::/8", "9.9.9.9").ports_for("l", peer) is None


@pytest.mark.parametrize(
    ("endpoint", "peer", "allowed"),
    [
        # a wide endpoint covers global addresses, never the special ranges inside it
        ("0.0.0.0/1", "8.8.8.8", True),
        ("0.0.0.0/1", "10.0.0.1", False),
        ("0.0.0.0/1", "127.0.0.1", False),
        ("128.0.0.0/1", "192.168.0.1", False),
        ("128.0.0.0/1", "169.254.169.254", False),
        ("10.0.0.0/7", "10.1.2.3", False),  # wider than 10/8
        ("10.0.0.0/7", "11.1.2.3", True),
        ("::/0", "::1", False),
        ("::/0", "fe80::1", False),
        ("::/96", "::1", False),  # ::1 is loopback, its own range
        ("::/96", "::", False),
        ("240.0.0.0/4", "255.255.255.255", False),  # broadcast is its own range
        ("192.0.0.0/16", "192.0.0.8", False),
        ("fc00::/7", "fe80::1", False),
        ("fe80::/9", "fe80::1", False),
        ("169.254.0.0/16", "169.254.169.254", True),
        ("169.254.169.254", "169.254.169.253", False),
        ("10.1.0.0/16", "10.1.2.3", True),
        ("10.1.0.0/16", "10.2.0.1", False),
        ("10.1.2.3", "10.1.2.3", True),
        ("172.16.0.0/12", "172.32.0.1", False),
        ("127.0.0.1", "127.0.0.2", False),
        ("2002::/16", "2002::1", True),
        ("2001::/16", "2001:db8::1", False),  # documentation sits inside 2001::/16
        ("2001::/16", "2001::1", False),  # so does Teredo
        ("2001::/16", "2001:4860::1", True),  # global
    ],
)
def test_special_range_rule(endpoint: str, peer: str, allowed: bool) -> None:
    assert (access(endpoint).ports_for("l", peer) is not None) is allowed


@pytest.mark.parametrize(
    ("endpoints", "peer", "inside", "outside"),
    [
        (("0.0.0.0/0:<1024-65535>",), "8.8.8.8", [1024, 65535], [1, 1023]),
        (("8.8.8.8:<3478-3478>",), "8.8.8.8", [3478], [3477, 3479]),
        (("8.8.8.8:<1-65535>",), "8.8.8.8", [1, 65535], []),
        (("[2606:4700::1]:<80-81>",), "2606:4700::1", [80, 81], [82]),
        (("2606:4700::1:<80-81>",), "2606:4700::1", [80, 81], [82]),
        (("2606:4700::/32:<80-81>",), "2606:4700::1", [80, 81], [79]),
        # a peer covered by several endpoints gets the union of their ranges
        (("10.0.0.0/8:<5000-6000>", "10.1.0.0/16:<7000-7001>"), "10.1.2.3", [5000, 7001], [6500]),
        (("10.0.0.0/8:<5000-6000>", "10.1.0.0/16:<6001-7000>"), "10.1.2.3", [6000, 6001], [7001]),
        (("10.0.0.0/8:<5000-6000>", "10.0.0.0/8"), "10.1.2.3", [1, 65535], []),
        (("10.0.0.0/8:<5000-6000>", "10.1.0.0/16:<7000-7001>"), "10.2.0.1", [5000], [7000]),
    ],
)
def test_port_ranges(
    endpoints: tuple[str, ...], peer: str, inside: list[int], outside: list[int]
) -> None:
    acc = access(*endpoints)
    for port in inside:
        assert acc.allowed("l", peer, port), port
    for port in outside:
        assert not acc.allowed("l", peer, port), port


@pytest.mark.parametrize(
    ("endpoint", "peer", "allowed"),
    [
        ("0.0.0.0/0", "::ffff:8.8.8.8", True),
        ("0.0.0.0/0", "::ffff:127.0.0.1", False),
        ("0.0.0.0/0", "::ffff:10.0.0.1", False),
        ("0.0.0.0/0", "::ffff:169.254.169.254", False),
        ("0.0.0.0/0", "::ffff:0.0.0.0", False),
        ("::/0", "::ffff:8.8.8.8", False),  # judged as IPv4: an IPv6 endpoint does not cover it
        ("127.0.0.1", "::ffff:127.0.0.1", True),
        ("10.0.0.0/8", "::ffff:10.1.2.3", True),
        ("::ffff:10.0.0.0/104", "10.1.2.3", True),  # endpoint written mapped = 10.0.0.0/8
        ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", True),
        ("::ffff:127.0.0.1", "127.0.0.1", True),
        ("::ffff:0:0/96", "8.8.8.8", True),  # = 0.0.0.0/0
        ("::ffff:0:0/96", "10.0.0.1", False),
        ("::ffff:0:0/95", "10.0.0.1", False),
        ("::ffff:8.8.8.8", "8.8.8.8", True),
    ],
)
def test_ipv4_mapped(endpoint: str, peer: str, allowed: bool) -> None:
    assert (access(endpoint).ports_for("l", peer) is not None) is allowed


@pytest.mark.parametrize(
    "peer", ["", "not-an-ip", "1.2.3", "1.2.3.4.5", "256.0.0.1", "::g", "8.8.8.8/32", "8.8.8.8:80"]
)
def test_invalid_peer_is_denied_not_raised(peer: str) -> None:
    acc = access(*WILDCARD)
    assert acc.ports_for("l", peer) is None
    assert not acc.allowed("l", peer, 80)


def test_unknown_listener_is_denied() -> None:
    acc = access(*WILDCARD)
    assert acc.ports_for("other", "8.8.8.8") is None
    assert acc.clusters_for("other") == ()


def test_only_routed_clusters_count() -> None:
    cfg = parse_config(
        {
            "version": "v1",
            "auth": {"credentials": {"username": "u", "password": "p"}},
            "listeners": [
                {"name": "media-only", "routes": ["media"]},
                {"name": "both", "protocol": "TCP", "routes": ["media", "internet", "media"]},
                {"name": "none", "protocol": "TLS", "cert": "Y2VydA==", "key": "a2V5"},
            ],
            "clusters": [
                {"name": "media", "endpoints": ["10.76.0.0/16"]},
                {"name": "internet", "endpoints": ["0.0.0.0/0"]},
                {"name": "unrouted", "endpoints": ["9.9.9.9", "192.168.0.0/16"]},
            ],
        },
        env={},
    )
    acc = PeerAccess.from_config(cfg)
    assert acc.clusters_for("media-only") == ("media",)
    assert acc.clusters_for("both") == ("media", "internet")
    assert acc.clusters_for("none") == ()
    assert acc.allowed("media-only", "10.76.1.1", 80)
    assert not acc.allowed("media-only", "8.8.8.8", 80)
    assert acc.allowed("both", "8.8.8.8", 80) and acc.allowed("both", "10.76.1.1", 80)
    for listener in ("media-only", "both", "none"):
        assert not acc.allowed(listener, "9.9.9.9" if listener != "both" else "192.168.1.1", 80)
    assert not acc.allowed("none", "10.76.1.1", 80)


STRICT = ("media.ns.svc", "rec.ns.svc:<10000-20000>")


@pytest.mark.parametrize(
    ("resolved", "peer", "port", "allowed"),
    [
        ({"media.ns.svc": ["10.76.1.5"]}, "10.76.1.5", 3478, True),  # pod IPs are fine
        ({"media.ns.svc": ["10.76.1.5"]}, "10.76.1.6", 3478, False),
        ({"media.ns.svc": ["10.76.1.5", "fd00::5"]}, "fd00::5", 1, True),
        ({"media.ns.svc": ["10.76.1.5"]}, "::ffff:10.76.1.5", 1, True),
        ({"media.ns.svc": ["8.8.8.8"]}, "8.8.8.8", 9, True),
        ({"rec.ns.svc": ["10.0.0.9"]}, "10.0.0.9", 15000, True),
        ({"rec.ns.svc": ["10.0.0.9"]}, "10.0.0.9", 9999, False),
        ({}, "10.76.1.5", 3478, False),  # not resolved yet: deny
        ({"media.ns.svc": []}, "10.76.1.5", 3478, False),
        ({"media.ns.svc": ["garbage", "10.76.1.5"]}, "10.76.1.5", 3478, True),
        ({"media.ns.svc": ["0.0.0.0"]}, "0.0.0.0", 3478, False),  # sinkhole answer
        ({"media.ns.svc": ["::"]}, "::", 3478, False),
        ({"MEDIA.NS.SVC": ["10.76.1.5"]}, "10.76.1.5", 3478, False),
        ({"media.ns.svc.": ["10.76.1.5"]}, "10.76.1.5", 3478, False),
    ],
)
def test_strict_dns(resolved: dict[str, list[str]], peer: str, port: int, allowed: bool) -> None:
    assert access(*STRICT, dns=True, resolved=resolved).allowed("l", peer, port) is allowed


def test_strict_dns_ip_literal_and_trailing_dot() -> None:
    acc = access("10.0.0.1", "Media.NS.svc.", dns=True, resolved={"media.ns.svc": ["10.0.0.2"]})
    assert acc.allowed("l", "10.0.0.1", 1)
    assert acc.allowed("l", "10.0.0.2", 1)


def test_strict_dns_hosts_are_the_lookup_keys() -> None:
    cfg = parse_config(
        {
            "version": "v1",
            "auth": {"credentials": {"username": "u", "password": "p"}},
            "clusters": [
                {"name": "a", "type": "STRICT_DNS", "endpoints": [*STRICT, "10.0.0.1"]},
                {"name": "b", "type": "STRICT_DNS", "endpoints": ["media.ns.svc:<1-2>"]},
                {"name": "c", "endpoints": ["10.0.0.0/8"]},
            ],
        },
        env={},
    )
    assert strict_dns_hosts(cfg) == ("media.ns.svc", "rec.ns.svc")


def test_portset() -> None:
    assert 0 in PortSet.ANY and 65535 in PortSet.ANY and PortSet.ANY.is_any
    assert PortSet.range(1, 65535) == PortSet.ANY
    ps = PortSet.range(10, 20) | PortSet.range(21, 30) | PortSet.range(40, 50)
    assert ps.ranges == ((10, 30), (40, 50))
    assert 30 in ps and 31 not in ps and 45 in ps and "45" not in ps
    assert (ps | PortSet.ANY) is PortSet.ANY
    assert not PortSet() and 1 not in PortSet()
    assert repr(ps) == "PortSet(10-30,40-50)" and repr(PortSet.ANY) == "PortSet.ANY"
    assert len({PortSet.range(1, 2), PortSet.range(1, 2)}) == 1


def test_every_special_range_is_exercised() -> None:
    tested = {p for p, _ in SPECIAL_PEERS}
    for rng in SPECIAL_RANGES:
        assert any(ip_address(p) in rng for p in tested), rng
