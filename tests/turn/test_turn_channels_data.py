"""ChannelBind, Send and Data indications, ChannelData both ways."""

from __future__ import annotations

import struct

import pytest
from helpers.turn_harness import (
    CLIENT,
    LOCAL_PEER,
    PEER,
    PEER2,
    T0,
    Harness,
    allocated,
    assert_success,
    error_code,
    make_config,
    xor_address,
)

from stunner_dp import stun
from stunner_dp.config import AdminConfig
from stunner_dp.turn import events as ev

CHANNEL_BIND = stun.METHOD_CHANNEL_BIND


# -- ChannelBind ----------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [0x4000, 0x4001, 0x4ABC, 0x4FFF])
def test_channel_bind_in_range(number: int) -> None:
    h, c = allocated()
    resp = c.channel_bind(number, PEER, now=T0 + 10)
    assert_success(resp, CHANNEL_BIND)
    assert resp.check_integrity(c.key)
    alloc = h.allocation(c)
    chan = alloc.channels[number]
    assert chan.peer == PEER and chan.expires == T0 + 10 + 600
    assert alloc.peer_channels[PEER] is chan
    # a channel bind installs (or refreshes) the permission of its peer too
    assert alloc.permissions[PEER[0]].expires == T0 + 10 + 300


@pytest.mark.parametrize("number", [0x0000, 0x0001, 0x3FFF, 0x8000, 0xBFFF, 0xFFFF])
def test_channel_number_out_of_range_is_400(number: int) -> None:
    h, c = allocated()
    assert error_code(c.channel_bind(number, PEER)) == 400
    alloc = h.allocation(c)
    assert alloc.bindings == {} and alloc.permissions == {}


@pytest.mark.parametrize("number", [0x5000, 0x7FFF])
@pytest.mark.parametrize("listener", ["udp", "tcp"])
def test_rfc5766_channel_numbers_are_usable(number: int, listener: str) -> None:
    # RFC 8656 allows 0x4000-0x4FFF; RFC 5766 clients (coturn's turnutils_uclient) use up to
    # 0x7FFF, so the server takes the whole RFC 5766 range, and each number carries ChannelData
    # both ways.
    h, c = allocated(listener=listener)
    resp = c.channel_bind(number, PEER)
    assert_success(resp, CHANNEL_BIND)
    frame = struct.pack("!HH", number, 2) + b"up" + (b"\x00\x00" if listener == "tcp" else b"")
    assert h.server.handle_channel_data(c.ctx, frame) == [(h.allocation(c).relay, PEER, b"up")]
    [(_, _, back)] = h.server.handle_peer_data(h.allocation(c), PEER, b"down")
    assert back == struct.pack("!HH", number, 4) + b"down"


def test_channel_bind_without_number_or_peer_is_400() -> None:
    h, c = allocated()
    tid = b"c" * 12
    peer = [(stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(PEER, tid))]
    number = [(stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(0x4000))]
    assert error_code(c.request(CHANNEL_BIND, peer, tid=tid)) == 400
    assert error_code(c.request(CHANNEL_BIND, number)) == 400
    assert h.allocation(c).bindings == {}


def test_rebinding_the_same_channel_and_peer_refreshes() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, PEER, now=T0), CHANNEL_BIND)
    chan = h.allocation(c).bindings[0x4000]
    assert_success(c.channel_bind(0x4000, PEER, now=T0 + 400), CHANNEL_BIND)
    alloc = h.allocation(c)
    assert alloc.bindings[0x4000] is chan
    assert chan.expires == T0 + 1000
    assert alloc.permissions[PEER[0]].expires == T0 + 700
    assert list(alloc.bindings) == [0x4000]


def test_channel_to_another_peer_is_400() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, PEER), CHANNEL_BIND)
    assert error_code(c.channel_bind(0x4000, PEER2)) == 400
    assert error_code(c.channel_bind(0x4000, (PEER[0], PEER[1] + 1))) == 400  # same IP, other port
    alloc = h.allocation(c)
    assert alloc.bindings[0x4000].peer == PEER
    assert PEER2[0] not in alloc.permissions


def test_peer_on_another_channel_is_400() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, PEER), CHANNEL_BIND)
    assert error_code(c.channel_bind(0x4001, PEER)) == 400
    assert list(h.allocation(c).bindings) == [0x4000]
    # the same IP with another port is another peer: fine
    assert_success(c.channel_bind(0x4001, (PEER[0], PEER[1] + 1)), CHANNEL_BIND)


def test_channel_to_a_denied_peer_is_403() -> None:
    h, c = allocated()
    denied = ("192.168.1.1", 5050)
    resp = c.channel_bind(0x4000, denied)
    assert error_code(resp) == 403
    [event] = h.events(ev.PermissionDenied)
    assert (event.peer, event.listener, event.client) == (denied, "udp", CLIENT)
    assert h.allocation(c).bindings == {} and h.allocation(c).permissions == {}


@pytest.mark.parametrize("port", [4999, 5100, 6000])
def test_channel_to_a_port_outside_the_endpoint_range_is_403(port: int) -> None:
    h, c = allocated()
    assert error_code(c.channel_bind(0x4000, (LOCAL_PEER[0], port))) == 403
    assert h.events(ev.PermissionDenied)[0].peer == (LOCAL_PEER[0], port)
    assert_success(c.channel_bind(0x4000, (LOCAL_PEER[0], 5000)), CHANNEL_BIND)
    assert_success(c.channel_bind(0x4001, (LOCAL_PEER[0], 5099)), CHANNEL_BIND)


def test_channel_to_an_ipv6_peer_on_an_ipv4_relay_is_443() -> None:
    _, c = allocated()
    assert error_code(c.channel_bind(0x4000, ("2606:4700::1111", 53))) == 443


def test_channels_over_the_cap_are_508() -> None:
    h = Harness(make_config(admin=AdminConfig(max_channels_per_allocation=2)))
    h, c = allocated(h)
    assert_success(c.channel_bind(0x4000, PEER), CHANNEL_BIND)
    assert_success(c.channel_bind(0x4001, PEER2), CHANNEL_BIND)
    assert error_code(c.channel_bind(0x4002, ("1.1.1.1", 1))) == 508
    assert_success(c.channel_bind(0x4001, PEER2, now=T0 + 1), CHANNEL_BIND)  # rebind is fine
    assert list(h.allocation(c).bindings) == [0x4000, 0x4001]


def test_channel_bind_needing_a_new_permission_over_the_permission_cap_is_508() -> None:
    h = Harness(make_config(admin=AdminConfig(max_permissions_per_allocation=1)))
    h, c = allocated(h)
    assert_success(c.create_permission(PEER), stun.METHOD_CREATE_PERMISSION)
    assert error_code(c.channel_bind(0x4000, PEER2)) == 508
    assert_success(c.channel_bind(0x4000, PEER), CHANNEL_BIND)  # its permission exists


def test_zero_channel_cap_means_unlimited() -> None:
    h = Harness(
        make_config(
            admin=AdminConfig(max_channels_per_allocation=0, max_permissions_per_allocation=0)
        )
    )
    h, c = allocated(h)
    assert_success(c.channel_bind(0x4000, PEER), CHANNEL_BIND)
    assert list(h.allocation(c).channels) == [0x4000]


# -- ChannelData both ways ----------------------------------------------------------------------


def test_channel_data_both_ways() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4123, PEER), CHANNEL_BIND)
    alloc = h.allocation(c)
    relay = h.relays.by_port(31001)

    out = c.channel_data(0x4123, b"hello peer")
    assert out == [(relay, PEER, b"hello peer")]
    assert out[0][0] is relay

    back = h.server.handle_peer_data(alloc, PEER, b"hi client")
    assert len(back) == 1
    sink, addr, frame = back[0]
    assert sink is c.ctx.link and addr == CLIENT
    assert frame == b"\x41\x23\x00\x09hi client"  # UDP: no padding
    assert stun.parse_channel_data(frame) == (0x4123, b"hi client")

    chan = alloc.channels[0x4123]
    assert (chan.out_packets, chan.out_bytes, chan.in_packets, chan.in_bytes) == (1, 10, 1, 9)


def test_channel_data_to_a_tcp_client_is_padded() -> None:
    h, c = allocated(listener="tcp")
    assert_success(c.channel_bind(0x4000, PEER), CHANNEL_BIND)
    [(_, _, frame)] = h.server.handle_peer_data(h.allocation(c), PEER, b"12345")
    assert frame == b"\x40\x00\x00\x0512345\x00\x00\x00"


def test_channel_data_on_an_unbound_channel_or_without_allocation_is_dropped() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, PEER), CHANNEL_BIND)
    assert c.channel_data(0x4001, b"x") == []
    stranger = h.client(("192.0.2.99", 1))
    assert stranger.channel_data(0x4000, b"x") == []
    assert h.allocation(c).channels[0x4000].out_packets == 0


def test_malformed_channel_data_is_dropped_and_counted() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, PEER), CHANNEL_BIND)
    before = h.server.malformed
    for junk in [
        b"\x40\x00\x00\x09short",
        b"\x40",
        b"\x40\x00\x00\x01abcdefgh",
        b"\x30\x00\x00\x00",
    ]:
        assert h.server.handle_channel_data(c.ctx, junk) == []
    assert h.server.malformed == before + 4
    assert c.channel_data(0x4000, b"ok") == [(h.relays.by_port(31001), PEER, b"ok")]


# -- Send and Data indications --------------------------------------------------------------------


def test_send_indication_needs_a_permission() -> None:
    h, c = allocated()
    relay = h.relays.by_port(31001)
    assert c.send_indication(PEER, b"too early") == []
    assert_success(c.create_permission(PEER), stun.METHOD_CREATE_PERMISSION)
    assert c.send_indication(PEER, b"now") == [(relay, PEER, b"now")]
    assert c.send_indication((PEER[0], 1), b"any port of the IP") == [
        (relay, (PEER[0], 1), b"any port of the IP")
    ]
    assert c.send_indication(PEER2, b"no permission") == []
    perm = h.allocation(c).permissions[PEER[0]]
    assert (perm.out_packets, perm.out_bytes) == (2, 3 + 18)


def test_send_indication_honours_the_endpoint_port_range() -> None:
    h, c = allocated()
    assert_success(c.create_permission(LOCAL_PEER), stun.METHOD_CREATE_PERMISSION)
    relay = h.relays.by_port(31001)
    assert c.send_indication(("127.0.0.1", 5099), b"in") == [(relay, ("127.0.0.1", 5099), b"in")]
    assert c.send_indication(("127.0.0.1", 5100), b"out") == []
    assert c.send_indication(("127.0.0.1", 4999), b"out") == []


def test_send_indication_without_allocation_or_attributes_is_dropped() -> None:
    h, c = allocated()
    assert_success(c.create_permission(PEER), stun.METHOD_CREATE_PERMISSION)
    assert h.client(("192.0.2.99", 1)).send_indication(PEER, b"x") == []
    tid = b"s" * 12
    no_data = stun.encode_message(
        stun.METHOD_SEND,
        stun.CLASS_INDICATION,
        tid,
        [(stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(PEER, tid))],
    )
    no_peer = stun.encode_message(
        stun.METHOD_SEND, stun.CLASS_INDICATION, tid, [(stun.ATTR_DATA, b"x")]
    )
    bad_peer = stun.encode_message(
        stun.METHOD_SEND,
        stun.CLASS_INDICATION,
        tid,
        [(stun.ATTR_XOR_PEER_ADDRESS, b"\x00\x07\x00\x00"), (stun.ATTR_DATA, b"x")],
    )
    assert c.send(no_data) == [] and c.send(no_peer) == [] and c.send(bad_peer) == []


def test_send_indication_to_an_ipv4_mapped_peer_goes_to_the_ipv4_address() -> None:
    h, c = allocated()
    assert_success(c.create_permission(PEER), stun.METHOD_CREATE_PERMISSION)
    out = c.send_indication(("::ffff:" + PEER[0], PEER[1]), b"x")
    assert out == [(h.relays.by_port(31001), PEER, b"x")]


def test_peer_data_without_a_channel_is_a_data_indication() -> None:
    h, c = allocated()
    assert_success(c.create_permission(PEER), stun.METHOD_CREATE_PERMISSION)
    alloc = h.allocation(c)
    [(sink, addr, raw)] = h.server.handle_peer_data(alloc, PEER, b"payload")
    assert sink is c.ctx.link and addr == CLIENT
    msg = stun.parse_message(raw)
    assert (msg.method, msg.cls) == (stun.METHOD_DATA, stun.CLASS_INDICATION)
    assert xor_address(msg, stun.ATTR_XOR_PEER_ADDRESS) == PEER
    assert msg.get(stun.ATTR_DATA) == b"payload"
    perm = alloc.permissions[PEER[0]]
    assert (perm.in_packets, perm.in_bytes) == (1, 7)
    # a second one has a different transaction id
    [(_, _, raw2)] = h.server.handle_peer_data(alloc, PEER, b"payload")
    assert stun.parse_message(raw2).transaction_id != msg.transaction_id


def test_data_indication_read_by_aioice() -> None:
    from aioice import stun as aio

    h, c = allocated()
    assert_success(c.create_permission(PEER), stun.METHOD_CREATE_PERMISSION)
    [(_, _, raw)] = h.server.handle_peer_data(h.allocation(c), PEER, b"\x00\x01binary")
    msg = aio.parse_message(raw)
    assert msg.message_method == aio.Method.DATA
    assert msg.message_class == aio.Class.INDICATION
    assert msg.attributes["XOR-PEER-ADDRESS"] == PEER
    assert msg.attributes["DATA"] == b"\x00\x01binary"


def test_peer_data_is_filtered_by_permission_and_port() -> None:
    h, c = allocated()
    alloc = h.allocation(c)
    assert h.server.handle_peer_data(alloc, PEER, b"x") == []
    assert_success(c.create_permission(LOCAL_PEER), stun.METHOD_CREATE_PERMISSION)
    assert len(h.server.handle_peer_data(alloc, ("127.0.0.1", 5000), b"x")) == 1
    assert h.server.handle_peer_data(alloc, ("127.0.0.1", 6000), b"x") == []
    assert h.server.handle_peer_data(alloc, ("127.0.0.2", 5000), b"x") == []


def test_channel_bind_send_and_channel_data_built_by_aioice() -> None:
    from aioice import stun as aio

    h, c = allocated()
    req = aio.Message(aio.Method.CHANNEL_BIND, aio.Class.REQUEST)
    req.attributes["CHANNEL-NUMBER"] = 0x4001
    req.attributes["XOR-PEER-ADDRESS"] = PEER
    req.attributes["USERNAME"] = c.username
    req.attributes["REALM"] = c.realm
    req.attributes["NONCE"] = c.nonce
    req.add_message_integrity(c.key)
    resp = aio.parse_message(c.send(bytes(req), T0 + 1)[0][2])
    assert resp.message_class == aio.Class.RESPONSE
    assert resp.check_message_integrity(c.key)
    assert h.allocation(c).channels[0x4001].peer == PEER

    send = aio.Message(aio.Method.SEND, aio.Class.INDICATION)
    send.attributes["XOR-PEER-ADDRESS"] = PEER
    send.attributes["DATA"] = b"via aioice"
    assert c.send(bytes(send)) == [(h.relays.by_port(31001), PEER, b"via aioice")]

    perm = aio.Message(aio.Method.CREATE_PERMISSION, aio.Class.REQUEST)
    perm.attributes["XOR-PEER-ADDRESS"] = ("10.0.0.1", 1)  # private: denied
    perm.attributes["USERNAME"] = c.username
    perm.attributes["REALM"] = c.realm
    perm.attributes["NONCE"] = c.nonce
    perm.add_message_integrity(c.key)
    resp = aio.parse_message(c.send(bytes(perm), T0 + 2)[0][2])
    assert resp.message_class == aio.Class.ERROR and resp.error_code == 403
