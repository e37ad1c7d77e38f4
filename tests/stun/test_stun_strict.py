"""parse_message strictness and encode_message trailers."""

from __future__ import annotations

import hashlib
import struct

import pytest
from helpers.stun_samples import (
    ALL_SAMPLES,
    LT_KEY,
    TID,
    allocate_request,
    create_permission_request,
)

from stunner_dp import stun


def attr(atype: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    return struct.pack("!HH", atype, len(value)) + value + pad * (-len(value) & 3)


def raw_message(
    body: bytes, *, msg_type: int = 0x0001, length: int | None = None, cookie: int = 0x2112A442
) -> bytes:
    n = len(body) if length is None else length
    return struct.pack("!HHI12s", msg_type, n, cookie, TID) + body


MI = attr(stun.ATTR_MESSAGE_INTEGRITY, bytes(20))
MI256 = attr(stun.ATTR_MESSAGE_INTEGRITY_SHA256, bytes(32))
SOFTWARE = attr(stun.ATTR_SOFTWARE, b"x")


def with_fingerprint(body: bytes) -> bytes:
    """Append a correct FINGERPRINT to a raw body."""
    head = raw_message(body, length=len(body) + 8)
    crc = stun.message._fingerprint(head)
    return head + attr(stun.ATTR_FINGERPRINT, struct.pack("!I", crc))


def test_minimal_message_parses() -> None:
    msg = stun.parse_message(raw_message(b""))
    assert (msg.method, msg.cls, msg.attributes) == (stun.METHOD_BINDING, stun.CLASS_REQUEST, [])
    assert msg.transaction_id == TID


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(raw_message(b"")[:19], id="short-header"),
        pytest.param(raw_message(b"", cookie=0x2112A443), id="wrong-cookie"),
        pytest.param(raw_message(b"", msg_type=0x4001), id="top-bit-01"),
        pytest.param(raw_message(b"", msg_type=0x8001), id="top-bit-10"),
        pytest.param(raw_message(SOFTWARE, length=4), id="length-too-small"),
        pytest.param(raw_message(SOFTWARE, length=12), id="length-too-big"),
        pytest.param(raw_message(SOFTWARE + b"\x00\x00", length=10), id="length-not-mult-4"),
        pytest.param(raw_message(SOFTWARE[:-1], length=7), id="odd-datagram"),
        pytest.param(raw_message(struct.pack("!HH", 0x8022, 4)), id="truncated-value"),
        pytest.param(raw_message(struct.pack("!HH", 0x8022, 5) + b"abcd"), id="missing-padding"),
        pytest.param(raw_message(struct.pack("!HH", 0x8022, 200) + b"abcd"), id="overrun"),
        pytest.param(raw_message(attr(8, bytes(16))), id="short-mi"),
        pytest.param(raw_message(attr(0x1C, bytes(12))), id="short-mi256"),
        pytest.param(raw_message(attr(0x1C, bytes(18))), id="mi256-not-mult-4"),
        pytest.param(raw_message(attr(0x1C, bytes(36))), id="long-mi256"),
        pytest.param(raw_message(attr(0x8028, bytes(8))), id="long-fingerprint"),
        pytest.param(raw_message(attr(0x8028, bytes(4))), id="bad-fingerprint"),
    ],
)
def test_rejected(data: bytes) -> None:
    with pytest.raises(stun.StunError):
        stun.parse_message(data)


OTHER_MI = attr(stun.ATTR_MESSAGE_INTEGRITY, b"\x01" * 20)
OTHER_MI256 = attr(stun.ATTR_MESSAGE_INTEGRITY_SHA256, b"\x01" * 32)


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        # RFC 8489 14.5: after MESSAGE-INTEGRITY all but MI-SHA256 and FINGERPRINT is ignored
        pytest.param(MI + SOFTWARE, [stun.ATTR_MESSAGE_INTEGRITY], id="attr-after-mi"),
        pytest.param(MI + OTHER_MI, [stun.ATTR_MESSAGE_INTEGRITY], id="duplicate-mi"),
        pytest.param(
            MI + SOFTWARE + MI256,
            [stun.ATTR_MESSAGE_INTEGRITY, stun.ATTR_MESSAGE_INTEGRITY_SHA256],
            id="mi-ignored-mi256",
        ),
        # 14.6: after MESSAGE-INTEGRITY-SHA256 all but FINGERPRINT is ignored
        pytest.param(MI256 + SOFTWARE, [stun.ATTR_MESSAGE_INTEGRITY_SHA256], id="attr-after-mi256"),
        pytest.param(MI256 + MI, [stun.ATTR_MESSAGE_INTEGRITY_SHA256], id="mi-after-mi256"),
        pytest.param(MI256 + OTHER_MI256, [stun.ATTR_MESSAGE_INTEGRITY_SHA256], id="dup-mi256"),
        # a comprehension-required unknown type after integrity is ignored too (no 420)
        pytest.param(MI + attr(0x0777, b"?"), [stun.ATTR_MESSAGE_INTEGRITY], id="unknown-after"),
    ],
)
def test_attributes_after_integrity_are_ignored(body: bytes, kept: list[int]) -> None:
    for data in (raw_message(body), with_fingerprint(body)):
        msg = stun.parse_message(data)
        assert [t for t, _ in msg.attributes if t != stun.ATTR_FINGERPRINT] == kept
        # the first of each integrity attribute is the one checked, never an ignored one
        assert msg.integrity_offset == (20 if kept[0] == stun.ATTR_MESSAGE_INTEGRITY else -1)
        assert msg.get(stun.ATTR_MESSAGE_INTEGRITY) in (None, bytes(20))
        assert msg.get(stun.ATTR_MESSAGE_INTEGRITY_SHA256) in (None, bytes(32))
        assert not msg.unknown_required(stun.KNOWN_ATTRIBUTES)


def test_ignored_attributes_still_count_against_the_cap() -> None:
    body = MI + SOFTWARE * stun.MAX_ATTRIBUTES
    with pytest.raises(stun.StunError, match="attributes"):
        stun.parse_message(raw_message(body))


def test_signed_request_with_trailing_junk_still_verifies() -> None:
    """A signed request with an attribute after MESSAGE-INTEGRITY-SHA256 (then FINGERPRINT):
    both MACs hold, the junk is gone."""
    key = hashlib.sha256(b"u:r:p").digest()
    good = stun.encode_message(
        stun.METHOD_BINDING,
        stun.CLASS_REQUEST,
        TID,
        [(stun.ATTR_SOFTWARE, b"x")],
        integrity_key=key,
        integrity_sha256_key=key,
    )
    junk = attr(stun.ATTR_USERNAME, b"mallory")
    body = good[20:] + junk
    data = with_fingerprint(body)
    msg = stun.parse_message(data)
    assert msg.check_integrity(key) and msg.check_integrity_sha256(key)
    assert msg.get(stun.ATTR_USERNAME) is None and msg.fingerprint_offset > 0


def test_attribute_after_fingerprint_rejected() -> None:
    good = with_fingerprint(SOFTWARE)
    stun.parse_message(good)
    bad = bytearray(good + SOFTWARE)
    bad[2:4] = struct.pack("!H", len(bad) - 20)
    with pytest.raises(stun.StunError):
        stun.parse_message(bytes(bad))
    # Even with the FINGERPRINT recomputed over what precedes it, order is enforced.
    fixed_fp = with_fingerprint(SOFTWARE)[:-8]
    bad2 = bytearray(fixed_fp + attr(0x8028, bytes(4)) + SOFTWARE)
    bad2[2:4] = struct.pack("!H", len(bad2) - 20)
    crc = stun.message._fingerprint(bytes(bad2[: len(fixed_fp)]))
    bad2[len(fixed_fp) + 4 : len(fixed_fp) + 8] = struct.pack("!I", crc)
    with pytest.raises(stun.StunError, match="after FINGERPRINT"):
        stun.parse_message(bytes(bad2))


def test_duplicate_fingerprint_rejected() -> None:
    good = with_fingerprint(SOFTWARE)
    bad = bytearray(good + good[-8:])
    bad[2:4] = struct.pack("!H", len(bad) - 20)
    with pytest.raises(stun.StunError):
        stun.parse_message(bytes(bad))


def test_allowed_trailer_orders() -> None:
    for body in (MI, MI256, MI + MI256):
        msg = stun.parse_message(with_fingerprint(body))
        assert msg.fingerprint_offset > 0
        assert stun.parse_message(raw_message(body)).fingerprint_offset == -1


def test_nonzero_padding_accepted_and_stripped() -> None:
    data = raw_message(attr(stun.ATTR_SOFTWARE, b"abc", pad=b"\xff") + attr(0x7F01, b"", b"z"))
    msg = stun.parse_message(data)
    assert msg.attributes == [(stun.ATTR_SOFTWARE, b"abc"), (0x7F01, b"")]


def test_unknown_attributes_and_any_method_class_are_kept() -> None:
    # Comprehension checks and method/class validity are the server's decision.
    data = raw_message(attr(0x0777, b"?") + attr(0xFFFF, b"!!!!"), msg_type=0x3FFF)
    msg = stun.parse_message(data)
    assert msg.cls == stun.CLASS_ERROR and msg.method == 0xFFF
    assert msg.attributes == [(0x0777, b"?"), (0xFFFF, b"!!!!")]
    assert 0x0777 not in stun.KNOWN_ATTRIBUTES


def test_bytes_like_and_non_bytes_inputs() -> None:
    good = allocate_request()
    for view in (bytearray(good), memoryview(good)):
        assert stun.parse_message(view).raw == good  # type: ignore[arg-type]
    for junk in (None, "text", 3.5, [1, 2]):
        with pytest.raises(stun.StunError):
            stun.parse_message(junk)  # type: ignore[arg-type]


def test_message_accessors() -> None:
    msg = stun.parse_message(create_permission_request())
    peers = msg.get_all(stun.ATTR_XOR_PEER_ADDRESS)
    assert len(peers) == 2
    assert msg.get(stun.ATTR_XOR_PEER_ADDRESS) == peers[0]
    assert msg.has(stun.ATTR_REALM) and not msg.has(stun.ATTR_LIFETIME)
    assert msg.get(stun.ATTR_LIFETIME) is None and msg.get_all(stun.ATTR_LIFETIME) == []
    assert [stun.decode_xor_address(p, msg.transaction_id)[0] for p in peers] == [
        "198.51.100.7",
        "2001:db8::7",
    ]


def test_integrity_sha256_full_and_truncated() -> None:
    key256 = hashlib.sha256(LT_KEY).digest()
    msg = stun.parse_message(create_permission_request())
    assert msg.check_integrity(LT_KEY)
    assert msg.check_integrity_sha256(key256)
    assert not msg.check_integrity_sha256(LT_KEY)
    # Build a truncated (16-byte) MI-SHA256 by hand: HMAC over the prefix with the
    # length counting up to the end of the 20-byte attribute.
    import hmac

    body = SOFTWARE
    head = raw_message(body, length=len(body) + 20)
    mac = hmac.new(key256, head, hashlib.sha256).digest()[:16]
    data = head + attr(stun.ATTR_MESSAGE_INTEGRITY_SHA256, mac)
    msg = stun.parse_message(data)
    assert msg.check_integrity_sha256(key256)
    assert not msg.check_integrity_sha256(b"other")
    assert not msg.check_integrity(key256)  # absent


def test_locally_built_message_has_no_integrity() -> None:
    msg = stun.Message(stun.METHOD_BINDING, stun.CLASS_REQUEST, TID, [])
    assert not msg.check_integrity(b"k") and not msg.check_integrity_sha256(b"k")


def test_encode_trailer_layout() -> None:
    data = stun.encode_message(
        stun.METHOD_BINDING,
        stun.CLASS_SUCCESS,
        TID,
        [(stun.ATTR_SOFTWARE, b"abc")],
        integrity_key=b"k1",
        integrity_sha256_key=b"k2",
        fingerprint=True,
    )
    msg = stun.parse_message(data)
    assert [t for t, _ in msg.attributes] == [
        stun.ATTR_SOFTWARE,
        stun.ATTR_MESSAGE_INTEGRITY,
        stun.ATTR_MESSAGE_INTEGRITY_SHA256,
        stun.ATTR_FINGERPRINT,
    ]
    assert msg.check_integrity(b"k1") and msg.check_integrity_sha256(b"k2")
    assert data[20 + 4 + 3] == 0  # zero padding


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transaction_id": b"short"},
        {"attributes": [(stun.ATTR_FINGERPRINT, bytes(4))]},
        {"attributes": [(stun.ATTR_MESSAGE_INTEGRITY, bytes(20))]},
        {"attributes": [(stun.ATTR_DATA, bytes(70000))]},
        {"attributes": [(stun.ATTR_DATA, bytes(40000)), (stun.ATTR_DATA, bytes(40000))]},
        {"cls": 0x011},
    ],
)
def test_encode_rejects_caller_mistakes(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "method": stun.METHOD_BINDING,
        "cls": stun.CLASS_REQUEST,
        "transaction_id": TID,
        "attributes": [],
        **kwargs,
    }
    with pytest.raises(ValueError):
        stun.encode_message(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", range(0x000, 0x1000, 0x0F7))
@pytest.mark.parametrize(
    "cls", [stun.CLASS_REQUEST, stun.CLASS_INDICATION, stun.CLASS_SUCCESS, stun.CLASS_ERROR]
)
def test_method_class_round_trip(method: int, cls: int) -> None:
    msg = stun.parse_message(stun.encode_message(method, cls, TID))
    assert (msg.method, msg.cls) == (method, cls)


def test_known_type_values() -> None:
    # RFC 8489 / RFC 8656 message types as seen on the wire.
    assert stun.message_type(stun.METHOD_BINDING, stun.CLASS_SUCCESS) == 0x0101
    assert stun.message_type(stun.METHOD_ALLOCATE, stun.CLASS_ERROR) == 0x0113
    assert stun.message_type(stun.METHOD_SEND, stun.CLASS_INDICATION) == 0x0016
    assert stun.message_type(stun.METHOD_DATA, stun.CLASS_INDICATION) == 0x0017
    assert stun.split_message_type(0x0109) == (stun.METHOD_CHANNEL_BIND, stun.CLASS_SUCCESS)


def test_is_stun() -> None:
    for sample in ALL_SAMPLES:
        assert stun.is_stun(sample)
    assert not stun.is_stun(b"")
    assert not stun.is_stun(raw_message(b"", cookie=1))
    assert not stun.is_stun(raw_message(b"", msg_type=0x4001))
    assert not stun.is_stun(stun.encode_channel_data(0x4000, bytes(40)))


def test_constants() -> None:
    assert stun.method_name(stun.METHOD_CREATE_PERMISSION) == "CreatePermission"
    assert stun.method_name(0x0FF) == "Method(0x0FF)"
    assert set(stun.REASONS) == {
        300,
        400,
        401,
        403,
        420,
        437,
        438,
        440,
        441,
        442,
        443,
        446,
        447,
        486,
        500,
        508,
    }
    assert stun.ATTR_OTHER_ADDRESS in stun.KNOWN_ATTRIBUTES
    assert len(stun.KNOWN_ATTRIBUTES) == 36
