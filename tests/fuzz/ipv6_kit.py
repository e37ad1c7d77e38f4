"""The IPv6 world of the fuzz target: a state machine whose listeners offer relays of both
families, where an IPv4 client holds an IPv6-relay allocation (REQUESTED-ADDRESS-FAMILY) and an
IPv6 client a dual one (ADDITIONAL-ADDRESS-FAMILY), each with a channel to an IPv6 peer (one
of them per input: the one of the source's family); and the
seeds that speak to it (IPv6 XOR-PEER-ADDRESS, family attributes, IPv6 XOR-RELAYED-ADDRESS).

Built on tests/helpers/hostile_kit.py (the IPv4 world); imports no atheris, so the tests can
check that the seeds reach the paths they were written for."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from helpers.hostile_kit import (
    KEY,
    NOW,
    OTHER_PEER,
    OWNER,
    PEER,
    REALM,
    RELAY_IP,
    SOFTWARE,
    STRANGER,
    UDP,
    Attrs,
    FakeRelay,
    FakeRelays,
    build,
    ctx,
    peer_attr,
    sm_config,
)
from helpers.hostile_kit import REST_KEY as _REST_KEY
from helpers.hostile_kit import REST_USER as _REST_USER
from helpers.hostile_kit import USER as _USER

from stunner_dp import stun
from stunner_dp.config import ListenerConfig, StunnerConfig
from stunner_dp.turn.auth import long_term_key
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr, Context

RELAY_IP6 = "2001:db8::1"
OWNER6: Addr = ("2001:db8:1::10", 40000)  # holds a dual allocation in `loaded_dual_server`
STRANGER6: Addr = ("2001:db8:1::66", 40666)  # holds none
PEER6: Addr = ("2606:4700::1111", 7000)  # global; channel 0x4000 of both owners
OTHER_PEER6: Addr = ("2606:4700::2222", 7001)  # global, not permitted
V4_CHANNEL = 0x4002  # OWNER6's channel to the IPv4 PEER, on the IPv4 relay of its dual allocation
# peers a family check and the peer rules must survive: IPv4-mapped, loopback, link-local,
# multicast, unspecified, NAT64, documentation
ODD_PEERS6: tuple[Addr, ...] = (
    ("::ffff:93.184.216.35", 7001),
    ("::1", 7000),
    ("fe80::1", 7000),
    ("ff02::1", 7000),
    ("::", 0),
    ("64:ff9b::5db8:d822", 7000),
    ("2001:db8::1", 7000),
)

V4 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV4))]
V6 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]
DUAL = [(stun.ATTR_ADDITIONAL_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]


class FamilyRelays(FakeRelays):
    """FakeRelays whose IPv6 relays have an IPv6 address (the ports are shared)."""

    def open(
        self, listener: ListenerConfig, family: int, *, even: bool = False, pair: bool = False
    ) -> tuple[FakeRelay, FakeRelay | None] | None:
        opened = super().open(listener, family, even=even, pair=pair)
        if opened is not None and family == stun.FAMILY_IPV6:
            for relay in opened:
                if relay is not None:
                    relay.address = (RELAY_IP6, relay.address[1])
        return opened


@functools.cache  # frozen; one object keeps the state machine's per-listener caches warm
def dual_config(*, ephemeral: bool = False) -> StunnerConfig:
    """UDP: an IPv4 address with an IPv6 additional_address; TCP: dual-stack "::"."""
    listeners = (
        ListenerConfig(
            name="udp",
            protocol="TURN-UDP",
            address=RELAY_IP,
            additional_address=RELAY_IP6,
            routes=("pub",),
        ),
        ListenerConfig(name="tcp", protocol="TURN-TCP", address="::", routes=("pub",)),
    )
    return dataclasses.replace(sm_config(ephemeral=ephemeral), listeners=listeners)


def new_dual_server(*, ephemeral: bool = False) -> TurnServer:
    return TurnServer(
        dual_config(ephemeral=ephemeral),
        FamilyRelays(),  # type: ignore[arg-type]  # FakeRelay is a RelayHandle in all but name
        nonce_secret=b"s" * 32,
        software=SOFTWARE,
    )


def _bind(channel: int, peer: Addr) -> Callable[[bytes], Attrs]:
    return lambda tid: [
        (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(channel)),
        *peer_attr(peer)(tid),
    ]


def _setup_steps(client: Addr) -> list[tuple[int, Callable[[bytes], Attrs] | Attrs]]:
    if client == OWNER6:
        return [
            (stun.METHOD_ALLOCATE, UDP + DUAL),
            (stun.METHOD_CHANNEL_BIND, _bind(0x4000, PEER6)),
            (stun.METHOD_CHANNEL_BIND, _bind(V4_CHANNEL, PEER)),
        ]
    return [(stun.METHOD_ALLOCATE, UDP + V6), (stun.METHOD_CHANNEL_BIND, _bind(0x4000, PEER6))]


@functools.cache
def _setup_messages(client: Addr, ephemeral: bool) -> tuple[bytes, ...]:
    """The requests that load an owner's allocation, built once (the nonces are stateless and
    the server is new for every input, so the same bytes do every time)."""
    key, username = (_REST_KEY, _REST_USER) if ephemeral else (KEY, _USER)
    nonce = new_dual_server(ephemeral=ephemeral).nonce_for(ctx(client), NOW)
    return tuple(
        build(method, attrs, key=key, nonce=nonce, username=username)
        for method, attrs in _setup_steps(client)
    )


def loaded_dual_server(owner: Addr = OWNER, *, ephemeral: bool = False) -> TurnServer:
    """The IPv6 world with one allocation (one, so an input costs what one in the IPv4 world
    does): OWNER's has an IPv6 relay and channel 0x4000 to PEER6; OWNER6's is dual, with
    channel 0x4000 to PEER6 and V4_CHANNEL to PEER. With `ephemeral`, made by REST_USER."""
    turn = new_dual_server(ephemeral=ephemeral)
    c = ctx(owner)
    for data in _setup_messages(owner, ephemeral):
        out = turn.handle_stun(c, data, NOW)
        assert out and stun.parse_message(out[0][2]).cls == stun.CLASS_SUCCESS, owner
    turn.drain_events()
    return turn


def owner_of(selector: int) -> Addr:
    """Selector bit 32: the IPv6 client, else the IPv4 one."""
    return OWNER6 if selector & 32 else OWNER


def source(selector: int) -> Addr:
    """Selector bit 1: the owner, else the stranger of the same family (bit 32: IPv6)."""
    if selector & 1:
        return owner_of(selector)
    return STRANGER6 if selector & 32 else STRANGER


def snapshot_families(turn: TurnServer) -> object:
    """Both relays of every allocation (hostile_kit's snapshot sees the first only)."""
    return sorted(
        (name, client, tuple(r.address for r in a.relays))
        for name, table in turn.allocations.items()
        for client, a in table.items()
    )


# -- seeds ------------------------------------------------------------------------------------


def _family_attr(attr: int, family: int) -> Attrs:
    return [(attr, family.to_bytes(1, "big") + b"\0\0\0")]


def ipv6_bodies() -> list[tuple[int, Callable[[bytes], Attrs]]]:
    """Requests that speak IPv6: family attributes on Allocate and Refresh, IPv6 and odd peers
    in CreatePermission and ChannelBind."""
    req, add = stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.ATTR_ADDITIONAL_ADDRESS_FAMILY
    even = [(stun.ATTR_EVEN_PORT, stun.encode_even_port(True))]
    lifetime0 = [(stun.ATTR_LIFETIME, stun.encode_u32(0))]
    bodies: list[tuple[int, Callable[[bytes], Attrs]]] = [
        (stun.METHOD_ALLOCATE, lambda tid: UDP + V6),
        (stun.METHOD_ALLOCATE, lambda tid: UDP + V4),
        (stun.METHOD_ALLOCATE, lambda tid: UDP + DUAL),
        (stun.METHOD_ALLOCATE, lambda tid: UDP + DUAL + even),
        (stun.METHOD_ALLOCATE, lambda tid: UDP + V6 + DUAL),  # both: 400
        (stun.METHOD_ALLOCATE, lambda tid: UDP + _family_attr(add, 0x01)),  # IPv4: 400
        (stun.METHOD_ALLOCATE, lambda tid: UDP + _family_attr(req, 0x03)),  # no such family
        (stun.METHOD_ALLOCATE, lambda tid: [*UDP, (req, b"\x02")]),  # short
        (stun.METHOD_REFRESH, lambda tid: V6 + lifetime0),  # a dual allocation drops IPv6
        (stun.METHOD_REFRESH, lambda tid: V4 + lifetime0),
        (stun.METHOD_REFRESH, lambda tid: [*V6, (stun.ATTR_LIFETIME, stun.encode_u32(900))]),
        (stun.METHOD_CREATE_PERMISSION, peer_attr(PEER6)),
        (stun.METHOD_CREATE_PERMISSION, peer_attr(OTHER_PEER6)),
        (
            stun.METHOD_CREATE_PERMISSION,
            lambda tid: peer_attr(OTHER_PEER6)(tid) + peer_attr(OTHER_PEER)(tid),
        ),
        (stun.METHOD_CHANNEL_BIND, _bind(0x4001, OTHER_PEER6)),
        (stun.METHOD_CHANNEL_BIND, _bind(0x4000, PEER6)),  # a refresh of the bound channel
        (stun.METHOD_CHANNEL_BIND, _bind(0x4003, OTHER_PEER)),  # IPv4 peer: 443 or a v4 relay
    ]
    for odd in ODD_PEERS6:
        bodies.append((stun.METHOD_CREATE_PERMISSION, peer_attr(odd)))
        bodies.append((stun.METHOD_CHANNEL_BIND, _bind(0x4005, odd)))
    return bodies


def _sends() -> list[bytes]:
    out = []
    for peer in (PEER6, OTHER_PEER6, PEER, *ODD_PEERS6[:3]):
        attrs = lambda tid, p=peer: [*peer_attr(p)(tid), (stun.ATTR_DATA, b"x" * 40)]  # noqa: E731
        out.append(build(stun.METHOD_SEND, attrs, cls=stun.CLASS_INDICATION))
    return out


def _answers() -> list[bytes]:
    """Answers as a server sends them: IPv6 XOR-RELAYED-ADDRESS (both of a dual allocation),
    XOR-MAPPED-ADDRESS, ADDRESS-ERROR-CODE and MAPPED-ADDRESS (for the codec; the state
    machine ignores what is no request)."""
    refused = stun.encode_address_error_code(stun.FAMILY_IPV6, 440)

    def success(tid: bytes) -> Attrs:
        return [
            (stun.ATTR_XOR_RELAYED_ADDRESS, stun.encode_xor_address((RELAY_IP, 30000), tid)),
            (stun.ATTR_XOR_RELAYED_ADDRESS, stun.encode_xor_address((RELAY_IP6, 30001), tid)),
            (stun.ATTR_XOR_MAPPED_ADDRESS, stun.encode_xor_address(OWNER6, tid)),
            (stun.ATTR_LIFETIME, stun.encode_u32(600)),
        ]

    def partial(tid: bytes) -> Attrs:
        return [
            (stun.ATTR_XOR_RELAYED_ADDRESS, stun.encode_xor_address((RELAY_IP, 30000), tid)),
            (stun.ATTR_ADDRESS_ERROR_CODE, refused),
        ]

    mapped = [(stun.ATTR_MAPPED_ADDRESS, stun.encode_address(OWNER6))]
    return [
        build(stun.METHOD_ALLOCATE, success, cls=stun.CLASS_SUCCESS),
        build(stun.METHOD_ALLOCATE, partial, cls=stun.CLASS_SUCCESS),
        build(stun.METHOD_BINDING, mapped, cls=stun.CLASS_SUCCESS),
        build(
            stun.METHOD_DATA,
            lambda tid: [*peer_attr(PEER6)(tid), (stun.ATTR_DATA, b"d" * 8)],
            cls=stun.CLASS_INDICATION,
        ),
    ]


def ipv6_corpus(nonce: str, *, ephemeral: bool = False) -> list[bytes]:
    """Every IPv6 body unsigned, signed right (with `nonce`) and signed with a wrong key; Send
    and Data indications to IPv6 peers; answers with IPv6 addresses; ChannelData on the
    channels the IPv6 world binds."""
    key, username = (_REST_KEY, _REST_USER) if ephemeral else (KEY, _USER)
    wrong = long_term_key(username, REALM, "not-the-password")
    out: list[bytes] = []
    for method, attrs in ipv6_bodies():
        out.append(build(method, attrs))
        out.append(build(method, attrs, key=key, nonce=nonce, username=username))
        out.append(build(method, attrs, key=wrong, nonce=nonce, username=username))
    out += _sends() + _answers()
    return out


def channel_data_seeds() -> list[bytes]:
    return [
        stun.encode_channel_data(0x4000, b"media6" * 10),
        stun.encode_channel_data(V4_CHANNEL, b"media4"),
        stun.encode_channel_data(0x4001, b""),
    ]


def nonce_of(turn: TurnServer, client: Addr, listener: str = "udp") -> str:
    """The nonce `client` gets over `listener` (nonces are bound to the transport address)."""
    c: Context = ctx(client, listener)
    return turn.nonce_for(c, NOW)
