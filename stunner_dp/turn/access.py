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

from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_network
from typing import ClassVar, Generic, TypeVar

from stunner_dp.config.endpoints import (
    IPNetwork,
    NetKey,
    ip_value,
    net_of_key,
    parse_endpoint,
)
from stunner_dp.config.http_endpoint import admin_http_ports
from stunner_dp.config.model import ClusterConfig, StunnerConfig

__all__ = [
    "SPECIAL_RANGES",
    "OwnAddresses",
    "PeerAccess",
    "PortSet",
    "special_range",
    "strict_dns_hosts",
]

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


V = TypeVar("V")


class _PrefixIndex(Generic[V]):
    """Networks of one address family, found by the prefixes of an address: a dict from masked
    network to value for each distinct prefix length present, so a lookup costs one dict probe
    per prefix length (at most 33 or 129), however many networks there are."""

    __slots__ = ("_levels",)

    def __init__(self, bits: int, entries: Mapping[tuple[int, int], V]) -> None:
        """`entries` maps (prefix length, network as int shifted right by bits - length)."""
        by_length: dict[int, dict[int, V]] = {}
        for (length, key), value in entries.items():
            by_length.setdefault(length, {})[key] = value
        self._levels = self._ordered(bits, by_length)

    @classmethod
    def from_levels(cls, bits: int, by_length: dict[int, dict[int, V]]) -> _PrefixIndex[V]:
        """From the tables themselves: prefix length -> {network >> (bits - length): value}."""
        index = cls.__new__(cls)
        index._levels = cls._ordered(bits, by_length)
        return index

    @staticmethod
    def _ordered(
        bits: int, by_length: dict[int, dict[int, V]]
    ) -> tuple[tuple[int, dict[int, V]], ...]:
        # most specific first: callers that want the most specific match take the first one
        return tuple(
            (bits - length, table) for length, table in sorted(by_length.items(), reverse=True)
        )

    def matches(self, value: int) -> Iterator[V]:
        for shift, table in self._levels:
            found = table.get(value >> shift)
            if found is not None:
                yield found


def _bits(version: int) -> int:
    return 32 if version == 4 else 128


def _key(net: IPNetwork) -> tuple[int, int]:
    return net.prefixlen, int(net.network_address) >> (_bits(net.version) - net.prefixlen)


_SPECIAL_INDEX = {
    version: _PrefixIndex(
        _bits(version), {_key(r): r for r in SPECIAL_RANGES if r.version == version}
    )
    for version in (4, 6)
}


def _special_of(version: int, value: int) -> IPNetwork | None:
    for rng in _SPECIAL_INDEX[version].matches(value):
        return rng
    return None


def special_range(net: IPNetwork) -> IPNetwork | None:
    """The most specific special range containing `net` (an address as /32 or /128), if any."""
    for rng in _SPECIAL_INDEX[net.version].matches(int(net.network_address)):
        if net.subnet_of(rng):  # type: ignore[arg-type]
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

    def without(self, other: PortSet) -> PortSet:
        """The ports of this set that are not in `other`."""
        if not other:
            return self
        left: list[tuple[int, int]] = []
        for lo, hi in self._ranges:
            for olo, ohi in other._ranges:
                if ohi < lo or olo > hi:
                    continue
                if olo > lo:
                    left.append((lo, olo - 1))
                lo = ohi + 1
                if lo > hi:
                    break
            if lo <= hi:
                left.append((lo, hi))
        return PortSet(left)

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
    key: NetKey  # the endpoint network (config.endpoints.NetKey: integers, cheap to index)
    # the special ranges this endpoint network lies inside: it may reach peers of those only
    inside: frozenset[IPNetwork]
    ports: PortSet

    @property
    def network(self) -> IPNetwork:
        return net_of_key(self.key)


# Work between two yields of a stepwise build (`PeerAccess.build_steps`): well under a ms.
BUILD_STEP = 250


class _Work:
    """Counts a stepwise build's units of work (endpoints parsed, rules indexed) across
    clusters and listeners: `due()` says when a step is done and the build should yield."""

    __slots__ = ("_left",)

    def __init__(self) -> None:
        self._left = BUILD_STEP

    def due(self, units: int = 1) -> bool:
        self._left -= units
        if self._left > 0:
            return False
        self._left = BUILD_STEP
        return True


class _Inside:
    """`_Rule.inside` for each network, shared: most endpoints of a config lie inside the same
    few special ranges (none, or the pod network's), so the sets are made once."""

    __slots__ = ("_sets",)

    def __init__(self) -> None:
        self._sets: dict[tuple[IPNetwork, ...], frozenset[IPNetwork]] = {}

    def of(self, key: NetKey) -> frozenset[IPNetwork]:
        version, length, value = key
        # the special ranges holding the network's first address and no wider than the
        # network are those it lies inside (CIDR blocks that share an address are nested)
        found = tuple(r for r in _SPECIAL_INDEX[version].matches(value) if r.prefixlen <= length)
        shared = self._sets.get(found)
        if shared is None:
            shared = self._sets[found] = frozenset(found)
        return shared


def _lookup_dns(resolved: Mapping[str, Sequence[str]], host: str) -> Sequence[str]:
    found = resolved.get(host)
    if found is None:
        found = resolved.get(host.lower().rstrip("."), ())
    return found


def _cluster_rules_steps(
    cluster: ClusterConfig, resolved: Mapping[str, Sequence[str]], inside: _Inside, work: _Work
) -> Generator[None, None, list[_Rule]]:
    rules: list[_Rule] = []
    dns = cluster.type == "STRICT_DNS"
    port_sets: dict[tuple[int, int], PortSet] = {}
    for text in cluster.endpoints:
        if work.due():
            yield
        try:
            ep = parse_endpoint(text, dns=dns)
        except ValueError:
            continue  # validated configs never get here; a hand-built one fails closed
        span = (ep.min_port, ep.max_port)
        ports = port_sets.get(span)
        if ports is None:
            ports = port_sets[span] = PortSet.range(*span)
        if ep.key is not None:
            rules.append(_Rule(cluster.name, ep.key, inside.of(ep.key), ports))
            continue
        for addr_text in _lookup_dns(resolved, ep.host):
            found = ip_value(addr_text)
            # sinkhole answers (0.0.0.0, ::) would open the local host: never honour them
            if found is None or found[1] == 0:
                continue
            if work.due():  # a name may have many answers
                yield
            key = (found[0], _bits(found[0]), found[1])
            rules.append(_Rule(cluster.name, key, inside.of(key), ports))
    return rules


def _cluster_rules(cluster: ClusterConfig, resolved: Mapping[str, Sequence[str]]) -> list[_Rule]:
    return _run(_cluster_rules_steps(cluster, resolved, _Inside(), _Work()))


R = TypeVar("R")


def _run(steps: Generator[None, None, R]) -> R:
    """A stepwise build, all at once."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: R = done.value
            return result


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


@dataclass(frozen=True, slots=True)
class _Entry:
    """Every rule of one listener with one network, merged: their ports united, the cluster of
    the first (in route and endpoint order), which is whom the peer's traffic counts for."""

    order: int
    cluster: str
    inside: frozenset[IPNetwork]
    ports: PortSet


def _index_steps(
    rules: Sequence[_Rule], work: _Work
) -> Generator[None, None, dict[int, _PrefixIndex[_Entry]]]:
    """Both families' indexes of a listener's rules (in route and endpoint order)."""
    grouped: dict[tuple[int, int, int], list[tuple[int, _Rule]]] = {}
    for order, rule in enumerate(rules):
        if work.due():
            yield
        version, length, value = rule.key
        key = (version, length, value >> (_bits(version) - length))
        group = grouped.get(key)
        if group is None:
            grouped[key] = [(order, rule)]
        else:
            group.append((order, rule))
    levels: dict[int, dict[int, dict[int, _Entry]]] = {4: {}, 6: {}}
    for (version, length, masked), group in grouped.items():
        if work.due(len(group)):
            yield
        order, first = group[0]
        if len(group) == 1:
            ports = first.ports
        else:
            ports = PortSet(rng for _, rule in group for rng in rule.ports.ranges)
        table = levels[version].get(length)
        if table is None:
            table = levels[version][length] = {}
        table[masked] = _Entry(order, first.cluster, first.inside, ports)
    return {v: _PrefixIndex.from_levels(_bits(v), levels[v]) for v in (4, 6)}


# A listener's indexes and the rule lists (one per routed cluster) they were built from.
_Built = tuple[tuple[list[_Rule], ...], dict[int, _PrefixIndex[_Entry]]]


class PeerAccess:
    """Per-listener peer rules, precomputed from a config (and current DNS answers).

    A verdict costs the same whatever the number of rules: the rules of a listener are
    indexed by prefix (`_PrefixIndex`), so judging a peer is a probe per distinct prefix
    length, never a scan of the rules (a 10,000-endpoint cluster must not make a request
    with many peers freeze the server)."""

    def __init__(
        self,
        tables: Mapping[str, dict[int, _PrefixIndex[_Entry]]],
        clusters: Mapping[str, tuple[str, ...]],
        static_rules: Mapping[ClusterConfig, list[_Rule]] | None = None,
        built: Mapping[tuple[str, ...], _Built] | None = None,
    ) -> None:
        self._tables = dict(tables)
        self._clusters = dict(clusters)
        # what the next build may reuse: STATIC clusters' rules, listeners' indexes
        self._static_rules = dict(static_rules or {})
        self._built = dict(built or {})
        # (listener, ip) -> (ports or None, first cluster): a peer is judged once per rule set
        # (parsing an address costs more than the rest of an Allocate)
        self._verdicts: dict[tuple[str, str], tuple[PortSet | None, str]] = {}

    @classmethod
    def from_config(
        cls,
        config: StunnerConfig,
        resolved: Mapping[str, Sequence[str]] | None = None,
        previous: PeerAccess | None = None,
    ) -> PeerAccess:
        """`resolved` maps STRICT_DNS hostnames to their current IPs (resolved elsewhere)."""
        return _run(cls.build_steps(config, resolved, previous))

    @classmethod
    def build_steps(
        cls,
        config: StunnerConfig,
        resolved: Mapping[str, Sequence[str]] | None = None,
        previous: PeerAccess | None = None,
    ) -> Generator[None, None, PeerAccess]:
        """`from_config` in steps of about BUILD_STEP endpoints or rules each: the caller may
        serve between two (a config of 100,000 endpoints takes far longer to index than a
        packet may wait). STATIC clusters equal to one of `previous` keep its rules, and
        listeners whose rules are all the same keep its indexes."""
        resolved = resolved or {}
        old_static = previous._static_rules if previous is not None else {}
        old_built = previous._built if previous is not None else {}
        inside, work = _Inside(), _Work()
        static: dict[ClusterConfig, list[_Rule]] = {}
        by_cluster: dict[str, list[_Rule]] = {}
        for cluster in config.clusters:
            rules = old_static.get(cluster) if cluster.type == "STATIC" else None
            if rules is None:
                rules = yield from _cluster_rules_steps(cluster, resolved, inside, work)
            if cluster.type == "STATIC":
                static[cluster] = rules
            by_cluster[cluster.name] = rules
        tables: dict[str, dict[int, _PrefixIndex[_Entry]]] = {}
        clusters: dict[str, tuple[str, ...]] = {}
        built: dict[tuple[str, ...], _Built] = {}
        for lis in config.listeners:
            routed = tuple(dict.fromkeys(r for r in lis.routes if r in by_cluster))
            clusters[lis.name] = routed
            sources = tuple(by_cluster[name] for name in routed)
            found = built.get(routed) or old_built.get(routed)
            if (
                found is None
                or len(found[0]) != len(sources)
                or any(a is not b for a, b in zip(found[0], sources, strict=True))
            ):
                rules = [rule for source in sources for rule in source]  # ~10 ms per 100,000
                found = (sources, (yield from _index_steps(rules, work)))
            built[routed] = found
            tables[lis.name] = found[1]
        return cls(tables, clusters, static, built)

    def _judge(self, listener: str, ip: str) -> tuple[PortSet | None, str]:
        tables = self._tables.get(listener)
        found = ip_value(ip)
        if tables is None or found is None:
            return None, ""
        version, value = found
        special = _special_of(version, value)
        best: _Entry | None = None
        ranges: list[tuple[int, int]] = []
        for entry in tables[version].matches(value):
            if special is not None and special not in entry.inside:
                continue
            if best is None or entry.order < best.order:
                best = entry
            ranges.extend(entry.ports.ranges)
        if best is None:
            return None, ""
        return PortSet(ranges), best.cluster

    def _verdict(self, listener: str, ip: str) -> tuple[PortSet | None, str]:
        key = (listener, ip)
        found = self._verdicts.get(key)
        if found is None:
            if len(self._verdicts) >= VERDICT_CACHE_SIZE:
                self._verdicts.clear()  # bounded: peers chosen by clients must not grow it
            found = self._verdicts[key] = self._judge(listener, ip)
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


# Addresses that reach this host whatever its interfaces: loopback, and the unspecified
# addresses (a datagram sent to 0.0.0.0 or :: is delivered locally on Linux).
# As (version, value) keys (`ip_value`): IPv4 by its top octet, IPv6 by its whole value.
_LOCAL_V4_OCTETS = frozenset((127, 0))
_LOCAL_V6 = frozenset((0, 1))
_WITHOUT_OWN_KEPT = 256  # a bound on OwnAddresses' cache of port sets less our own


class OwnAddresses:
    """This server's own transport addresses, which no client may use as a peer whatever the
    clusters say: relaying to them would chain allocations into each other (one datagram
    crossing many relays) or feed our own listeners.

    Own ports are the listener ports, their public ports and every listener's relay port range
    (the whole range, not only the ports in use: other workers hold ports of it too, and a port
    free now may be a relay tomorrow), plus relay ports in use outside the ranges (after a
    reload moved them). They are own on every local IP, since the listeners and relays may bind
    the wildcard: loopback, the unspecified addresses, the listener and public addresses, and
    the relay addresses the server has handed out (`add_ip`, e.g. the pod IP of a wildcard
    listener). Pure: the state machine feeds it.

    `service_ports` are the own ports that are no relay (listener, public, metrics and health
    ports). A TCP allocation (RFC 6062) may have our relay ports as peers (`with_relays=False`):
    bytes a TCP relay accepts only ever go to its own client's data connection, never into
    another relay, so two TCP relays of ours connected to each other cannot chain (the state
    machine still lets a Connect reach only a live TCP relay of another allocation)."""

    __slots__ = ("_ips", "_without_own", "ports", "service_ports")

    def __init__(
        self,
        ips: Iterable[str] = (),
        ports: PortSet | None = None,
        service_ports: PortSet | None = None,
    ) -> None:
        # (version, value) keys: integers per request (ip_value), not an ipaddress object
        self._ips: set[tuple[int, int]] = set()
        self.service_ports = service_ports or PortSet()
        self.ports = (ports or PortSet()) | self.service_ports
        # (allowed, with_relays) -> allowed less our ports: the rules hold few distinct port
        # sets, and each permission to a local peer would build the same one again
        self._without_own: dict[tuple[PortSet, bool], PortSet] = {}
        for ip in ips:
            self.add_ip(ip)

    @classmethod
    def from_config(
        cls, config: StunnerConfig, ips: Iterable[str] = (), ports: Iterable[int] = ()
    ) -> OwnAddresses:
        ranges = [(p, p) for p in ports]  # relays in use
        # the metrics and health servers listen on every address of the pod: no TCP relay
        # may Connect to them (a peer reading /metrics or /status through our own relay)
        service: list[tuple[int, int]] = [(p, p) for p in admin_http_ports(config.admin)]
        addresses = list(ips)
        for lis in config.listeners:
            service.append((lis.port, lis.port))
            if lis.public_port:
                service.append((lis.public_port, lis.public_port))
            if lis.min_relay_port <= lis.max_relay_port:
                ranges.append((lis.min_relay_port, lis.max_relay_port))
            addresses += [lis.address, lis.public_address]
        return cls(
            addresses,
            PortSet(r for r in ranges if r[0] > 0),
            PortSet(r for r in service if r[0] > 0),
        )

    def add_ip(self, ip: str) -> bool:
        """Count `ip` as one of ours; True when it is new."""
        key = ip_value(ip)
        if key is None or key in self._ips:
            return False
        self._ips.add(key)
        return True

    def is_local(self, ip: str) -> bool:
        key = ip_value(ip)
        if key is None:
            return False
        if key in self._ips:
            return True
        version, value = key
        return value >> 24 in _LOCAL_V4_OCTETS if version == 4 else value in _LOCAL_V6

    def owns(self, ip: str, port: int, *, with_relays: bool = True) -> bool:
        """Is (ip, port) one of this server's transport addresses? With `with_relays` False,
        only its listener and public ports count (a TCP allocation's view)."""
        ports = self.ports if with_relays else self.service_ports
        return port in ports and self.is_local(ip)

    def peer_ports(self, ip: str, allowed: PortSet, *, with_relays: bool = True) -> PortSet:
        """The ports of `ip` that a permission may reach: `allowed` less our own if it is ours
        (less only the listener and public ports when `with_relays` is False)."""
        own = self.ports if with_relays else self.service_ports
        if own and self.is_local(ip):
            key = (allowed, with_relays)
            left = self._without_own.get(key)
            if left is None:
                if len(self._without_own) >= _WITHOUT_OWN_KEPT:
                    self._without_own.clear()
                left = self._without_own[key] = allowed.without(own)
            return left
        return allowed
