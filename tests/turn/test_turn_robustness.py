"""Unknown attributes and methods, and hostile bytes: never an exception, never a disturbed
allocation."""

from __future__ import annotations

import random

import pytest
from helpers.turn_harness import (
    CLIENT,
    PEER,
    T0,
    UDP_TRANSPORT,
    Harness,
    assert_success,
    error_code,
    xor_address,
)

from stunner_dp import stun
from stunner_dp.turn import events as ev


def allocated():  # type: ignore[no-untyped-def]
    h = Harness()
    c = h.client()
    assert_success(c.allocate(now=T0), stun.METHOD_ALLOCATE)
    assert_success(c.channel_bind(0x4000, PEER, now=T0), stun.METHOD_CHANNEL_BIND)
    h.server.events.clear()
    return h, c


def unknown_attributes(msg: stun.Message) -> list[int]:
    raw = msg.get(stun.ATTR_UNKNOWN_ATTRIBUTES)
    assert raw is not None
    return stun.decode_unknown_attributes(raw)


@pytest.mark.parametrize("method", [stun.METHOD_BINDING, stun.METHOD_ALLOCATE])
def test_unknown_comprehension_required_attribute_is_420(method: int) -> None:
    h = Harness()
    c = h.client()
    attrs = [*UDP_TRANSPORT, (0x0030, b"abcd"), (0x7FFF, b""), (0x8030, b"optional")]
    resp = c.transact(c.build(method, attrs, auth=False))
    assert error_code(resp) == 420
    assert unknown_attributes(resp) == [0x0030, 0x7FFF]  # not the optional 0x8030
    assert h.server.allocation_count == 0 and h.relays.calls == []
    [rejected] = h.events(ev.RequestRejected)
    assert rejected.code == 420


def test_420_for_a_signed_request_too() -> None:
    h = Harness()
    c = h.client()
    resp = c.allocate([*UDP_TRANSPORT, (0x0031, b"\x00")])
    assert error_code(resp) == 420
    assert unknown_attributes(resp) == [0x0031]
    assert h.server.allocation_count == 0


def test_unknown_comprehension_optional_attributes_are_ignored() -> None:
    c = Harness().client()
    resp = c.allocate([*UDP_TRANSPORT, (0x8030, b"x"), (0xC001, b"yy")])
    assert_success(resp, stun.METHOD_ALLOCATE)
    req = c.build(stun.METHOD_BINDING, [(0xFFFF, b"z")], auth=False)
    assert xor_address(c.transact(req), stun.ATTR_XOR_MAPPED_ADDRESS) == CLIENT


@pytest.mark.parametrize("method", [0x000C, 0x0002, 0x0FFF])
def test_unknown_method_is_400(method: int) -> None:
    h = Harness()
    c = h.client()
    resp = c.transact(c.build(method, auth=False))
    assert resp.method == method
    assert error_code(resp) == 400
    assert h.server.allocation_count == 0


def test_send_and_data_as_requests_are_400() -> None:
    c = Harness().client()
    for method in (stun.METHOD_SEND, stun.METHOD_DATA):
        assert error_code(c.transact(c.build(method, auth=False))) == 400


def test_responses_and_other_indications_from_clients_are_ignored() -> None:
    h, c = allocated()
    tid = b"r" * 12
    for method, cls in [
        (stun.METHOD_ALLOCATE, stun.CLASS_SUCCESS),
        (stun.METHOD_BINDING, stun.CLASS_ERROR),
        (stun.METHOD_BINDING, stun.CLASS_INDICATION),
        (stun.METHOD_DATA, stun.CLASS_INDICATION),
        (stun.METHOD_REFRESH, stun.CLASS_INDICATION),
    ]:
        assert c.send(stun.encode_message(method, cls, tid)) == []
    assert h.server.allocation_count == 1 and h.server.events == []


# -- malformed bytes ------------------------------------------------------------------------------


def mutations(seed: int, samples: list[bytes], count: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = [b"", b"\x00", b"\x00\x01\x00\x00", b"\xff" * 20, bytes(20), bytes(1500)]
    for _ in range(count):
        data = bytearray(rng.choice(samples))
        kind = rng.randrange(5)
        if kind == 0 and data:  # flip bytes
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            del data[rng.randrange(len(data) + 1) :]
        elif kind == 2:  # append junk
            data += rng.randbytes(rng.randint(1, 16))
        elif kind == 3 and len(data) > 4:  # lie about the length
            data[2:4] = rng.randrange(0x10000).to_bytes(2, "big")
        else:  # random bytes behind a plausible header
            data = bytearray(data[:20]) + rng.randbytes(rng.randint(0, 40))
        if bytes(data) in samples:  # a cut at the end or a bit flipped back changed nothing
            continue
        out.append(bytes(data))
    return out


def test_malformed_bytes_never_raise_and_leave_the_allocation_alone() -> None:
    h, c = allocated()
    alloc = h.allocation(c)
    before = (
        dict(alloc.permissions),
        dict(alloc.bindings),
        alloc.expires,
        alloc.relay,
        h.relays.open_ports.copy(),
    )
    tid = b"m" * 12
    samples = [
        c.build(stun.METHOD_ALLOCATE, UDP_TRANSPORT),
        c.build(stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, stun.encode_u32(0))]),
        c.build(
            stun.METHOD_CREATE_PERMISSION,
            [(stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(PEER, tid))],
            tid=tid,
        ),
        stun.encode_message(
            stun.METHOD_SEND,
            stun.CLASS_INDICATION,
            tid,
            [
                (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(PEER, tid)),
                (stun.ATTR_DATA, b"d"),
            ],
        ),
        stun.encode_channel_data(0x4000, b"channel data payload"),
    ]
    now = T0
    for data in mutations(1234, samples, 3000):
        now += 0.05  # keep clear of the per-IP answer rate limit
        # the shell demultiplexes on the first byte; feed both entry points anyway
        h.server.handle_stun(c.ctx, data, now)
        h.server.handle_channel_data(c.ctx, data)
    assert h.server.malformed > 2000
    # a mutated Refresh with lifetime 0 still carries a broken MESSAGE-INTEGRITY or FINGERPRINT,
    # so the allocation is exactly as it was (its expiry can only have been pushed by a
    # genuine Refresh, and no mutation can forge one)
    after = (
        dict(alloc.permissions),
        dict(alloc.bindings),
        alloc.expires,
        alloc.relay,
        h.relays.open_ports,
    )
    assert h.allocation(c) is alloc
    assert after == before
    # and the next good request from the same client is answered
    assert_success(c.refresh(1200, now=now), stun.METHOD_REFRESH)
    assert alloc.expires == now + 1200
    assert c.channel_data(0x4000, b"ok") == [(alloc.relay, PEER, b"ok")]


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(11),  # 19 bytes: short header
        b"\x00\x01\x00\x00\x21\x12\xa4\x43" + bytes(12),  # bad cookie
        b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12),  # length beyond the datagram
        b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x08abcd",  # overrun
        b"\xc0\x01\x00\x00\x21\x12\xa4\x42" + bytes(12),  # top bits set
    ],
    ids=["short", "cookie", "length", "attr-overrun", "top-bits"],
)
def test_specific_malformed_messages_are_dropped_silently(data: bytes) -> None:
    h, c = allocated()
    assert h.server.handle_stun(c.ctx, data, T0) == []
    assert h.server.malformed == 1
    resp = c.transact(c.build(stun.METHOD_BINDING, auth=False), T0)
    assert xor_address(resp, stun.ATTR_XOR_MAPPED_ADDRESS) == CLIENT


def test_bad_fingerprint_is_dropped() -> None:
    h, c = allocated()
    good = c.build(stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, stun.encode_u32(0))])
    bad = good[:-1] + bytes([good[-1] ^ 0xFF])
    assert h.server.handle_stun(c.ctx, bad, T0) == []
    assert h.has_allocation(c)


def test_broken_message_integrity_is_401_not_an_action() -> None:
    h, c = allocated()
    good = c.build(
        stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, stun.encode_u32(0))], fingerprint=False
    )
    bad = bytearray(good)
    bad[-1] ^= 0x01  # last byte of the HMAC
    resp = c.transact(bytes(bad), T0 + 1)
    assert error_code(resp) == 401
    assert h.has_allocation(c)


@pytest.mark.parametrize(
    "attrs",
    [
        [(stun.ATTR_USERNAME, b"\xff\xfe"), (stun.ATTR_REALM, b"r"), (stun.ATTR_NONCE, b"n")],
        [(stun.ATTR_USERNAME, b"u" * 600), (stun.ATTR_REALM, b"r"), (stun.ATTR_NONCE, b"n")],
    ],
    ids=["bad-utf8", "username-too-long"],
)
def test_malformed_credentials_are_400(attrs: list) -> None:  # type: ignore[type-arg]
    h = Harness()
    c = h.client()
    req = stun.encode_message(
        stun.METHOD_ALLOCATE,
        stun.CLASS_REQUEST,
        b"k" * 12,
        [*UDP_TRANSPORT, *attrs],
        integrity_key=b"key",
    )
    assert error_code(c.transact(req)) == 400
    assert h.server.allocation_count == 0
