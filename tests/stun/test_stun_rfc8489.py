"""RFC 8489 Appendix B.1 (a request with USERHASH and MESSAGE-INTEGRITY-SHA256), typed in from
the RFC's hex dump, and the codecs of PASSWORD-ALGORITHM(S) and the nonce cookie.

The printed vector carries two verified errata: its message length (0x9c, 156) does not match
its 136 bytes of attributes (erratum 6268), and its nonce cookie "AAAC" is bit 1, username
anonymity, once the feature bits are numbered from the least significant one (erratum 6290).
Its USERHASH and its MAC are right: SHA-256 of "username:realm" and HMAC-SHA256 under the
SHA-256 long-term key of "username:realm:password", the derivations `turn.auth` implements.
"""

from __future__ import annotations

import hmac

import pytest

from stunner_dp import stun
from stunner_dp.turn.auth import long_term_key, userhash

USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # unchanged by OpaqueString
PASSWORD = "TheMatrIX"  # "The\u00adM\u00aatr\u2168" after OpaqueString (RFC 8265)
REALM = "example.org"
NONCE = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"
TID = bytes.fromhex("78ad3433c6ad72c029da412e")

SAMPLE_B1 = bytes.fromhex(
    "0001009c2112a44278ad3433c6ad72c029da412e"
    # USERHASH
    "001e0020"
    "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
    # NONCE (41 bytes) and 3 bytes of padding
    "00150029"
    "6f624d61744a6f733241414143662f2f3439396b393534"
    "64364f4c33346f4c394653547679363473410000 00"
    # REALM (11 bytes) and 1 byte of padding
    "0014000b"
    "6578616d706c652e6f726700"
    # MESSAGE-INTEGRITY-SHA256
    "001c0020"
    "e4686c8f0edeb59013e07090010a93efccbccc544c0a45d9f830aa6d6f735a01"
)
SHA256_KEY = long_term_key(USERNAME, REALM, PASSWORD, stun.PASSWORD_ALGORITHM_SHA256)
MI256_AT = len(SAMPLE_B1) - 36


def test_sample_fields() -> None:
    assert len(SAMPLE_B1) - 20 == 136  # the header says 156: erratum 6268
    assert SAMPLE_B1[24:56] == userhash(USERNAME, REALM)
    assert SAMPLE_B1[60 : 60 + 41].decode() == NONCE
    assert SAMPLE_B1[108:119].decode() == REALM


def test_sample_mac_is_hmac_sha256_under_the_sha256_key() -> None:
    """As printed (header length 0x9c included), the MAC is HMAC-SHA256 of everything before
    it under SHA-256("username:realm:password"); not under the MD5 key."""
    mac = SAMPLE_B1[MI256_AT + 4 :]
    assert hmac.digest(SHA256_KEY, SAMPLE_B1[:MI256_AT], "sha256") == mac
    md5_key = long_term_key(USERNAME, REALM, PASSWORD)
    assert hmac.digest(md5_key, SAMPLE_B1[:MI256_AT], "sha256") != mac


def test_printed_sample_is_refused_for_its_length() -> None:
    with pytest.raises(stun.StunError, match="length"):
        stun.parse_message(SAMPLE_B1)


def test_sample_with_a_true_length_verifies_in_the_codec() -> None:
    """The same request with the length the RFC's rules give (136): it parses, and its
    MESSAGE-INTEGRITY-SHA256, computed over the header with that length, verifies."""
    body = [
        (stun.ATTR_USERHASH, userhash(USERNAME, REALM)),
        (stun.ATTR_NONCE, NONCE.encode()),
        (stun.ATTR_REALM, REALM.encode()),
    ]
    data = stun.encode_message(
        stun.METHOD_BINDING, stun.CLASS_REQUEST, TID, body, integrity_sha256_key=SHA256_KEY
    )
    assert data[4:MI256_AT] == SAMPLE_B1[4:MI256_AT]  # byte for byte but the length field
    assert data[2:4] == (136).to_bytes(2, "big")
    msg = stun.parse_message(data)
    assert msg.integrity_sha256_offset == MI256_AT and msg.integrity_offset == -1
    assert msg.check_integrity_sha256(SHA256_KEY)
    assert not msg.check_integrity_sha256(long_term_key(USERNAME, REALM, "TheMatrix"))
    assert msg.get(stun.ATTR_USERHASH) == SAMPLE_B1[24:56]
    assert stun.nonce_features(NONCE) == stun.SECURITY_FEATURE_USERNAME_ANONYMITY


def test_password_algorithms_codec() -> None:
    offer = [(stun.PASSWORD_ALGORITHM_SHA256, b""), (stun.PASSWORD_ALGORITHM_MD5, b"")]
    raw = stun.encode_password_algorithms(offer)
    assert raw == bytes.fromhex("0002000000010000")
    assert stun.decode_password_algorithms(raw) == offer
    one = stun.encode_password_algorithm(stun.PASSWORD_ALGORITHM_SHA256)
    assert stun.decode_password_algorithm(one) == (stun.PASSWORD_ALGORITHM_SHA256, b"")
    # parameters are padded to 4 bytes and kept unpadded
    with_params = stun.encode_password_algorithm(0x1234, b"abcde")
    assert len(with_params) == 12
    assert stun.decode_password_algorithm(with_params) == (0x1234, b"abcde")


@pytest.mark.parametrize(
    "value", [b"", b"\x00\x02\x00", b"\x00\x02\x00\x08abcd", b"\x00\x02\x00\x00\x00\x01\x00\x00"]
)
def test_bad_password_algorithm_values(value: bytes) -> None:
    with pytest.raises(stun.StunError):
        stun.decode_password_algorithm(value)


def test_nonce_cookie() -> None:
    both = stun.SECURITY_FEATURE_PASSWORD_ALGORITHMS | stun.SECURITY_FEATURE_USERNAME_ANONYMITY
    assert stun.encode_nonce_cookie(both) == "obMatJos2AAAD"
    assert stun.nonce_features("obMatJos2AAAD" + "rest") == both
    assert stun.nonce_features("obMatJos2AAAB") == stun.SECURITY_FEATURE_PASSWORD_ALGORITHMS
    for not_ours in ("", "plain-rfc5389-nonce", "obMatJos2AA", "obMatJos2!!!!xyz", "obmatjos2AAAD"):
        assert stun.nonce_features(not_ours) is None
