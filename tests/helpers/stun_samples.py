"""Shared sample messages for the STUN codec tests (imported by the test modules)."""

from __future__ import annotations

import hashlib

from stunner_dp import stun

TID = bytes(range(1, 13))
USERNAME = "alice"
REALM = "example.org"
PASSWORD = "s3cret"
NONCE = b"0123456789abcdef"
LT_KEY = hashlib.md5(f"{USERNAME}:{REALM}:{PASSWORD}".encode()).digest()


def _auth() -> list[tuple[int, bytes]]:
    return [
        (stun.ATTR_USERNAME, USERNAME.encode()),
        (stun.ATTR_REALM, REALM.encode()),
        (stun.ATTR_NONCE, NONCE),
    ]


def allocate_request() -> bytes:
    return stun.encode_message(
        stun.METHOD_ALLOCATE,
        stun.CLASS_REQUEST,
        TID,
        [
            (stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(stun.TRANSPORT_UDP)),
            (stun.ATTR_LIFETIME, stun.encode_u32(600)),
            (stun.ATTR_EVEN_PORT, stun.encode_even_port(True)),
            (stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6)),
            (stun.ATTR_DONT_FRAGMENT, b""),
            *_auth(),
        ],
        integrity_key=LT_KEY,
        fingerprint=True,
    )


def refresh_request() -> bytes:
    return stun.encode_message(
        stun.METHOD_REFRESH,
        stun.CLASS_REQUEST,
        TID,
        [(stun.ATTR_LIFETIME, stun.encode_u32(0)), *_auth()],
        integrity_key=LT_KEY,
    )


def create_permission_request() -> bytes:
    return stun.encode_message(
        stun.METHOD_CREATE_PERMISSION,
        stun.CLASS_REQUEST,
        TID,
        [
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(("198.51.100.7", 0), TID)),
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(("2001:db8::7", 0), TID)),
            *_auth(),
        ],
        integrity_key=LT_KEY,
        integrity_sha256_key=hashlib.sha256(LT_KEY).digest(),
        fingerprint=True,
    )


def channel_bind_request() -> bytes:
    return stun.encode_message(
        stun.METHOD_CHANNEL_BIND,
        stun.CLASS_REQUEST,
        TID,
        [
            (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(0x4001)),
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(("203.0.113.9", 4242), TID)),
            *_auth(),
        ],
        integrity_key=LT_KEY,
        fingerprint=True,
    )


def send_indication() -> bytes:
    return stun.encode_message(
        stun.METHOD_SEND,
        stun.CLASS_INDICATION,
        TID,
        [
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(("2001:db8::9", 5000), TID)),
            (stun.ATTR_DATA, b"hello, peer!\x00\x01\x02"),
        ],
    )


def allocate_success() -> bytes:
    return stun.encode_message(
        stun.METHOD_ALLOCATE,
        stun.CLASS_SUCCESS,
        TID,
        [
            (stun.ATTR_XOR_RELAYED_ADDRESS, stun.encode_xor_address(("10.0.0.1", 49152), TID)),
            (stun.ATTR_XOR_MAPPED_ADDRESS, stun.encode_xor_address(("192.0.2.1", 32853), TID)),
            (stun.ATTR_LIFETIME, stun.encode_u32(600)),
            (stun.ATTR_SOFTWARE, b"stunner-dp"),
            (stun.ATTR_ICMP, stun.encode_icmp(3, 1, 0)),
        ],
        integrity_key=LT_KEY,
        fingerprint=True,
    )


def error_response() -> bytes:
    return stun.encode_message(
        stun.METHOD_ALLOCATE,
        stun.CLASS_ERROR,
        TID,
        [
            (stun.ATTR_ERROR_CODE, stun.encode_error_code(420)),
            (stun.ATTR_UNKNOWN_ATTRIBUTES, stun.encode_unknown_attributes([0x7777, 0x0042])),
            (stun.ATTR_ADDRESS_ERROR_CODE, stun.encode_address_error_code(2, 440)),
            (stun.ATTR_ALTERNATE_SERVER, stun.encode_address(("::1", 3478))),
            (stun.ATTR_REALM, REALM.encode()),
            (stun.ATTR_NONCE, NONCE),
        ],
        fingerprint=True,
    )


ALL_SAMPLES: list[bytes] = [
    allocate_request(),
    refresh_request(),
    create_permission_request(),
    channel_bind_request(),
    send_indication(),
    allocate_success(),
    error_response(),
]


def decode_every_attribute(msg: stun.Message) -> None:
    """Run the matching typed decoder on each attribute; only StunError may escape."""
    tid = msg.transaction_id
    for atype, value in msg.attributes:
        try:
            if atype in (
                stun.ATTR_MAPPED_ADDRESS,
                stun.ATTR_ALTERNATE_SERVER,
                stun.ATTR_RESPONSE_ORIGIN,
                stun.ATTR_OTHER_ADDRESS,
            ):
                stun.decode_address(value)
            elif atype in (
                stun.ATTR_XOR_MAPPED_ADDRESS,
                stun.ATTR_XOR_PEER_ADDRESS,
                stun.ATTR_XOR_RELAYED_ADDRESS,
            ):
                stun.decode_xor_address(value, tid)
            elif atype == stun.ATTR_ERROR_CODE:
                stun.decode_error_code(value)
            elif atype == stun.ATTR_ADDRESS_ERROR_CODE:
                stun.decode_address_error_code(value)
            elif atype == stun.ATTR_UNKNOWN_ATTRIBUTES:
                stun.decode_unknown_attributes(value)
            elif atype in (stun.ATTR_LIFETIME, stun.ATTR_PRIORITY):
                stun.decode_u32(value)
            elif atype == stun.ATTR_CHANNEL_NUMBER:
                stun.decode_channel_number(value)
            elif atype == stun.ATTR_REQUESTED_TRANSPORT:
                stun.decode_requested_transport(value)
            elif atype == stun.ATTR_EVEN_PORT:
                stun.decode_even_port(value)
            elif atype in (stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.ATTR_ADDITIONAL_ADDRESS_FAMILY):
                stun.decode_family(value)
            elif atype == stun.ATTR_ICMP:
                stun.decode_icmp(value)
            elif atype in (
                stun.ATTR_USERNAME,
                stun.ATTR_REALM,
                stun.ATTR_NONCE,
                stun.ATTR_SOFTWARE,
            ):
                stun.decode_text(value)
        except stun.StunError:
            pass
