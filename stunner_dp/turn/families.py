"""Address families (RFC 6156): what a listener offers for relays, and what an address is."""

from __future__ import annotations

import functools
import ipaddress

from stunner_dp import stun
from stunner_dp.config import ListenerConfig
from stunner_dp.turn.types import Addr


@functools.lru_cache(maxsize=256)
def listener_family(listener: ListenerConfig) -> int:
    try:
        version = ipaddress.ip_address(listener.address or "0.0.0.0").version
    except ValueError:
        version = 4
    return stun.FAMILY_IPV6 if version == 6 else stun.FAMILY_IPV4


@functools.lru_cache(maxsize=256)
def relay_families(listener: ListenerConfig) -> frozenset[int]:
    """The relay families a listener offers: its address's, and the other one as well with
    `additional_address` or a dual-stack `address: "::"` (RFC 6156, RFC 8656 dual stack)."""
    if listener.additional_address or listener.address == "::":
        return frozenset((stun.FAMILY_IPV4, stun.FAMILY_IPV6))
    return frozenset((listener_family(listener),))


def address_family(ip: str) -> int:
    return stun.FAMILY_IPV6 if ":" in ip else stun.FAMILY_IPV4


def normalize_peer(addr: Addr) -> Addr:
    """An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is that IPv4 peer, for rules and for sending."""
    ip = addr[0]
    if ip.startswith("::ffff:"):  # the codec writes them in hex: ::ffff:7f00:1
        mapped = ipaddress.IPv6Address(ip).ipv4_mapped
        if mapped is not None:
            return (str(mapped), addr[1])
    return addr
