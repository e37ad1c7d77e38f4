"""Cluster endpoint syntax, shared by validation and by peer access.

An endpoint is an IP, a CIDR or (STRICT_DNS) a hostname, optionally followed by a peer port
range written `:<min-max>`: "10.0.0.0/8:<5000-6000>", "::1:<3478-3479>", "[::1]:<1-2>",
"media.default.svc.cluster.local:<10000-20000>". The `:<` marker splits address from range, so
IPv6 needs no brackets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

__all__ = [
    "Endpoint",
    "IPAddress",
    "IPNetwork",
    "NetKey",
    "ip_value",
    "net_of_key",
    "normalize_ip",
    "normalize_network",
    "parse_endpoint",
    "parse_ip",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_MAPPED = IPv6Network("::ffff:0:0/96")
_RANGE = re.compile(r"<(\d{1,5})-(\d{1,5})>")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")

STATIC_SYNTAX = 'an IP or CIDR, optionally followed by ":<min-max>" (e.g. "10.0.0.0/8:<5000-6000>")'
DNS_SYNTAX = 'a hostname, optionally followed by ":<min-max>" (e.g. "media.ns.svc:<5000-6000>")'


# A network as plain integers: (IP version, prefix length, network address as an int, host
# bits zero), IPv4-mapped forms folded to IPv4. Peer rules are built and indexed from these:
# an ipaddress object costs ~10 us to make, and a config may hold 100,000 endpoints.
NetKey = tuple[int, int, int]


@dataclass(frozen=True)
class Endpoint:
    host: str  # the address part as written, brackets stripped
    key: NetKey | None  # None: a hostname, to be resolved elsewhere
    min_port: int = 0
    max_port: int = 65535

    @property
    def any_port(self) -> bool:
        return self.min_port <= 1 and self.max_port == 65535

    @property
    def network(self) -> IPNetwork | None:
        return None if self.key is None else net_of_key(self.key)


def net_of_key(key: NetKey) -> IPNetwork:
    version, length, value = key
    return IPv4Network((value, length)) if version == 4 else IPv6Network((value, length))


def normalize_ip(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address it carries."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def normalize_network(net: IPNetwork) -> IPNetwork:
    """A network inside ::ffff:0:0/96 is the IPv4 network it maps."""
    if isinstance(net, IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        return IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def parse_ip(text: str) -> IPAddress | None:
    """The address in `text` (mapped forms folded to IPv4), or None: never raises."""
    try:
        return normalize_ip(ip_address(text.strip()))
    except ValueError:
        return None


def _parse_network(text: str) -> IPNetwork | None:
    try:
        if "/" in text:
            return normalize_network(ip_network(text, strict=False))
        return normalize_network(ip_network(ip_address(text)))
    except ValueError:
        return None


_V4_MAPPED_HIGH = 0xFFFF  # ::ffff:0:0/96, shifted right by 32
_HEX = frozenset("0123456789abcdefABCDEF")


def _v4_int(text: str) -> int | None:
    """Dotted quad to int, strict (no leading zeros, as ipaddress); None: let ipaddress say."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()):
            return None
        if part[0] == "0" and len(part) > 1:
            return None
        octet = int(part)
        if octet > 255:
            return None
        value = value << 8 | octet
    return value


def _v6_int(text: str) -> int | None:
    """The common IPv6 forms to int (hextets, one "::", a dotted quad last); None for anything
    else (zone index, errors), which ipaddress then judges. Pure Python: the state machine may
    not load `socket` (tests/test_layering.py), and ipaddress objects cost ~10 us each."""
    head, gap, tail = text.partition("::")
    if "::" in tail:
        return None
    first = head.split(":") if head else []
    last = tail.split(":") if tail else []
    groups = last if gap else first
    words: list[int] = []
    if groups and "." in groups[-1]:
        v4 = _v4_int(groups[-1])
        if v4 is None:
            return None
        groups[-1:] = []
        quad = [v4 >> 16, v4 & 0xFFFF]
    else:
        quad = []
    for part in (*first, *last) if gap else first:
        if not 0 < len(part) <= 4 or not _HEX.issuperset(part):
            return None
        words.append(int(part, 16))
    count = len(words) + len(quad)
    if gap:
        if count > 7:
            return None
        head_words = words[: len(first)]
        tail_words = words[len(first) :] + quad
        words = head_words + [0] * (8 - count) + tail_words
    else:
        if count != 8:
            return None
        words += quad
    value = 0
    for word in words:
        value = value << 16 | word
    return value


def _address_int(text: str) -> tuple[int, int] | None:
    """(bits, value) of an address in its common forms; None: ask ipaddress."""
    if ":" in text:
        value = _v6_int(text)
        return None if value is None else (128, value)
    value = _v4_int(text)
    return None if value is None else (32, value)


def ip_value(text: str) -> tuple[int, int] | None:
    """(version, address as an int) of `text`, mapped forms folded to IPv4; None when it is no
    address. As `parse_ip` (equal results), at a fraction of the cost: the common forms are
    read here, ipaddress judges the rest (e.g. a zone index, and every error)."""
    text = text.strip()
    found = _address_int(text)
    if found is None:
        addr = parse_ip(text)
        return None if addr is None else (addr.version, int(addr))
    bits, value = found
    if bits == 32:
        return 4, value
    if value >> 32 == _V4_MAPPED_HIGH:
        return 4, value & 0xFFFFFFFF
    return 6, value


_PREFIX = re.compile(r"[0-9]{1,3}")


def _network_key(text: str) -> NetKey | None:
    """The network in `text` (an address, or address/prefix length; host bits dropped), as
    `_parse_network` reads it, in integers."""
    addr, slash, length_text = text.partition("/")
    if slash and _PREFIX.fullmatch(length_text) is None:  # a netmask form: ipaddress's case
        net = _parse_network(text)
        return None if net is None else (net.version, net.prefixlen, int(net.network_address))
    found = _address_int(addr)
    if found is None:
        net = _parse_network(text)
        return None if net is None else (net.version, net.prefixlen, int(net.network_address))
    bits, value = found
    length = int(length_text) if slash else bits
    if length > bits:
        return None
    value &= ~((1 << (bits - length)) - 1)  # strict=False: host bits go
    # a network inside ::ffff:0:0/96 is the IPv4 network it maps (normalize_network)
    if bits == 128 and length >= 96 and value >> 32 == _V4_MAPPED_HIGH:
        return 4, length - 96, value & 0xFFFFFFFF
    return (4 if bits == 32 else 6), length, value


def parse_endpoint(text: str, *, dns: bool = False) -> Endpoint:
    """Parse one endpoint; raises ValueError saying what is wrong and what is allowed."""
    addr, lo, hi = text.strip(), 0, 65535
    if addr.endswith(">") and ":<" in addr:
        addr, rng = addr.rsplit(":", 1)
        m = _RANGE.fullmatch(rng)
        if m is None:
            raise ValueError("a port range is written :<min-max>, e.g. :<5000-6000>")
        lo, hi = int(m.group(1)), int(m.group(2))
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"port range <{lo}-{hi}> must satisfy 1 <= min <= max <= 65535")
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    key = _network_key(addr)
    if key is None:
        # an IP literal in a STRICT_DNS cluster resolves to itself, so both are fine there
        if not dns:
            raise ValueError(f"must be {STATIC_SYNTAX}")
        if len(addr) > 254 or _HOSTNAME.fullmatch(addr) is None:
            raise ValueError(f"must be {DNS_SYNTAX}")
    return Endpoint(host=addr, key=key, min_port=lo, max_port=hi)
