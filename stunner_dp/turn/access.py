"""Peer access: may a client of a listener reach a peer? (RFC 8656 sec. 9 leaves it to policy.)

A peer is allowed when an endpoint of a cluster that the listener routes to covers its IP, and
its port lies in the endpoint's `:<min-max>` range (all ports when absent).

Special (non-global) addresses need an endpoint that names them on purpose: an endpoint covers a
special peer only when the endpoint network is a subnet of the peer's special range (the most
specific one in SPECIAL_RANGES that contains the peer). So "0.0.0.0/0" and "::/0" reach global
addresses alone, "10.0.0.0/8" and "10.1.0.0/16" reach 10.1.2.3, "10.0.0.0/7" does not (it is
wider than 10/8), and "240.0.0.0/4" does not reach 255.255.255.255 (broadcast is its own range).
This keeps a catch-all cluster from opening loopback, cloud metadata (169.254.169.254) or the
pod network by accident.

IPv4-mapped IPv6 (::ffff:a.b.c.d) is judged as the IPv4 address, for peers and endpoints alike.
Other IPv6 forms that embed IPv4 (IPv4-compatible, NAT64, 6to4, Teredo) are special ranges of
their own. STRICT_DNS answers count as exact host endpoints, except 0.0.0.0 and :: (DNS
sinkhole answers, which would reach the local host). Pure: this runs on CreatePermission,
ChannelBind and reconfig, not per packet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import ClassVar

from stunner_dp.config.endpoints import IPNetwork, normalize_network, parse_endpoint, parse_ip
from stunner_dp.config.model import ClusterConfig, StunnerConfig

__all__ = ["SPECIAL_RANGES", "PeerAccess", "PortSet", "special_range", "strict_dns_hosts"]

SPECIAL_RANGES: tuple[IPNetwork, ...] = tuple(
    ip_network(n)
    for n in (
        # IPv4
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # CGNAT shared space
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, incl. cloud metadata 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved
        "255.255.255.255/32",  # limited broadcast
        # IPv6 (::ffff:0:0/96 is folded to IPv4 before lookup)
        "::/128",  # unspecified
        "::1/128",  # loopback
        "::/96",  # IPv4-compatible (deprecated)
        "64:ff9b::/96",  # NAT64 well-known prefix
        "64:ff9b:1::/48",  # NAT64 local-use
        "100::/64",  # discard-only
        "2001::/32",  # Teredo
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4
        "fc00::/7",  # unique local (ULA)
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
# most specific first, so the first match is the peer's own range
_BY_SPECIFICITY = sorted(SPECIAL_RANGES, key=lambda n: -n.prefixlen)


def special_range(net: IPNetwork) -> IPNetwork | None:
    """The most specific special range containing `net` (an address as /32 or /128), if any."""
    for rng in _BY_SPECIFICITY:
        if rng.version == net.version and net.subnet_of(rng):  # type: ignore[arg-type]
            return rng
    return None


class PortSet:
    """An immutable set of ports as disjoint inclusive ranges; `port in ps` is cheap."""

    ANY: ClassVar[PortSet]
    __slots__ = ("_any", "_ranges")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        self._ranges = tuple(merged)
        # port 0 is no usable peer port, so 1-65535 counts as every port
        self._any = bool(merged) and merged[0][0] <= 1 and merged[0][1] >= 65535

    @classmethod
    def range(cls, lo: int, hi: int) -> PortSet:
        return cls(((lo, hi),))

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        return self._ranges

    @property
    def is_any(self) -> bool:
        return self._any

    def __contains__(self, port: object) -> bool:
        if self._any:
            return True
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self._ranges)

    def __or__(self, other: PortSet) -> PortSet:
        if self._any:
            return self
        if other._any:
            return other
        return PortSet(self._ranges + other._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PortSet):
            return NotImplemented
        return (self._any and other._any) or self._ranges == other._ranges

    def __hash__(self) -> int:
        return hash(True) if self._any else hash(self._ranges)

    def __repr__(self) -> str:
        if self._any:
            return "PortSet.ANY"
        return "PortSet(" + ",".join(f"{lo}-{hi}" for lo, hi in self._ranges) + ")"


PortSet.ANY = PortSet.range(0, 65535)


@dataclass(frozen=True, slots=True)
class _Rule:
    cluster: str
    network: IPNetwork
    # the special ranges this endpoint network lies inside: it may reach peers of those only
    inside: frozenset[IPNetwork]
    ports: PortSet


def _rule(cluster: str, network: IPNetwork, ports: PortSet) -> _Rule:
    network = normalize_network(network)
    inside = frozenset(
        r
        for r in SPECIAL_RANGES
        if r.version == network.version and network.subnet_of(r)  # type: ignore[arg-type]
    )
    return _Rule(cluster, network, inside, ports)


def _lookup_dns(resolved: Mapping[str, Sequence[str]], host: str) -> Sequence[str]:
    found = resolved.get(host)
    if found is None:
        found = resolved.get(host.lower().rstrip("."), ())
    return found


def _cluster_rules(cluster: ClusterConfig, resolved: Mapping[str, Sequence[str]]) -> list[_Rule]:
    rules: list[_Rule] = []
    dns = cluster.type == "STRICT_DNS"
    for text in cluster.endpoints:
        try:
            ep = parse_endpoint(text, dns=dns)
        except ValueError:
            continue  # validated configs never get here; a hand-built one fails closed
        ports = PortSet.range(ep.min_port, ep.max_port)
        if ep.network is not None:
            rules.append(_rule(cluster.name, ep.network, ports))
            continue
        for addr_text in _lookup_dns(resolved, ep.host):
            addr = parse_ip(addr_text)
            # sinkhole answers (0.0.0.0, ::) would open the local host: never honour them
            if addr is None or addr.is_unspecified:
                continue
            rules.append(_rule(cluster.name, ip_network(addr), ports))
    return rules


def strict_dns_hosts(config: StunnerConfig) -> tuple[str, ...]:
    """The hostnames to resolve for STRICT_DNS clusters: the keys `from_config` looks up."""
    hosts: dict[str, None] = {}
    for cluster in config.clusters:
        if cluster.type != "STRICT_DNS":
            continue
        for text in cluster.endpoints:
            try:
                ep = parse_endpoint(text, dns=True)
            except ValueError:
                continue
            if ep.network is None:
                hosts[ep.host] = None
    return tuple(hosts)


VERDICT_CACHE_SIZE = 4096


class PeerAccess:
    """Per-listener peer rules, precomputed from a config (and current DNS answers)."""

    def __init__(
        self, rules: Mapping[str, Sequence[_Rule]], clusters: Mapping[str, tuple[str, ...]]
    ) -> None:
        self._v4 = {
            n: tuple(r for r in rs if isinstance(r.network, IPv4Network)) for n, rs in rules.items()
        }
        self._v6 = {
            n: tuple(r for r in rs if isinstance(r.network, IPv6Network)) for n, rs in rules.items()
        }
        self._clusters = dict(clusters)
        # (listener, ip) -> (ports or None, first cluster): a peer is judged once per rule set
        # (parsing an address costs more than the rest of an Allocate)
        self._verdicts: dict[tuple[str, str], tuple[PortSet | None, str]] = {}

    @classmethod
    def from_config(
        cls, config: StunnerConfig, resolved: Mapping[str, Sequence[str]] | None = None
    ) -> PeerAccess:
        """`resolved` maps STRICT_DNS hostnames to their current IPs (resolved elsewhere)."""
        resolved = resolved or {}
        by_cluster = {c.name: _cluster_rules(c, resolved) for c in config.clusters}
        rules: dict[str, list[_Rule]] = {}
        clusters: dict[str, tuple[str, ...]] = {}
        for lis in config.listeners:
            routed = tuple(dict.fromkeys(r for r in lis.routes if r in by_cluster))
            clusters[lis.name] = routed
            rules[lis.name] = [rule for name in routed for rule in by_cluster[name]]
        return cls(rules, clusters)

    def _matching(self, listener: str, ip: str) -> Iterator[_Rule]:
        addr = parse_ip(ip)
        if addr is None:
            return
        table = self._v4 if addr.version == 4 else self._v6
        special = special_range(ip_network(addr))
        for rule in table.get(listener, ()):
            if addr in rule.network and (special is None or special in rule.inside):
                yield rule

    def _verdict(self, listener: str, ip: str) -> tuple[PortSet | None, str]:
        key = (listener, ip)
        found = self._verdicts.get(key)
        if found is None:
            ports: PortSet | None = None
            cluster = ""
            for rule in self._matching(listener, ip):
                cluster = cluster or rule.cluster
                ports = rule.ports if ports is None else ports | rule.ports
            if len(self._verdicts) >= VERDICT_CACHE_SIZE:
                self._verdicts.clear()  # bounded: peers chosen by clients must not grow it
            found = self._verdicts[key] = (ports, cluster)
        return found

    def cluster_for(self, listener: str, ip: str) -> str:
        """The first routed cluster that covers `ip` ("" if none): whom its traffic counts for."""
        return self._verdict(listener, ip)[1]

    def ports_for(self, listener: str, ip: str) -> PortSet | None:
        """The peer ports allowed for `ip` via `listener`, or None when the peer is denied."""
        return self._verdict(listener, ip)[0]

    def allowed(self, listener: str, ip: str, port: int) -> bool:
        ports = self.ports_for(listener, ip)
        return ports is not None and port in ports

    def clusters_for(self, listener: str) -> tuple[str, ...]:
        """The existing clusters `listener` routes to (for log lines such as a 403's)."""
        return self._clusters.get(listener, ())
