"""auth.type none: STUNner's STUN server mode, in the state machine.

stunnerd gives pion/turn no auth handler then, and pion/turn (internal/server/util.go,
authenticateRequest) answers a TURN request without MESSAGE-INTEGRITY with 401 (REALM and
NONCE, as for any first request) and a signed one with 400 Bad Request "so clients don't
retry". Binding is answered as always. Nothing opens a relay.
"""

from __future__ import annotations

import os

import pytest
from helpers.turn_harness import (
    PEER,
    T0,
    UDP_TRANSPORT,
    Harness,
    error_code,
    make_config,
    xor_address,
)

from stunner_dp import stun
from stunner_dp.config import AdminConfig, AuthConfig
from stunner_dp.turn.ratelimit import UnauthLimiter

NONE_AUTH = AuthConfig(type="none", realm="stun.example.test")
TURN_METHODS = {
    "allocate": (stun.METHOD_ALLOCATE, UDP_TRANSPORT),
    "refresh": (stun.METHOD_REFRESH, []),
    "create-permission": (
        stun.METHOD_CREATE_PERMISSION,
        [(stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(PEER, b"\0" * 12))],
    ),
    "channel-bind": (
        stun.METHOD_CHANNEL_BIND,
        [
            (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(0x4001)),
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(PEER, b"\0" * 12)),
        ],
    ),
}


def stun_only(rate: int = 100) -> Harness:
    return Harness(make_config(auth=NONE_AUTH, admin=AdminConfig(unauth_rate_per_ip=rate)))


@pytest.mark.parametrize("listener", ["udp", "tcp", "udp6"])
def test_binding_is_answered_on_every_listener(listener: str) -> None:
    h = stun_only()
    addr = ("2001:db8::10", 40000) if listener == "udp6" else ("192.0.2.10", 40000)
    client = h.client(addr, listener=listener)
    tid = os.urandom(12)
    resp = client.transact(stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, tid))
    assert resp.cls == stun.CLASS_SUCCESS
    assert xor_address(resp, stun.ATTR_XOR_MAPPED_ADDRESS) == addr


@pytest.mark.parametrize("method", list(TURN_METHODS))
def test_an_unsigned_turn_request_gets_401_as_from_stunnerd(method: str) -> None:
    h = stun_only()
    client = h.client()
    number, attrs = TURN_METHODS[method]
    resp = client.transact(client.build(number, attrs, auth=False))
    assert resp.method == number and resp.cls == stun.CLASS_ERROR
    assert error_code(resp) == 401
    assert resp.get(stun.ATTR_REALM) == NONE_AUTH.realm.encode()
    assert resp.get(stun.ATTR_NONCE)
    assert h.relays.calls == []


@pytest.mark.parametrize("method", list(TURN_METHODS))
def test_a_signed_turn_request_gets_400_and_no_relay(method: str) -> None:
    h = stun_only()
    client = h.client()
    client.fetch_nonce()
    number, attrs = TURN_METHODS[method]
    resp = client.transact(client.build(number, attrs))
    assert error_code(resp) == 400
    assert resp.get(stun.ATTR_NONCE) is None  # nothing invites a retry
    assert h.relays.calls == [] and not h.server.all_allocations()


def test_a_signed_request_is_refused_whatever_its_key() -> None:
    h = stun_only()
    client = h.client(username="anyone", password="anything")
    client.fetch_nonce()
    assert error_code(client.allocate()) == 400
    assert h.relays.calls == []


def test_answers_to_one_address_are_bounded_by_the_unauthenticated_rate() -> None:
    """The amplifier bound: a sustained spoofed flood of Bindings and of signed TURN requests
    (which never authenticate here) from one UDP address gets at most the limiter's burst plus
    admin.unauth_rate_per_ip answers a second."""
    rate, seconds, per_second = 5, 10, 100
    h = stun_only(rate=rate)
    client = h.client()
    client.nonce = b"forged-nonce"
    answered = sent = 0
    for tick in range(seconds * per_second):
        now = T0 + tick / per_second
        binding = stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, os.urandom(12))
        signed = client.build(stun.METHOD_ALLOCATE, UDP_TRANSPORT)
        answered += len(client.send(binding, now)) + len(client.send(signed, now))
        sent += 2
    bound = UnauthLimiter.BURST * rate + rate * seconds
    assert 1 <= answered <= bound < sent
    assert h.server.rate_limited == sent - answered
    assert h.relays.calls == []


def test_switching_to_none_live_refuses_the_next_refresh() -> None:
    h = Harness()
    client = h.client()
    assert client.allocate().cls == stun.CLASS_SUCCESS
    h.server.update_config(make_config(auth=NONE_AUTH))
    assert error_code(client.refresh()) == 400
