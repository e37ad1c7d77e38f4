"""Interoperability with aioice's independent STUN implementation."""

from __future__ import annotations

from aioice import stun as aio
from helpers.stun_samples import (
    LT_KEY,
    NONCE,
    REALM,
    TID,
    USERNAME,
    allocate_request,
    allocate_success,
)

from stunner_dp import stun

# aioice packs REQUESTED-TRANSPORT as a plain 32-bit integer: protocol in the top byte.
AIO_UDP = stun.TRANSPORT_UDP << 24


def test_our_allocate_request_parses_in_aioice() -> None:
    data = allocate_request()
    # aioice doesn't know EVEN-PORT etc. and skips them; the rest must agree.
    msg = aio.parse_message(data)  # also verifies our FINGERPRINT
    assert msg.message_method == aio.Method.ALLOCATE
    assert msg.message_class == aio.Class.REQUEST
    assert msg.transaction_id == TID
    assert msg.attributes["USERNAME"] == USERNAME
    assert msg.attributes["REALM"] == REALM
    assert msg.attributes["NONCE"] == NONCE
    assert msg.attributes["LIFETIME"] == 600
    assert msg.attributes["REQUESTED-TRANSPORT"] == AIO_UDP
    assert "FINGERPRINT" in msg.attributes
    assert msg.check_message_integrity(LT_KEY)
    assert not msg.check_message_integrity(b"wrong key")


def test_our_success_response_parses_in_aioice() -> None:
    msg = aio.parse_message(allocate_success())
    assert msg.message_class == aio.Class.RESPONSE
    assert msg.attributes["XOR-RELAYED-ADDRESS"] == ("10.0.0.1", 49152)
    assert msg.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)
    assert msg.attributes["SOFTWARE"] == "stunner-dp"
    assert msg.check_message_integrity(LT_KEY)


def test_our_error_and_ipv6_addresses_parse_in_aioice() -> None:
    data = stun.encode_message(
        stun.METHOD_CREATE_PERMISSION,
        stun.CLASS_ERROR,
        TID,
        [
            (stun.ATTR_ERROR_CODE, stun.encode_error_code(403)),
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(("2001:db8::42", 9), TID)),
            (stun.ATTR_MAPPED_ADDRESS, stun.encode_address(("fe80::1", 65535))),
            (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(0x4ABC)),
        ],
        fingerprint=True,
    )
    msg = aio.parse_message(data)
    assert msg.message_class == aio.Class.ERROR
    assert msg.attributes["ERROR-CODE"] == (403, "Forbidden")
    assert msg.attributes["XOR-PEER-ADDRESS"] == ("2001:db8::42", 9)
    assert msg.attributes["MAPPED-ADDRESS"] == ("fe80::1", 65535)
    assert msg.attributes["CHANNEL-NUMBER"] == 0x4ABC


def test_aioice_messages_parse_with_ours() -> None:
    req = aio.Message(
        message_method=aio.Method.ALLOCATE,
        message_class=aio.Class.REQUEST,
        transaction_id=TID,
        attributes={
            "USERNAME": USERNAME,
            "REALM": REALM,
            "NONCE": NONCE,
            "REQUESTED-TRANSPORT": AIO_UDP,
            "LIFETIME": 3600,
            "SOFTWARE": "aioice test",
        },
    )
    msg = stun.parse_message(bytes(req))
    assert (msg.method, msg.cls) == (stun.METHOD_ALLOCATE, stun.CLASS_REQUEST)
    assert msg.transaction_id == TID
    assert stun.decode_text(msg.get(stun.ATTR_USERNAME) or b"") == USERNAME
    assert stun.decode_text(msg.get(stun.ATTR_REALM) or b"") == REALM
    assert msg.get(stun.ATTR_NONCE) == NONCE
    assert stun.decode_requested_transport(msg.get(stun.ATTR_REQUESTED_TRANSPORT) or b"") == 17
    assert stun.decode_u32(msg.get(stun.ATTR_LIFETIME) or b"") == 3600
    assert stun.decode_text(msg.get(stun.ATTR_SOFTWARE) or b"") == "aioice test"
    assert not msg.check_integrity(LT_KEY)  # no MESSAGE-INTEGRITY yet

    # This aioice version's add_message_integrity() also appends FINGERPRINT.
    req.add_message_integrity(LT_KEY)
    msg = stun.parse_message(bytes(req))
    assert msg.integrity_offset > 0 and msg.fingerprint_offset > msg.integrity_offset
    assert msg.check_integrity(LT_KEY)
    assert not msg.check_integrity(b"other")


def test_aioice_fingerprint_only_and_response_addresses() -> None:
    resp = aio.Message(
        message_method=aio.Method.ALLOCATE,
        message_class=aio.Class.RESPONSE,
        transaction_id=TID,
        attributes={
            "XOR-RELAYED-ADDRESS": ("2001:db8::1", 50000),
            "XOR-MAPPED-ADDRESS": ("198.51.100.1", 1234),
            "LIFETIME": 600,
        },
    )
    resp.add_fingerprint()
    msg = stun.parse_message(bytes(resp))  # verifies aioice's FINGERPRINT
    assert msg.fingerprint_offset > 0 and msg.integrity_offset == -1
    tid = msg.transaction_id
    relayed = msg.get(stun.ATTR_XOR_RELAYED_ADDRESS) or b""
    mapped = msg.get(stun.ATTR_XOR_MAPPED_ADDRESS) or b""
    assert stun.decode_xor_address(relayed, tid) == ("2001:db8::1", 50000)
    assert stun.decode_xor_address(mapped, tid) == ("198.51.100.1", 1234)


def test_aioice_error_response() -> None:
    resp = aio.Message(
        message_method=aio.Method.REFRESH,
        message_class=aio.Class.ERROR,
        transaction_id=TID,
        attributes={"ERROR-CODE": (438, "Stale Nonce"), "NONCE": b"n2", "REALM": REALM},
    )
    resp.add_message_integrity(LT_KEY)
    msg = stun.parse_message(bytes(resp))
    assert (msg.method, msg.cls) == (stun.METHOD_REFRESH, stun.CLASS_ERROR)
    assert stun.decode_error_code(msg.get(stun.ATTR_ERROR_CODE) or b"") == (438, "Stale Nonce")
    assert msg.check_integrity(LT_KEY)


def test_byte_identical_to_aioice_when_layout_matches() -> None:
    """Same attributes in the same order: both encoders emit identical bytes."""
    req = aio.Message(
        message_method=aio.Method.CHANNEL_BIND,
        message_class=aio.Class.REQUEST,
        transaction_id=TID,
        attributes={
            "CHANNEL-NUMBER": 0x4001,
            "XOR-PEER-ADDRESS": ("203.0.113.9", 4242),
            "USERNAME": USERNAME,
            "REALM": REALM,
            "NONCE": NONCE,
        },
    )
    req.add_message_integrity(LT_KEY)
    ours = stun.encode_message(
        stun.METHOD_CHANNEL_BIND,
        stun.CLASS_REQUEST,
        TID,
        [
            (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(0x4001)),
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(("203.0.113.9", 4242), TID)),
            (stun.ATTR_USERNAME, USERNAME.encode()),
            (stun.ATTR_REALM, REALM.encode()),
            (stun.ATTR_NONCE, NONCE),
        ],
        integrity_key=LT_KEY,
        fingerprint=True,
    )
    assert ours == bytes(req)
