"""The prefix index of PeerAccess gives the verdicts the linear scan it replaced gave.

`linear_scan` below is the scan PeerAccess ran before the index (every rule of the listener,
in route and endpoint order, with the special range found by walking SPECIAL_RANGES): the
property holds the indexed `ports_for`/`cluster_for` to it for random clusters, routes, port
ranges and peers, special ranges and IPv4-mapped forms included.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stunner_dp.config import (
    AuthConfig,
    ClusterConfig,
    ListenerConfig,
    StunnerConfig,
)
from stunner_dp.config.endpoints import IPNetwork, parse_ip
from stunner_dp.turn.access import (
    SPECIAL_RANGES,
    PeerAccess,
    PortSet,
    _cluster_rules,
    _Rule,
    special_range,
)

_BY_SPECIFICITY = sorted(SPECIAL_RANGES, key=lambda n: -n.prefixlen)


def linear_special_range(net: IPNetwork) -> IPNetwork | None:
    for rng in _BY_SPECIFICITY:
        if rng.version == net.version and net.subnet_of(rng):  # type: ignore[arg-type]
            return rng
    return None


def linear_scan(
    by_cluster: dict[str, list[_Rule]], routes: tuple[str, ...], ip: str
) -> tuple[PortSet | None, str]:
    routed = [r for r in dict.fromkeys(routes) if r in by_cluster]
    addr = parse_ip(ip)
    if addr is None:
        return None, ""
    special = linear_special_range(ip_network(addr))
    ports: PortSet | None = None
    cluster = ""
    for name in routed:
        for rule in by_cluster[name]:
            if rule.network.version != addr.version:
                continue
            if addr in rule.network and (special is None or special in rule.inside):
                cluster = cluster or rule.cluster
                ports = rule.ports if ports is None else ports | rule.ports
    return ports, cluster


# Addresses to build networks and peers around, so that rules overlap and peers hit them:
# special ranges' own addresses, their edges, globals, and the mapped space.
SEEDS_V4 = [
    "0.0.0.0",
    "10.1.2.3",
    "127.0.0.1",
    "169.254.169.254",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "198.18.0.1",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "93.184.216.34",
    "8.8.8.8",
    "11.0.0.1",
]
SEEDS_V6 = [
    "::",
    "::1",
    "::7f00:1",
    "64:ff9b::808:808",
    "64:ff9b:1::1",
    "2001::1",
    "2001:db8::1",
    "2002:808:808::1",
    "fd00::1",
    "fe80::1",
    "ff02::1",
    "2606:4700::1111",
    "100::1",
]


@st.composite
def addresses(draw: st.DrawFn) -> str:
    v6 = draw(st.booleans())
    seed = ip_address(draw(st.sampled_from(SEEDS_V6 if v6 else SEEDS_V4)))
    bits = 128 if v6 else 32
    flip = draw(st.integers(0, bits - 1))
    value = int(seed) ^ (draw(st.booleans()) << flip) if draw(st.booleans()) else int(seed)
    addr: IPv4Address | IPv6Address = IPv6Address(value) if v6 else IPv4Address(value)
    if not v6 and draw(st.integers(0, 3)) == 0:
        return f"::ffff:{addr}"  # the mapped form of an IPv4 address
    return str(addr)


@st.composite
def endpoints(draw: st.DrawFn) -> str:
    addr = draw(addresses())
    bits = 128 if ":" in addr else 32
    text = f"{addr}/{draw(st.integers(0, bits))}" if draw(st.booleans()) else addr
    if draw(st.booleans()):
        lo = draw(st.integers(1, 65535))
        hi = draw(st.integers(lo, min(65535, lo + draw(st.sampled_from([0, 10, 5000, 65535])))))
        text += f":<{lo}-{hi}>"
    return text


@st.composite
def configs(draw: st.DrawFn) -> tuple[StunnerConfig, dict[str, list[str]]]:
    names = ["a", "b", "c"]
    clusters = []
    resolved: dict[str, list[str]] = {}
    for name in names:
        eps = draw(st.lists(endpoints(), max_size=8))
        if draw(st.booleans()):
            host = f"{name}.svc.test"
            resolved[host] = draw(st.lists(addresses(), max_size=6))
            clusters.append(ClusterConfig(name=name, type="STRICT_DNS", endpoints=(host, *eps)))
        else:
            clusters.append(ClusterConfig(name=name, type="STATIC", endpoints=tuple(eps)))
    routes = tuple(draw(st.lists(st.sampled_from([*names, "missing"]), max_size=5)))
    config = StunnerConfig(
        auth=AuthConfig(username="u", password="p"),
        listeners=(ListenerConfig(name="l", protocol="TURN-UDP", routes=routes),),
        clusters=tuple(clusters),
    )
    return config, resolved


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.lists(addresses(), min_size=1, max_size=12))
def test_indexed_verdict_equals_the_linear_scan(
    setup: tuple[StunnerConfig, dict[str, list[str]]], peers: list[str]
) -> None:
    config, resolved = setup
    access = PeerAccess.from_config(config, resolved)
    by_cluster = {c.name: _cluster_rules(c, resolved) for c in config.clusters}
    for peer in peers:
        ports, cluster = linear_scan(by_cluster, config.listeners[0].routes, peer)
        assert access.ports_for("l", peer) == ports, peer
        assert access.cluster_for("l", peer) == cluster, peer


@given(addresses(), st.integers(0, 128))
def test_special_range_equals_the_linear_walk(addr: str, length: int) -> None:
    ip = parse_ip(addr)
    assert ip is not None
    net = ip_network(f"{ip}/{min(length, ip.max_prefixlen)}", strict=False)
    assert special_range(net) == linear_special_range(net)


def test_many_rules_one_network_merge_their_ports_and_keep_the_first_cluster() -> None:
    clusters = (
        ClusterConfig(name="first", endpoints=tuple(f"10.0.0.1:<{p}-{p}>" for p in range(1, 500))),
        ClusterConfig(name="second", endpoints=("10.0.0.0/8:<600-700>",)),
    )
    config = StunnerConfig(
        auth=AuthConfig(username="u", password="p"),
        listeners=(ListenerConfig(name="l", protocol="TURN-UDP", routes=("second", "first")),),
        clusters=clusters,
    )
    access = PeerAccess.from_config(config)
    assert access.ports_for("l", "10.0.0.1") == PortSet.range(1, 499) | PortSet.range(600, 700)
    assert access.cluster_for("l", "10.0.0.1") == "second"  # routes say "second" first
    assert access.ports_for("l", "10.0.0.2") == PortSet.range(600, 700)
