"""RFC 5780 NAT behaviour discovery in the state machine, and DONT-FRAGMENT (RFC 8656 7.2).

A listener with NAT discovery has four sockets (registered by the shell as `DiscoveryLinks`);
Binding answers say where they left from (RESPONSE-ORIGIN) and where the other IP and port are
(OTHER-ADDRESS), and leave from the socket CHANGE-REQUEST picks. Without it, CHANGE-REQUEST is
an unknown comprehension-required attribute: 420 (RFC 5780 7.2).
"""

from __future__ import annotations

import os

import pytest
from helpers.turn_harness import (
    CLIENT,
    T0,
    UDP_TRANSPORT,
    FakeLink,
    FakeRelay,
    Harness,
    allocated,
    assert_success,
    error_code,
)

from stunner_dp import stun
from stunner_dp.stun import Message
from stunner_dp.turn.types import Context, DiscoveryLink, DiscoveryLinks, Output

PRIMARY = ("198.51.100.1", 3479)
ALT_PORT = 3480
ALT_IP = "198.51.100.2"
ADDRESSES = [PRIMARY, (PRIMARY[0], ALT_PORT), (ALT_IP, PRIMARY[1]), (ALT_IP, ALT_PORT)]


def discovery_links() -> DiscoveryLinks:
    a, b, c, d = (DiscoveryLink(addr, FakeLink()) for addr in ADDRESSES)
    return (a, b, c, d)


def binding(change: bytes | None = None, attrs: list[tuple[int, bytes]] | None = None) -> bytes:
    body = list(attrs or [])
    if change is not None:
        body.append((stun.ATTR_CHANGE_REQUEST, change))
    return stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, os.urandom(12), body)


def send(h: Harness, link: object, data: bytes, listener: str = "udp") -> list[Output]:
    ctx = Context(listener, "udp", CLIENT, link)  # type: ignore[arg-type]
    return h.server.handle_stun(ctx, data, T0)


def one_answer(outputs: list[Output]) -> tuple[object, Message]:
    assert len(outputs) == 1, outputs
    sink, addr, raw = outputs[0]
    assert addr == CLIENT
    return sink, stun.parse_message(raw)


def address_of(msg: Message, attr: int) -> tuple[str, int]:
    raw = msg.get(attr)
    assert raw is not None, f"no attribute {attr:#06x}"
    return stun.decode_address(raw)


@pytest.mark.parametrize("arrived", [0, 1, 2, 3], ids=["primary", "alt-port", "alt-ip", "both"])
@pytest.mark.parametrize(
    ("change_ip", "change_port"),
    [(False, False), (False, True), (True, False), (True, True)],
    ids=["none", "port", "ip", "ip+port"],
)
def test_change_request_answers_from_the_socket_it_asks_for(
    arrived: int, change_ip: bool, change_port: bool
) -> None:
    h = Harness()
    links = discovery_links()
    h.server.set_discovery_links("udp", links)
    change = stun.encode_change_request(change_ip=change_ip, change_port=change_port)
    sink, msg = one_answer(send(h, links[arrived].sink, binding(change)))
    expected = arrived ^ ((2 if change_ip else 0) | (1 if change_port else 0))
    assert sink is links[expected].sink
    assert_success(msg, stun.METHOD_BINDING)
    assert address_of(msg, stun.ATTR_RESPONSE_ORIGIN) == ADDRESSES[expected]
    assert address_of(msg, stun.ATTR_OTHER_ADDRESS) == ADDRESSES[arrived ^ 3]
    raw = msg.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    assert raw is not None and stun.decode_xor_address(raw, msg.transaction_id) == CLIENT
    assert address_of(msg, stun.ATTR_MAPPED_ADDRESS) == CLIENT


def test_every_binding_answer_carries_response_origin_when_enabled() -> None:
    h = Harness()
    links = discovery_links()
    h.server.set_discovery_links("udp", links)
    sink, msg = one_answer(send(h, links[0].sink, binding()))
    assert sink is links[0].sink
    assert address_of(msg, stun.ATTR_RESPONSE_ORIGIN) == PRIMARY
    assert address_of(msg, stun.ATTR_OTHER_ADDRESS) == (ALT_IP, ALT_PORT)


def test_without_nat_discovery_change_request_is_420_unknown_attribute() -> None:
    h = Harness()
    link = FakeLink()
    change = stun.encode_change_request(change_ip=True, change_port=True)
    sink, msg = one_answer(send(h, link, binding(change)))
    assert sink is link
    assert error_code(msg) == 420
    raw = msg.get(stun.ATTR_UNKNOWN_ATTRIBUTES)
    assert raw is not None and stun.decode_unknown_attributes(raw) == [stun.ATTR_CHANGE_REQUEST]
    # and a plain Binding says nothing of RFC 5780
    _, plain = one_answer(send(h, link, binding()))
    assert_success(plain, stun.METHOD_BINDING)
    assert plain.get(stun.ATTR_RESPONSE_ORIGIN) is None
    assert plain.get(stun.ATTR_OTHER_ADDRESS) is None


def test_nat_discovery_is_per_listener_and_can_be_turned_off() -> None:
    h = Harness()
    links = discovery_links()
    h.server.set_discovery_links("udp", links)
    change = stun.encode_change_request(change_port=True)
    _, other = one_answer(send(h, FakeLink(), binding(change), listener="udp6"))
    assert error_code(other) == 420
    h.server.set_discovery_links("udp", None)
    sink, msg = one_answer(send(h, links[0].sink, binding(change)))
    assert sink is links[0].sink and error_code(msg) == 420


def test_malformed_change_request_is_400_from_the_socket_asked() -> None:
    h = Harness()
    links = discovery_links()
    h.server.set_discovery_links("udp", links)
    sink, msg = one_answer(send(h, links[2].sink, binding(b"\x00\x00\x06")))
    assert sink is links[2].sink
    assert error_code(msg) == 400


def test_other_unknown_attributes_are_still_420_with_nat_discovery() -> None:
    h = Harness()
    links = discovery_links()
    h.server.set_discovery_links("udp", links)
    response_port = 0x0027  # RFC 5780 RESPONSE-PORT: not supported
    sink, msg = one_answer(
        send(h, links[0].sink, binding(attrs=[(response_port, b"\x13\x88\0\0")]))
    )
    assert sink is links[0].sink and error_code(msg) == 420
    raw = msg.get(stun.ATTR_UNKNOWN_ATTRIBUTES)
    assert raw is not None and stun.decode_unknown_attributes(raw) == [response_port]


def test_change_request_outside_binding_is_420() -> None:
    h = Harness()
    c = h.client()
    h.server.set_discovery_links(
        "udp",
        (DiscoveryLink(PRIMARY, c.ctx.link), *discovery_links()[1:]),  # type: ignore[arg-type]
    )
    resp = c.allocate([*UDP_TRANSPORT, (stun.ATTR_CHANGE_REQUEST, stun.encode_change_request())])
    assert error_code(resp) == 420
    assert not h.has_allocation(c)


def test_alternate_sockets_serve_no_turn() -> None:
    h = Harness()
    links = discovery_links()
    h.server.set_discovery_links("udp", links)
    allocate = stun.encode_message(
        stun.METHOD_ALLOCATE, stun.CLASS_REQUEST, os.urandom(12), list(UDP_TRANSPORT)
    )
    for link in links[1:]:
        sink, msg = one_answer(send(h, link.sink, allocate))
        assert sink is link.sink and error_code(msg) == 400
    assert h.server.allocation_count == 0
    # the listener's own socket still challenges as usual
    _, msg = one_answer(send(h, links[0].sink, allocate))
    assert error_code(msg) == 401


# -- DONT-FRAGMENT ----------------------------------------------------------------------------


def test_dont_fragment_sets_df_on_the_relay() -> None:
    h = Harness()
    c = h.client()
    c.fetch_nonce()
    resp = c.allocate([*UDP_TRANSPORT, (stun.ATTR_DONT_FRAGMENT, b"")])
    assert_success(resp, stun.METHOD_ALLOCATE)
    relay = h.allocation(c).relay
    assert isinstance(relay, FakeRelay) and relay.dont_fragment


def test_without_dont_fragment_the_relay_is_left_alone() -> None:
    h, c = allocated()
    relay = h.allocation(c).relay
    assert isinstance(relay, FakeRelay) and not relay.dont_fragment


def test_a_relay_that_cannot_set_df_earns_420_and_frees_its_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(FakeRelay, "set_dont_fragment", lambda self: False)
    h = Harness()
    c = h.client()
    c.fetch_nonce()
    resp = c.allocate([*UDP_TRANSPORT, (stun.ATTR_DONT_FRAGMENT, b"")])
    assert error_code(resp) == 420
    raw = resp.get(stun.ATTR_UNKNOWN_ATTRIBUTES)
    assert raw is not None and stun.decode_unknown_attributes(raw) == [stun.ATTR_DONT_FRAGMENT]
    assert not h.has_allocation(c)
    assert all(handle.closed for handle in h.relays.handles)
    # the quota was given back: the same client allocates without DF
    assert_success(c.allocate(), stun.METHOD_ALLOCATE)
