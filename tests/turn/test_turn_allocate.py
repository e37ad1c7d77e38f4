"""Binding and Allocate, driven through TurnServer.handle_stun with a fake clock and relays."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.turn_harness import (
    CLIENT,
    PASSWORD,
    REALM,
    RELAY_IP,
    RELAY_IP6,
    SECRET,
    T0,
    UDP_TRANSPORT,
    USER,
    Harness,
    assert_success,
    attr_types,
    ephemeral_auth,
    error_code,
    lifetime_of,
    lt_key,
    make_config,
    rest_password,
    xor_address,
)

from stunner_dp import stun
from stunner_dp.config import AdminConfig
from stunner_dp.turn import events as ev

ALLOCATE = stun.METHOD_ALLOCATE


# -- Binding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fingerprint", [True, False])
def test_binding_needs_no_auth_and_maps_the_client(fingerprint: bool) -> None:
    h = Harness()
    c = h.client(("203.0.113.77", 54321))
    tid = bytes(range(12))
    req = c.build(stun.METHOD_BINDING, tid=tid, auth=False, fingerprint=fingerprint)
    resp = c.transact(req)
    assert_success(resp, stun.METHOD_BINDING)
    assert resp.transaction_id == tid
    assert xor_address(resp, stun.ATTR_XOR_MAPPED_ADDRESS) == ("203.0.113.77", 54321)
    assert resp.integrity_offset == -1  # nothing to sign with
    assert (resp.fingerprint_offset >= 0) is fingerprint  # FINGERPRINT echoed, not invented
    assert h.server.allocation_count == 0
    assert h.relays.calls == []


@pytest.mark.parametrize(
    ("listener", "addr"),
    [("udp", ("192.0.2.1", 1)), ("tcp", ("192.0.2.1", 65535)), ("udp6", ("2001:db8::9", 4444))],
)
def test_binding_on_every_listener(listener: str, addr: tuple[str, int]) -> None:
    c = Harness().client(addr, listener=listener)
    resp = c.transact(c.build(stun.METHOD_BINDING, auth=False))
    assert_success(resp, stun.METHOD_BINDING)
    assert xor_address(resp, stun.ATTR_XOR_MAPPED_ADDRESS) == addr


def test_binding_ignores_a_bad_message_integrity() -> None:
    # Binding is answered without authentication even when the client signs with junk.
    c = Harness().client()
    c.nonce = b"whatever"
    resp = c.transact(c.build(stun.METHOD_BINDING, key=b"not the key"))
    assert_success(resp, stun.METHOD_BINDING)
    assert xor_address(resp, stun.ATTR_XOR_MAPPED_ADDRESS) == CLIENT


# -- Allocate: the challenge and the success ---------------------------------------------------


def test_allocate_without_integrity_gets_a_401_challenge() -> None:
    h = Harness()
    c = h.client()
    resp = c.transact(c.build(ALLOCATE, UDP_TRANSPORT, auth=False), now=T0)
    assert error_code(resp) == 401
    assert resp.get(stun.ATTR_REALM) == REALM.encode()
    nonce = resp.get(stun.ATTR_NONCE)
    assert nonce is not None and len(nonce) >= 16
    assert resp.integrity_offset == -1 and resp.integrity_sha256_offset == -1
    assert stun.ATTR_XOR_RELAYED_ADDRESS not in attr_types(resp)
    assert h.server.allocation_count == 0
    assert h.relays.calls == []


def test_allocate_success() -> None:
    h = Harness()
    c = h.client()
    c.fetch_nonce(T0)
    resp = c.allocate(now=T0 + 1)
    assert_success(resp, ALLOCATE)
    assert xor_address(resp, stun.ATTR_XOR_RELAYED_ADDRESS) == (RELAY_IP, 31001)
    assert xor_address(resp, stun.ATTR_XOR_MAPPED_ADDRESS) == CLIENT
    assert lifetime_of(resp) == 600
    assert stun.ATTR_RESERVATION_TOKEN not in attr_types(resp)
    # signed with the long-term key MD5(user:realm:pass), and only with it
    assert resp.check_integrity(lt_key(USER, REALM, PASSWORD))
    assert not resp.check_integrity(lt_key(USER, REALM, "pass-2"))
    assert resp.fingerprint_offset > resp.integrity_offset > 0

    alloc = h.allocation(c)
    assert alloc.username == USER
    assert alloc.expires == T0 + 1 + 600
    assert alloc.relay_addr == (RELAY_IP, 31001)
    relay = h.relays.by_port(31001)
    assert relay.attached is alloc and not relay.closed
    assert h.relays.calls[0].listener == "udp"
    assert h.relays.calls[0].family == stun.FAMILY_IPV4
    created = h.events(ev.AllocationCreated)
    assert [e.allocation for e in created] == [alloc]
    assert h.server.user_allocations[USER] == 1


def test_allocate_on_the_ipv6_listener_relays_ipv6() -> None:
    h = Harness()
    c = h.client(("2001:db8::77", 5000), listener="udp6")
    resp = c.allocate()
    assert_success(resp, ALLOCATE)
    assert xor_address(resp, stun.ATTR_XOR_RELAYED_ADDRESS) == (RELAY_IP6, 31001)
    assert xor_address(resp, stun.ATTR_XOR_MAPPED_ADDRESS) == ("2001:db8::77", 5000)
    assert h.relays.calls[0].family == stun.FAMILY_IPV6


def test_allocate_response_carries_software_when_configured() -> None:
    c = Harness(software="stunner-dp test").client()
    resp = c.allocate()
    assert_success(resp, ALLOCATE)
    assert resp.get(stun.ATTR_SOFTWARE) == b"stunner-dp test"


def test_retransmitted_allocate_gets_the_byte_identical_response() -> None:
    h = Harness(software="sw")
    c = h.client()
    c.fetch_nonce(T0)
    tid = b"retransmit!!"
    req = c.build(ALLOCATE, UDP_TRANSPORT, tid=tid)
    first = h.server.handle_stun(c.ctx, req, T0 + 1)
    again = h.server.handle_stun(c.ctx, req, T0 + 3)
    assert len(first) == len(again) == 1
    assert again[0][2] == first[0][2]
    assert len(h.relays.calls) == 1  # no second relay port
    assert h.server.allocation_count == 1


def test_allocate_with_another_tid_on_the_same_5_tuple_is_437() -> None:
    h = Harness()
    c = h.client()
    assert_success(c.allocate(), ALLOCATE)
    resp = c.allocate(now=T0 + 5)
    assert error_code(resp) == 437
    assert resp.check_integrity(c.key)  # errors after authentication are signed
    assert len(h.relays.calls) == 1
    assert h.server.allocation_count == 1
    # another client (port) of the same user is a different 5-tuple
    other = h.client((CLIENT[0], CLIENT[1] + 1))
    assert_success(other.allocate(), ALLOCATE)


# -- Allocate: the attribute checks ------------------------------------------------------------


def test_allocate_without_requested_transport_is_400() -> None:
    h = Harness()
    resp = h.client().allocate([])
    assert error_code(resp) == 400
    assert h.relays.calls == [] and h.server.allocation_count == 0


def test_allocate_tcp_relay_is_442() -> None:
    h = Harness()
    tcp = [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(6))]
    resp = h.client().allocate(tcp)
    assert error_code(resp) == 442
    assert h.relays.calls == [] and h.server.allocation_count == 0


def test_allocate_ipv6_family_on_an_ipv4_listener_is_440() -> None:
    h = Harness()
    c = h.client()
    v6 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]
    resp = c.allocate(UDP_TRANSPORT + v6)
    assert error_code(resp) == 440
    assert h.relays.calls == [] and h.server.allocation_count == 0
    v4 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV4))]
    resp = c.allocate(UDP_TRANSPORT + v4)
    assert_success(resp, ALLOCATE)


def test_allocate_ipv4_family_on_an_ipv6_listener_is_440() -> None:
    c = Harness().client(("2001:db8::77", 5000), listener="udp6")
    v4 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV4))]
    assert error_code(c.allocate(UDP_TRANSPORT + v4)) == 440


def test_additional_ipv6_family_on_an_ipv4_listener_allocates_ipv4_and_says_440() -> None:
    c = Harness().client()
    extra = [(stun.ATTR_ADDITIONAL_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]
    resp = c.allocate(UDP_TRANSPORT + extra)
    assert_success(resp, ALLOCATE)
    raw = resp.get(stun.ATTR_ADDRESS_ERROR_CODE)
    assert raw is not None
    family, code, _ = stun.decode_address_error_code(raw)
    assert (family, code) == (stun.FAMILY_IPV6, 440)
    assert xor_address(resp, stun.ATTR_XOR_RELAYED_ADDRESS)[0] == RELAY_IP


@pytest.mark.parametrize(
    "attrs",
    [
        # ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6
        [(stun.ATTR_ADDITIONAL_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV4))],
        # REQUESTED- and ADDITIONAL- together
        [
            (stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV4)),
            (stun.ATTR_ADDITIONAL_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6)),
        ],
        # malformed values of known attributes
        [(stun.ATTR_LIFETIME, b"\x00\x00\x02")],
        [(stun.ATTR_EVEN_PORT, b"\x80\x00")],
        [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, b"\x03\x00\x00\x00")],
    ],
    ids=["additional-ipv4", "requested-and-additional", "lifetime-3-bytes", "even-2-bytes", "fam3"],
)
def test_allocate_bad_family_or_malformed_attributes_are_400(attrs: list) -> None:  # type: ignore[type-arg]
    h = Harness()
    assert error_code(h.client().allocate(UDP_TRANSPORT + attrs)) == 400
    assert h.server.allocation_count == 0 and h.relays.open_ports == set()


def test_malformed_requested_transport_is_400() -> None:
    h = Harness()
    resp = h.client().allocate([(stun.ATTR_REQUESTED_TRANSPORT, b"\x11")])
    assert error_code(resp) == 400


# -- EVEN-PORT and RESERVATION-TOKEN ----------------------------------------------------------


def even_port(reserve: bool) -> list[tuple[int, bytes]]:
    return [(stun.ATTR_EVEN_PORT, stun.encode_even_port(reserve))]


def token_attr(token: bytes) -> list[tuple[int, bytes]]:
    return [(stun.ATTR_RESERVATION_TOKEN, token)]


def test_even_port_with_r_bit_reserves_the_next_port_for_a_token() -> None:
    h = Harness()
    a = h.client(("192.0.2.10", 40000))
    resp = a.allocate(UDP_TRANSPORT + even_port(True))
    assert_success(resp, ALLOCATE)
    ip, port = xor_address(resp, stun.ATTR_XOR_RELAYED_ADDRESS)
    assert (ip, port) == (RELAY_IP, 31002)  # the factory's next port (31001) is odd
    assert port % 2 == 0
    token = resp.get(stun.ATTR_RESERVATION_TOKEN)
    assert token is not None and len(token) == 8
    call = h.relays.calls[0]
    assert (call.even, call.pair) == (True, True)
    assert h.relays.open_ports == {31002, 31003}

    b = h.client(("192.0.2.10", 40002))
    resp = b.allocate(UDP_TRANSPORT + token_attr(token), now=T0 + 10)
    assert_success(resp, ALLOCATE)
    assert xor_address(resp, stun.ATTR_XOR_RELAYED_ADDRESS) == (RELAY_IP, port + 1)
    assert stun.ATTR_RESERVATION_TOKEN not in attr_types(resp)
    assert len(h.relays.calls) == 1  # the reserved port was used, no new one opened
    assert h.relays.by_port(port + 1).attached is h.allocation(b)

    # a token is good once
    c = h.client(("192.0.2.10", 40004))
    assert error_code(c.allocate(UDP_TRANSPORT + token_attr(token), now=T0 + 11)) == 508


def test_even_port_without_r_bit_gives_an_even_port_and_no_token() -> None:
    h = Harness()
    resp = h.client().allocate(UDP_TRANSPORT + even_port(False))
    assert_success(resp, ALLOCATE)
    assert xor_address(resp, stun.ATTR_XOR_RELAYED_ADDRESS)[1] == 31002
    assert stun.ATTR_RESERVATION_TOKEN not in attr_types(resp)
    assert (h.relays.calls[0].even, h.relays.calls[0].pair) == (True, False)
    assert h.relays.open_ports == {31002}


def test_reservation_token_with_even_port_is_400() -> None:
    h = Harness()
    token = h.client().allocate(UDP_TRANSPORT + even_port(True)).get(stun.ATTR_RESERVATION_TOKEN)
    assert token is not None
    b = h.client(("192.0.2.11", 1))
    assert error_code(b.allocate(UDP_TRANSPORT + even_port(False) + token_attr(token))) == 400
    # the token survived the rejected request
    assert_success(b.allocate(UDP_TRANSPORT + token_attr(token)), ALLOCATE)


def test_reservation_token_with_requested_family_is_400() -> None:
    h = Harness()
    token = h.client().allocate(UDP_TRANSPORT + even_port(True)).get(stun.ATTR_RESERVATION_TOKEN)
    assert token is not None
    fam = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV4))]
    resp = h.client(("192.0.2.11", 1)).allocate(UDP_TRANSPORT + fam + token_attr(token))
    assert error_code(resp) == 400


def test_unknown_reservation_token_is_508() -> None:
    h = Harness()
    resp = h.client().allocate(UDP_TRANSPORT + token_attr(b"\x01" * 8))
    assert error_code(resp) == 508
    assert h.relays.calls == [] and h.server.allocation_count == 0


def test_reservation_token_is_good_only_on_its_own_listener() -> None:
    # a token from the IPv4 listener must not hand an IPv6 client of another listener an IPv4
    # relay port from the first listener's range
    h = Harness()
    token = h.client().allocate(UDP_TRANSPORT + even_port(True)).get(stun.ATTR_RESERVATION_TOKEN)
    assert token is not None
    v6 = h.client(("2001:db8::5", 1), listener="udp6")
    assert error_code(v6.allocate(UDP_TRANSPORT + token_attr(token))) == 508
    tcp = h.client(("192.0.2.12", 1), listener="tcp")
    assert error_code(tcp.allocate(UDP_TRANSPORT + token_attr(token))) == 508
    assert not h.has_allocation(v6) and not h.has_allocation(tcp)
    # still redeemable where it was issued
    resp = h.client(("192.0.2.11", 1)).allocate(UDP_TRANSPORT + token_attr(token))
    assert xor_address(resp, stun.ATTR_XOR_RELAYED_ADDRESS) == (RELAY_IP, 31003)


def test_reservation_expires_after_30_seconds_and_frees_the_port() -> None:
    h = Harness()
    resp = h.client().allocate(UDP_TRANSPORT + even_port(True), now=T0)
    token = resp.get(stun.ATTR_RESERVATION_TOKEN)
    assert token is not None
    h.server.expire(T0 + 29)
    assert 31003 in h.relays.open_ports
    h.server.expire(T0 + 30)
    assert 31003 not in h.relays.open_ports
    assert h.relays.by_port(31003).close_count == 1
    assert 31002 in h.relays.open_ports  # the allocation's own port stays
    late = h.client(("192.0.2.11", 1))
    assert error_code(late.allocate(UDP_TRANSPORT + token_attr(token), now=T0 + 31)) == 508


# -- capacity -----------------------------------------------------------------------------------


def test_user_quota_is_486() -> None:
    h = Harness(make_config(admin=AdminConfig(user_quota=2)))
    first, second, third = (h.client(("192.0.2.20", p)) for p in (1, 2, 3))
    assert_success(first.allocate(), ALLOCATE)
    assert_success(second.allocate(), ALLOCATE)
    resp = third.allocate()
    assert error_code(resp) == 486
    assert resp.check_integrity(third.key)
    assert len(h.relays.calls) == 2
    # deleting one allocation gives the quota back
    assert lifetime_of(first.refresh(0)) == 0
    assert_success(third.allocate(), ALLOCATE)


def test_user_quota_counts_ephemeral_users_by_user_id_not_timestamp() -> None:
    h = Harness(make_config(auth=ephemeral_auth(), admin=AdminConfig(user_quota=1)))
    names = [f"{int(T0) + 3600}:alice", f"{int(T0) + 7200}:alice", f"{int(T0) + 3600}:bob"]
    clients = [
        h.client(("192.0.2.30", i), username=n, password=rest_password(SECRET, n))
        for i, n in enumerate(names, 1)
    ]
    assert_success(clients[0].allocate(), ALLOCATE)
    assert error_code(clients[1].allocate()) == 486
    assert_success(clients[2].allocate(), ALLOCATE)


def test_max_allocations_is_508() -> None:
    h = Harness(make_config(admin=AdminConfig(max_allocations=1)))
    assert_success(h.client(("192.0.2.40", 1)).allocate(), ALLOCATE)
    resp = h.client(("192.0.2.40", 2)).allocate()
    assert error_code(resp) == 508
    assert len(h.relays.calls) == 1


def test_relay_factory_out_of_ports_is_508() -> None:
    h = Harness()
    h.relays.exhausted = True
    c = h.client()
    resp = c.allocate()
    assert error_code(resp) == 508
    assert h.server.allocation_count == 0
    assert h.server.user_allocations[USER] == 0
    # once ports are free again, the same client allocates
    h.relays.exhausted = False
    assert_success(c.allocate(), ALLOCATE)


def test_draining_server_redirects_to_the_alternate_server() -> None:
    h = Harness(alternate_server=("192.0.2.200", 3478))
    h.server.draining = True
    resp = h.client().allocate()
    assert error_code(resp) == 300
    raw = resp.get(stun.ATTR_ALTERNATE_SERVER)
    assert raw is not None and stun.decode_address(raw) == ("192.0.2.200", 3478)
    assert h.relays.calls == []


# -- lifetimes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "granted"),
    [(None, 600), (0, 600), (1, 600), (599, 600), (601, 601), (1800, 1800), (3600, 3600),
     (3601, 3600), (0xFFFFFFFF, 3600)],
)  # fmt: skip
def test_allocate_lifetime_default_max_and_floor(asked: int | None, granted: int) -> None:
    h = Harness()
    c = h.client()
    attrs = list(UDP_TRANSPORT)
    if asked is not None:
        attrs.append((stun.ATTR_LIFETIME, stun.encode_u32(asked)))
    resp = c.allocate(attrs, now=T0)
    assert lifetime_of(resp) == granted
    assert h.allocation(c).expires == T0 + granted


# -- independent encoder ----------------------------------------------------------------------


def test_allocate_built_and_read_by_aioice() -> None:
    from aioice import stun as aio

    h = Harness()
    c = h.client()
    challenge = aio.Message(aio.Method.ALLOCATE, aio.Class.REQUEST)
    challenge.attributes["REQUESTED-TRANSPORT"] = 17 << 24
    raw = c.send(bytes(challenge))[0][2]
    answer = aio.parse_message(raw)
    assert answer.message_class == aio.Class.ERROR and answer.error_code == 401
    nonce, realm = answer.attributes["NONCE"], answer.attributes["REALM"]
    assert realm == REALM

    req = aio.Message(aio.Method.ALLOCATE, aio.Class.REQUEST)
    req.attributes["REQUESTED-TRANSPORT"] = 17 << 24
    req.attributes["LIFETIME"] = 1200
    req.attributes["USERNAME"] = USER
    req.attributes["REALM"] = realm
    req.attributes["NONCE"] = nonce
    key = lt_key(USER, REALM, PASSWORD)
    req.add_message_integrity(key)
    raw = c.send(bytes(req), T0 + 1)[0][2]
    resp = aio.parse_message(raw)
    assert resp.check_message_integrity(key)
    assert not resp.check_message_integrity(lt_key(USER, REALM, "wrong"))
    assert resp.message_class == aio.Class.RESPONSE
    assert resp.transaction_id == req.transaction_id
    assert resp.attributes["XOR-RELAYED-ADDRESS"] == (RELAY_IP, 31001)
    assert resp.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    assert resp.attributes["LIFETIME"] == 1200
    assert h.allocation(c).expires == T0 + 1 + 1200


def test_binding_built_and_read_by_aioice() -> None:
    from aioice import stun as aio

    c = Harness().client(("2001:db8::5", 3333), listener="udp6")
    req = aio.Message(aio.Method.BINDING, aio.Class.REQUEST)
    req.add_fingerprint()
    resp = aio.parse_message(c.send(bytes(req))[0][2])
    assert resp.message_class == aio.Class.RESPONSE
    assert resp.transaction_id == req.transaction_id
    assert resp.attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8::5", 3333)
    assert "FINGERPRINT" in resp.attributes


def test_removing_a_listener_frees_its_reserved_ports() -> None:
    h = Harness()
    resp = h.client().allocate(UDP_TRANSPORT + even_port(True))
    assert resp.get(stun.ATTR_RESERVATION_TOKEN) is not None
    assert h.relays.open_ports == {31002, 31003}
    others = tuple(lis for lis in h.config.listeners if lis.name != "udp")
    h.server.update_config(dataclasses.replace(h.config, listeners=others))
    assert h.relays.open_ports == set()  # the allocation's port and the reserved one
    assert h.server.reservations == {}
