"""RFC 6156 / RFC 8656 address families: a relay of the family the client asks for, whichever
family it came over; dual allocations (ADDITIONAL-ADDRESS-FAMILY) with per-family permissions,
channels, Send indications and Refresh; 440 and 443 only where the RFC says."""

from __future__ import annotations

import pytest
from helpers.turn_harness import (
    CLIENT,
    PEER,
    RELAY_IP,
    RELAY_IP6,
    UDP_TRANSPORT,
    Client,
    Harness,
    assert_success,
    error_code,
    make_config,
)

from stunner_dp import stun
from stunner_dp.config import ConfigError, ListenerConfig, parse_config
from stunner_dp.stun import Message

ALLOCATE = stun.METHOD_ALLOCATE
PEER6 = ("2606:4700::1111", 7000)  # a global IPv6 address: the wildcard cluster covers it
CLIENT6 = ("2001:db8::77", 5000)
ROUTES = ("public", "local")
V4 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV4))]
V6 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]
DUAL = [(stun.ATTR_ADDITIONAL_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]


def dual_harness(**listener: str) -> Harness:
    """Listener "udp46": IPv4 `address`, IPv6 `additional_address` (or what `listener` says)."""
    fields = {"address": RELAY_IP, "additional_address": RELAY_IP6, **listener}
    lis = ListenerConfig(name="udp46", protocol="TURN-UDP", routes=ROUTES, **fields)  # type: ignore[arg-type]
    plain = ListenerConfig(name="udp", protocol="TURN-UDP", address=RELAY_IP, routes=ROUTES)
    return Harness(make_config(listeners=(lis, plain)))


def relayed(resp: Message) -> list[tuple[str, int]]:
    return [
        stun.decode_xor_address(v, resp.transaction_id)
        for v in resp.get_all(stun.ATTR_XOR_RELAYED_ADDRESS)
    ]


def address_error(resp: Message) -> tuple[int, int] | None:
    raw = resp.get(stun.ATTR_ADDRESS_ERROR_CODE)
    return None if raw is None else stun.decode_address_error_code(raw)[:2]


def dual_client(h: Harness, addr: tuple[str, int] = CLIENT) -> tuple[Client, Message]:
    c = h.client(addr, listener="udp46")
    resp = c.allocate(UDP_TRANSPORT + DUAL)
    assert_success(resp, ALLOCATE)
    return c, resp


@pytest.mark.parametrize(
    ("client", "asked", "relay_ip"),
    [
        (CLIENT, V6, RELAY_IP6),  # an IPv4 client asks for an IPv6 relay
        (CLIENT6, V4, RELAY_IP),  # an IPv6 client asks for an IPv4 relay
        (CLIENT, V4, RELAY_IP),
        (CLIENT6, V6, RELAY_IP6),
        (CLIENT6, [], RELAY_IP),  # none asked: IPv4 (RFC 8656 7.2), whatever the client's
    ],
    ids=["v4-asks-v6", "v6-asks-v4", "v4-asks-v4", "v6-asks-v6", "v6-asks-none"],
)
def test_requested_family_is_honoured_in_both_directions(
    client: tuple[str, int], asked: list[tuple[int, bytes]], relay_ip: str
) -> None:
    h = dual_harness()
    resp = h.client(client, listener="udp46").allocate(UDP_TRANSPORT + asked)
    assert_success(resp, ALLOCATE)
    assert [ip for ip, _ in relayed(resp)] == [relay_ip]
    assert address_error(resp) is None


def test_wildcard_dual_stack_address_offers_both_families_ipv4_by_default() -> None:
    h = dual_harness(address="::", additional_address="")
    c = h.client(CLIENT6, listener="udp46")
    assert [ip for ip, _ in relayed(c.allocate())] == ["0.0.0.0"]  # the fake's IPv4 wildcard
    c6 = h.client(("2001:db8::78", 5000), listener="udp46")
    assert [ip for ip, _ in relayed(c6.allocate(UDP_TRANSPORT + V6))] == ["::"]


def test_family_not_offered_is_still_440() -> None:
    h = dual_harness()
    assert error_code(h.client(listener="udp").allocate(UDP_TRANSPORT + V6)) == 440


def test_dual_allocation_has_an_ipv4_and_an_ipv6_relay() -> None:
    h = dual_harness()
    c, resp = dual_client(h)
    addrs = relayed(resp)
    assert [ip for ip, _ in addrs] == [RELAY_IP, RELAY_IP6]  # IPv4 first (RFC 8656 7.2)
    assert address_error(resp) is None
    alloc = h.allocation(c)
    assert [r.address for r in alloc.relays] == addrs
    assert all(r.attached is alloc for r in h.relays.handles)
    assert h.server.allocation_count == 1


def test_dual_allocation_relays_each_family_from_its_own_relay() -> None:
    h = dual_harness()
    c, _ = dual_client(h)
    alloc = h.allocation(c)
    relay4, relay6 = alloc.relays
    assert_success(c.create_permission(PEER, PEER6), stun.METHOD_CREATE_PERMISSION)
    assert_success(c.channel_bind(0x4000, PEER), stun.METHOD_CHANNEL_BIND)
    assert_success(c.channel_bind(0x4001, PEER6), stun.METHOD_CHANNEL_BIND)
    assert [(s, a) for s, a, _ in c.channel_data(0x4000, b"four")] == [(relay4, PEER)]
    assert [(s, a) for s, a, _ in c.channel_data(0x4001, b"six")] == [(relay6, PEER6)]
    assert [(s, a) for s, a, _ in c.send_indication(PEER6, b"ind6")] == [(relay6, PEER6)]
    assert [(s, a) for s, a, _ in c.send_indication(PEER, b"ind4")] == [(relay4, PEER)]
    # the kernel fast path's announcements go to the channel's own relay
    assert set(relay4.offloaded) == {(0x4000, PEER)}
    assert set(relay6.offloaded) == {(0x4001, PEER6)}
    # peers of either family reach the client through the one allocation
    out = h.server.handle_peer_data(alloc, PEER6, b"back6")
    assert [(a, raw[:2]) for _, a, raw in out] == [(CLIENT, b"\x40\x01")]


def test_dual_allocation_partial_success_says_why_in_address_error_code() -> None:
    h = dual_harness()
    h.relays.refused_families.add(stun.FAMILY_IPV6)  # no IPv6 relay port free
    c, resp = dual_client(h)
    assert [ip for ip, _ in relayed(resp)] == [RELAY_IP]
    assert address_error(resp) == (stun.FAMILY_IPV6, 508)
    # no IPv6 relay: an IPv6 peer is the wrong family
    assert error_code(c.create_permission(PEER6)) == 443
    assert_success(c.create_permission(PEER), stun.METHOD_CREATE_PERMISSION)


def test_dual_request_on_a_single_family_listener_gets_its_relay_and_440_for_the_other() -> None:
    h = Harness()  # "udp" IPv4 only, "udp6" IPv6 only
    resp = h.client(CLIENT6, listener="udp6").allocate(UDP_TRANSPORT + DUAL)
    assert_success(resp, ALLOCATE)
    assert [ip for ip, _ in relayed(resp)] == [RELAY_IP6]
    assert address_error(resp) == (stun.FAMILY_IPV4, 440)


def test_dual_request_with_reservation_token_is_400() -> None:
    h = dual_harness()
    token = [(stun.ATTR_RESERVATION_TOKEN, b"12345678")]
    assert error_code(h.client(listener="udp46").allocate(UDP_TRANSPORT + DUAL + token)) == 400
    assert h.relays.open_ports == set()


def test_peer_of_a_family_without_relay_is_443() -> None:
    h = dual_harness()
    c = h.client(listener="udp46")
    assert_success(c.allocate(UDP_TRANSPORT + V6), ALLOCATE)
    assert error_code(c.create_permission(PEER)) == 443
    assert error_code(c.channel_bind(0x4000, PEER)) == 443
    assert_success(c.create_permission(PEER6), stun.METHOD_CREATE_PERMISSION)


def test_refresh_of_one_family_of_a_dual_allocation() -> None:
    h = dual_harness()
    c, _ = dual_client(h)
    alloc = h.allocation(c)
    relay4, relay6 = alloc.relays
    assert_success(c.create_permission(PEER, PEER6), stun.METHOD_CREATE_PERMISSION)
    assert_success(c.channel_bind(0x4001, PEER6), stun.METHOD_CHANNEL_BIND)
    life = [(stun.ATTR_LIFETIME, stun.encode_u32(1200))]
    assert_success(c.request(stun.METHOD_REFRESH, life + V6), stun.METHOD_REFRESH)
    # LIFETIME 0 with the IPv6 family: that relay goes, with its permissions and channels
    zero = [(stun.ATTR_LIFETIME, stun.encode_u32(0))]
    assert_success(c.request(stun.METHOD_REFRESH, zero + V6), stun.METHOD_REFRESH)
    assert relay6.closed and not relay4.closed
    assert h.has_allocation(c) and alloc.relays == (relay4,)
    assert PEER6[0] not in alloc.permissions and not alloc.channels
    assert relay6.offloaded == {}
    assert c.channel_data(0x4001, b"x") == []
    assert error_code(c.create_permission(PEER6)) == 443
    # that family is gone now: naming it again is the wrong family
    assert error_code(c.request(stun.METHOD_REFRESH, life + V6)) == 443
    assert_success(c.request(stun.METHOD_REFRESH, life + V4), stun.METHOD_REFRESH)


def test_refresh_without_family_and_lifetime_zero_deletes_both_relays() -> None:
    h = dual_harness()
    c, _ = dual_client(h)
    relay4, relay6 = h.allocation(c).relays
    assert_success(c.refresh(0), stun.METHOD_REFRESH)
    assert relay4.closed and relay6.closed and not h.has_allocation(c)


def test_dual_stack_socket_client_is_told_its_ipv4_address() -> None:
    # an IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d
    h = dual_harness()
    c = h.client(("::ffff:c000:20a", 40000), listener="udp46")
    resp = c.allocate()
    raw = resp.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    assert raw is not None
    assert stun.decode_xor_address(raw, resp.transaction_id) == CLIENT


def _listener_doc(**extra: str) -> dict[str, object]:
    lis = {"name": "l", "protocol": "TURN-UDP", "port": 3478, "routes": [], **extra}
    return {
        "version": "v1",
        "admin": {},
        "auth": {"type": "static", "credentials": {"username": "u", "password": "p"}},
        "listeners": [lis],
        "clusters": [],
    }


def test_additional_address_of_the_same_family_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_listener_doc(address="10.0.0.1", additional_address="10.0.0.2"))
    assert "listeners[0].additional_address" in str(err.value)
    assert "IPv6" in str(err.value)
    cfg = parse_config(_listener_doc(address="10.0.0.1", additional_address="fd00::1"))
    assert cfg.listeners[0].additional_address == "fd00::1"
    assert cfg.listeners[0].to_dict()["additional_address"] == "fd00::1"
