"""RFC 5769 test vectors, typed in from the RFC's hex dumps."""

from __future__ import annotations

import hashlib

import pytest

from stunner_dp import stun

SHORT_TERM_KEY = b"VOkJxbRl1RmTxUk/WvJxBt"

# 2.1 Sample Request. USERNAME "evtj:h6vY" (9 bytes) is padded with 0x20 bytes.
SAMPLE_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "80220010"
    "5354554e"
    "20746573"
    "7420636c"
    "69656e74"
    "00240004"
    "6e0001ff"
    "80290008"
    "932ff9b1"
    "51263b36"
    "00060009"
    "6576746a"
    "3a683676"
    "59202020"
    "00080014"
    "9aeaa70c"
    "bfd8cb56"
    "781ef2b5"
    "b2d3f249"
    "c1b571a2"
    "80280004"
    "e57a3bcf"
)

# 2.2 IPv4 response. SOFTWARE "test vector" (11 bytes) is padded with one 0x20.
IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b"
    "74657374"
    "20766563"
    "746f7220"
    "00200008"
    "0001a147"
    "e112a643"
    "00080014"
    "2b91f599"
    "fd9e90c3"
    "8c7489f9"
    "2af9ba53"
    "f06be7d7"
    "80280004"
    "c07d4c96"
)

# 2.3 IPv6 response, same SOFTWARE padding as 2.2.
IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b"
    "74657374"
    "20766563"
    "746f7220"
    "00200014"
    "0002a147"
    "0113a9fa"
    "a5d3f179"
    "bc25f4b5"
    "bed2b9d9"
    "00080014"
    "a382954e"
    "4be67bf1"
    "1784c97c"
    "8292c275"
    "bfe3ed41"
    "80280004"
    "c8fb0b4c"
)

# 2.4 Request with long-term authentication (zero padding, no FINGERPRINT).
LONG_TERM_REQUEST = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012"
    "e3839ee3"
    "8388e383"
    "aae38383"
    "e382afe3"
    "82b90000"
    "0015001c"
    "662f2f34"
    "39396b39"
    "35346436"
    "4f4c3334"
    "6f4c3946"
    "53547679"
    "36347341"
    "0014000b"
    "6578616d"
    "706c652e"
    "6f726700"
    "00080014"
    "f6702465"
    "6dd64a3e"
    "02b8e071"
    "2e85c9a2"
    "8ca89666"
)
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LT_KEY = hashlib.md5(f"{LT_USERNAME}:example.org:TheMatrIX".encode()).digest()

SHORT_TERM_VECTORS = [SAMPLE_REQUEST, IPV4_RESPONSE, IPV6_RESPONSE]


def _zero_padding(msg: stun.Message) -> bytes:
    """The vector with its padding bytes zeroed (what our encoder emits)."""
    out = bytearray(msg.raw)
    pos = stun.HEADER_SIZE
    for _, value in msg.attributes:
        n = len(value)
        out[pos + 4 + n : pos + 4 + ((n + 3) & ~3)] = bytes(-n & 3)
        pos += 4 + ((n + 3) & ~3)
    return bytes(out)


def test_sample_request() -> None:
    msg = stun.parse_message(SAMPLE_REQUEST)
    assert (msg.method, msg.cls) == (stun.METHOD_BINDING, stun.CLASS_REQUEST)
    assert msg.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert stun.decode_text(msg.get(stun.ATTR_SOFTWARE) or b"") == "STUN test client"
    assert stun.decode_text(msg.get(stun.ATTR_USERNAME) or b"") == "evtj:h6vY"
    assert stun.decode_u32(msg.get(stun.ATTR_PRIORITY) or b"") == 0x6E0001FF
    assert msg.get(stun.ATTR_ICE_CONTROLLED) == bytes.fromhex("932ff9b151263b36")
    assert msg.check_integrity(SHORT_TERM_KEY)
    assert not msg.check_integrity(b"wrong")
    assert msg.fingerprint_offset == len(SAMPLE_REQUEST) - 8
    assert msg.integrity_offset == len(SAMPLE_REQUEST) - 32


def test_ipv4_response() -> None:
    msg = stun.parse_message(IPV4_RESPONSE)
    assert (msg.method, msg.cls) == (stun.METHOD_BINDING, stun.CLASS_SUCCESS)
    assert stun.decode_text(msg.get(stun.ATTR_SOFTWARE) or b"") == "test vector"
    xma = msg.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    assert xma is not None
    assert stun.decode_xor_address(xma, msg.transaction_id) == ("192.0.2.1", 32853)
    assert msg.check_integrity(SHORT_TERM_KEY)


def test_ipv6_response() -> None:
    msg = stun.parse_message(IPV6_RESPONSE)
    xma = msg.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    assert xma is not None
    assert stun.decode_xor_address(xma, msg.transaction_id) == (
        "2001:db8:1234:5678:11:2233:4455:6677",
        32853,
    )
    assert msg.check_integrity(SHORT_TERM_KEY)


def test_long_term_request() -> None:
    msg = stun.parse_message(LONG_TERM_REQUEST)
    assert stun.decode_text(msg.get(stun.ATTR_USERNAME) or b"") == LT_USERNAME
    assert msg.get(stun.ATTR_NONCE) == b"f//499k954d6OL34oL9FSTvy64sA"
    assert msg.get(stun.ATTR_REALM) == b"example.org"
    assert msg.fingerprint_offset == -1
    assert msg.check_integrity(LT_KEY)
    assert not msg.check_integrity(SHORT_TERM_KEY)
    assert not msg.check_integrity_sha256(LT_KEY)  # absent


def test_long_term_request_reencodes_byte_exact() -> None:
    # This vector pads with zeros and has no FINGERPRINT, so our output must match exactly.
    msg = stun.parse_message(LONG_TERM_REQUEST)
    out = stun.encode_message(
        msg.method,
        msg.cls,
        msg.transaction_id,
        [(t, v) for t, v in msg.attributes if t != stun.ATTR_MESSAGE_INTEGRITY],
        integrity_key=LT_KEY,
    )
    assert out == LONG_TERM_REQUEST


@pytest.mark.parametrize("vector", SHORT_TERM_VECTORS, ids=["2.1", "2.2", "2.3"])
def test_short_term_vectors_reencode(vector: bytes) -> None:
    """Honest about padding: these vectors pad with 0x20, we pad with 0x00.

    So the bytes can only match up to the MESSAGE-INTEGRITY value once the
    vector's padding is zeroed; the MI/FINGERPRINT values differ because they
    cover the padding. Our own MI/FINGERPRINT must then verify, and the
    attributes must be the same.
    """
    msg = stun.parse_message(vector)
    trailers = (stun.ATTR_MESSAGE_INTEGRITY, stun.ATTR_FINGERPRINT)
    out = stun.encode_message(
        msg.method,
        msg.cls,
        msg.transaction_id,
        [(t, v) for t, v in msg.attributes if t not in trailers],
        integrity_key=SHORT_TERM_KEY,
        fingerprint=True,
    )
    assert len(out) == len(vector)
    mi_value_start = msg.integrity_offset + 4
    assert out[:mi_value_start] == _zero_padding(msg)[:mi_value_start]
    again = stun.parse_message(out)  # verifies our FINGERPRINT
    assert again.check_integrity(SHORT_TERM_KEY)
    assert again.attributes[:-2] == msg.attributes[:-2]
    assert [t for t, _ in again.attributes] == [t for t, _ in msg.attributes]


@pytest.mark.parametrize(
    ("vector", "key"),
    [*((v, SHORT_TERM_KEY) for v in SHORT_TERM_VECTORS), (LONG_TERM_REQUEST, LT_KEY)],
    ids=["2.1", "2.2", "2.3", "2.4"],
)
def test_any_flipped_byte_is_detected(vector: bytes, key: bytes) -> None:
    """Every single-bit flip is caught: parse error, FINGERPRINT error, or bad integrity;
    except a flip in the FINGERPRINT's type, which makes it an attribute after
    MESSAGE-INTEGRITY, ignored as RFC 8489 14.5 says: MI, which never covered it, still holds
    and the flipped attribute is nowhere in the parsed message."""
    original = stun.parse_message(vector)
    mi_end = original.integrity_offset + 24
    for i in range(len(vector)):
        for bit in (0x01, 0x80):
            data = bytearray(vector)
            data[i] ^= bit
            try:
                msg = stun.parse_message(bytes(data))
            except stun.StunError:
                continue
            assert msg.fingerprint_offset == -1
            if i in (mi_end, mi_end + 1) and len(vector) == mi_end + 8:
                assert msg.integrity_offset + 24 == mi_end
                assert msg.attributes == original.attributes[:-1]  # FINGERPRINT's gone
                continue
            # Otherwise only the 2.4 vector (no FINGERPRINT) may still parse; then MI must fail.
            assert not msg.check_integrity(key), (i, bit)
