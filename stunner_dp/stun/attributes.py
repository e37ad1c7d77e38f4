"""Typed codecs for attribute values (RFC 8489 section 14, RFC 8656 section 18).

Decoders take the unpadded value as returned by ``Message.get`` and raise only
:class:`StunError`; encoders return the unpadded value and raise ``ValueError``
for bad arguments (a caller bug, not hostile input).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import struct
from collections.abc import Sequence

from .constants import (
    CHANGE_IP,
    CHANGE_PORT,
    FAMILY_IPV4,
    FAMILY_IPV6,
    MAGIC_COOKIE,
    NONCE_COOKIE,
    REASONS,
)
from .errors import StunError, only_stun_errors

Address = tuple[str, int]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_ADDR_HEAD = struct.Struct("!xBH")  # reserved, family, port
_V4 = struct.Struct("!2xH4B")  # (reserved, family already checked), port, 4 address bytes
_U8_RFFU = struct.Struct("!B3x")  # one byte then 24 RFFU bits
_COOKIE_HI = MAGIC_COOKIE >> 16
_COOKIE_BYTES = _U32.pack(MAGIC_COOKIE)

# RFC 8489 bounds text attributes at 763 bytes (128 characters); USERNAME at 513.
MAX_TEXT_BYTES = 763
MAX_USERNAME_BYTES = 513


def _pack_ip(ip: str) -> tuple[int, bytes]:
    # dotted-quad IPv4 without the ipaddress module, which costs a page of Python per call;
    # the round trip through str() admits only the canonical form ("01.2.3.4" is not)
    parts = ip.split(".")
    if len(parts) == 4:
        try:
            packed = bytes(map(int, parts))
        except ValueError:
            packed = b""
        if packed and ".".join(map(str, packed)) == ip:
            return FAMILY_IPV4, packed
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError as exc:
        raise ValueError(f"bad IP address {ip!r}") from exc
    family = FAMILY_IPV4 if parsed.version == 4 else FAMILY_IPV6
    return family, parsed.packed


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port}")


_V6 = struct.Struct("!8H")
_hex = "{:x}".format


def _v6_text(packed: bytes) -> str:
    """RFC 5952 text, same as ``ipaddress.IPv6Address(packed).compressed``.

    Formatting the eight hextets directly is ~2.5x cheaper than building an
    IPv6Address; XOR-PEER-ADDRESS is decoded on every Send indication.
    """
    h = _V6.unpack(packed)
    # Longest run of zero hextets, first one on ties; a lone zero stays "0".
    best_len = 1
    best_at = -1
    run = 0
    for i in range(8):
        if h[i]:
            run = 0
        else:
            run += 1
            if run > best_len:
                best_len = run
                best_at = i - run + 1
    if best_at < 0:
        return ":".join(map(_hex, h))
    head = ":".join(map(_hex, h[:best_at]))
    return head + "::" + ":".join(map(_hex, h[best_at + best_len :]))


def _bad_address(value: bytes) -> StunError:
    """Explain why an address value was rejected (only on the error path)."""
    if len(value) < 4:
        return StunError("address attribute too short")
    family = value[1]
    if family not in (FAMILY_IPV4, FAMILY_IPV6):
        return StunError(f"unknown address family {family}")
    return StunError(f"bad length {len(value)} for address family {family}")


def encode_address(addr: Address) -> bytes:
    """MAPPED-ADDRESS / ALTERNATE-SERVER / RESPONSE-ORIGIN / OTHER-ADDRESS value."""
    ip, port = addr
    _check_port(port)
    family, packed = _pack_ip(ip)
    return _ADDR_HEAD.pack(family, port) + packed


@only_stun_errors
def decode_address(value: bytes) -> Address:
    # Fast paths keyed on (length, family); IPv4 text is formatted from the
    # four bytes directly, several times cheaper than going through ipaddress.
    n = len(value)
    if n == 8 and value[1] == FAMILY_IPV4:
        port, a, b, c, d = _V4.unpack(value)
        return f"{a}.{b}.{c}.{d}", port
    if n == 20 and value[1] == FAMILY_IPV6:
        port = _U16.unpack_from(value, 2)[0]
        return _v6_text(bytes(value[4:])), port
    raise _bad_address(value)


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


def encode_xor_address(addr: Address, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-/XOR-PEER-/XOR-RELAYED-ADDRESS value."""
    ip, port = addr
    _check_port(port)
    family, packed = _pack_ip(ip)
    if len(transaction_id) != 12:
        raise ValueError("transaction_id must be 12 bytes")
    # IPv4 is XORed with the cookie; IPv6 with cookie || transaction id.
    pad = _COOKIE_BYTES if family == FAMILY_IPV4 else _COOKIE_BYTES + transaction_id
    return _ADDR_HEAD.pack(family, port ^ _COOKIE_HI) + _xor(packed, pad)


@only_stun_errors
def decode_xor_address(value: bytes, transaction_id: bytes) -> Address:
    if len(transaction_id) != 12:
        raise StunError("transaction_id must be 12 bytes")
    n = len(value)
    if n == 8 and value[1] == FAMILY_IPV4:
        port, a, b, c, d = _V4.unpack(value)
        # Cookie bytes 21 12 A4 42, inlined.
        return f"{a ^ 0x21}.{b ^ 0x12}.{c ^ 0xA4}.{d ^ 0x42}", port ^ _COOKIE_HI
    if n == 20 and value[1] == FAMILY_IPV6:
        port = _U16.unpack_from(value, 2)[0]
        packed = _xor(bytes(value[4:]), _COOKIE_BYTES + transaction_id)
        return _v6_text(packed), port ^ _COOKIE_HI
    raise _bad_address(value)


@only_stun_errors
def decode_text(value: bytes, max_len: int = MAX_TEXT_BYTES) -> str:
    """UTF-8 text of USERNAME/REALM/NONCE/SOFTWARE, at most ``max_len`` bytes."""
    if len(value) > max_len:
        raise StunError(f"text attribute longer than {max_len} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunError("text attribute is not valid UTF-8") from exc


def encode_text(text: str, max_len: int = MAX_TEXT_BYTES) -> bytes:
    """Inverse of :func:`decode_text`."""
    raw = text.encode("utf-8")
    if len(raw) > max_len:
        raise ValueError(f"text longer than {max_len} bytes")
    return raw


def _pack_code(code: int, reason: str | None) -> bytes:
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} outside 300..699")
    text = REASONS.get(code, "") if reason is None else reason
    return bytes((code // 100, code % 100)) + encode_text(text)


def _unpack_code(value: bytes) -> tuple[int, str]:
    # Only the low 3 bits of the class byte are the class; the rest is reserved.
    cls = value[2] & 0x07
    number = value[3]
    if not 3 <= cls <= 6 or number > 99:
        raise StunError(f"bad error code class {cls} / number {number}")
    return cls * 100 + number, decode_text(value[4:])


def encode_error_code(code: int, reason: str | None = None) -> bytes:
    """ERROR-CODE value; ``reason`` defaults to the phrase in ``REASONS``."""
    return b"\x00\x00" + _pack_code(code, reason)


@only_stun_errors
def decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunError("ERROR-CODE too short")
    return _unpack_code(value)


def encode_address_error_code(family: int, code: int, reason: str | None = None) -> bytes:
    """ADDRESS-ERROR-CODE (RFC 8656 18.12): family byte, reserved, then as ERROR-CODE."""
    if family not in (FAMILY_IPV4, FAMILY_IPV6):
        raise ValueError(f"bad address family {family}")
    return bytes((family, 0)) + _pack_code(code, reason)


@only_stun_errors
def decode_address_error_code(value: bytes) -> tuple[int, int, str]:
    if len(value) < 4:
        raise StunError("ADDRESS-ERROR-CODE too short")
    family = value[0]
    if family not in (FAMILY_IPV4, FAMILY_IPV6):
        raise StunError(f"bad address family {family}")
    code, reason = _unpack_code(value)
    return family, code, reason


def encode_unknown_attributes(types: Sequence[int]) -> bytes:
    return struct.pack(f"!{len(types)}H", *types)


@only_stun_errors
def decode_unknown_attributes(value: bytes) -> list[int]:
    if len(value) & 1:
        raise StunError("UNKNOWN-ATTRIBUTES length is odd")
    return list(struct.unpack(f"!{len(value) // 2}H", value))


def encode_u32(v: int) -> bytes:
    """LIFETIME, PRIORITY and other plain 32-bit values."""
    return _U32.pack(v)


@only_stun_errors
def decode_u32(value: bytes) -> int:
    if len(value) != 4:
        raise StunError("32-bit attribute must be 4 bytes")
    result: int = _U32.unpack(value)[0]
    return result


def encode_channel_number(ch: int) -> bytes:
    """CHANNEL-NUMBER: 16-bit number then 16 RFFU bits."""
    return _U16.pack(ch) + b"\x00\x00"


@only_stun_errors
def decode_channel_number(value: bytes) -> int:
    # The 0x4000..0x4FFF range is a TURN rule (400 Bad Request), not a
    # framing one, so it is left to the server.
    if len(value) != 4:
        raise StunError("CHANNEL-NUMBER must be 4 bytes")
    result: int = _U16.unpack_from(value)[0]
    return result


def encode_requested_transport(proto: int) -> bytes:
    """REQUESTED-TRANSPORT: IP protocol number then 24 RFFU bits."""
    if not 0 <= proto <= 0xFF:
        raise ValueError(f"bad protocol number {proto}")
    return bytes((proto, 0, 0, 0))


@only_stun_errors
def decode_requested_transport(value: bytes) -> int:
    # Any protocol number decodes; the server answers 442 for unsupported ones.
    if len(value) != 4:
        raise StunError("REQUESTED-TRANSPORT must be 4 bytes")
    proto: int = _U8_RFFU.unpack(value)[0]
    return proto


def encode_even_port(reserve: bool) -> bytes:
    """EVEN-PORT: one byte whose top bit is R (reserve the next port too)."""
    return b"\x80" if reserve else b"\x00"


@only_stun_errors
def decode_even_port(value: bytes) -> bool:
    if len(value) != 1:
        raise StunError("EVEN-PORT must be 1 byte")
    return bool(value[0] & 0x80)


def encode_family(family: int) -> bytes:
    """REQUESTED-/ADDITIONAL-ADDRESS-FAMILY: family byte then 24 RFFU bits."""
    if family not in (FAMILY_IPV4, FAMILY_IPV6):
        raise ValueError(f"bad address family {family}")
    return bytes((family, 0, 0, 0))


@only_stun_errors
def decode_family(value: bytes) -> int:
    if len(value) != 4:
        raise StunError("address family attribute must be 4 bytes")
    family = value[0]
    if family not in (FAMILY_IPV4, FAMILY_IPV6):
        raise StunError(f"bad address family {family}")
    return family


def encode_change_request(*, change_ip: bool = False, change_port: bool = False) -> bytes:
    """CHANGE-REQUEST (RFC 5780 7.2): 32 bits, "change IP" 0x4 and "change port" 0x2."""
    return _U32.pack((CHANGE_IP if change_ip else 0) | (CHANGE_PORT if change_port else 0))


@only_stun_errors
def decode_change_request(value: bytes) -> tuple[bool, bool]:
    """(change IP, change port); the other bits are ignored, as RFC 5780 asks."""
    if len(value) != 4:
        raise StunError("CHANGE-REQUEST must be 4 bytes")
    flags = _U32.unpack(value)[0]
    return bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT)


# ICMP (RFC 8656 18.13): 16 reserved bits, type byte, code byte, 32-bit error data.
_ICMP = struct.Struct("!2xBBI")


def encode_icmp(icmp_type: int, icmp_code: int, error_data: int) -> bytes:
    try:
        return _ICMP.pack(icmp_type, icmp_code, error_data)
    except struct.error as exc:
        raise ValueError(str(exc)) from exc


@only_stun_errors
def decode_icmp(value: bytes) -> tuple[int, int, int]:
    if len(value) != 8:
        raise StunError("ICMP must be 8 bytes")
    icmp_type, icmp_code, error_data = _ICMP.unpack(value)
    return icmp_type, icmp_code, error_data


# PASSWORD-ALGORITHM (RFC 8489 14.12): algorithm (16 bits), parameters length (16 bits),
# parameters padded to 4 bytes. PASSWORD-ALGORITHMS (14.11) is a list of the same.
PasswordAlgorithm = tuple[int, bytes]  # (algorithm number, parameters)


def _pack_algorithm(algorithm: int, params: bytes) -> bytes:
    if not 0 <= algorithm <= 0xFFFF or len(params) > 0xFFFF:
        raise ValueError(f"bad password algorithm {algorithm}")
    return _U16.pack(algorithm) + _U16.pack(len(params)) + params + b"\x00" * (-len(params) & 3)


def encode_password_algorithm(algorithm: int, params: bytes = b"") -> bytes:
    return _pack_algorithm(algorithm, params)


def encode_password_algorithms(algorithms: Sequence[PasswordAlgorithm]) -> bytes:
    return b"".join(_pack_algorithm(alg, params) for alg, params in algorithms)


def _unpack_algorithms(value: bytes) -> list[PasswordAlgorithm]:
    out: list[PasswordAlgorithm] = []
    pos, end = 0, len(value)
    while pos < end:
        if end - pos < 4:
            raise StunError("password algorithm entry too short")
        algorithm, plen = _U16.unpack_from(value, pos)[0], _U16.unpack_from(value, pos + 2)[0]
        nxt = pos + 4 + ((plen + 3) & ~3)
        if nxt > end:
            raise StunError("password algorithm parameters overrun the attribute")
        out.append((algorithm, bytes(value[pos + 4 : pos + 4 + plen])))
        pos = nxt
    return out


@only_stun_errors
def decode_password_algorithm(value: bytes) -> PasswordAlgorithm:
    entries = _unpack_algorithms(value)
    if len(entries) != 1:
        raise StunError("PASSWORD-ALGORITHM must hold exactly one algorithm")
    return entries[0]


@only_stun_errors
def decode_password_algorithms(value: bytes) -> list[PasswordAlgorithm]:
    entries = _unpack_algorithms(value)
    if not entries:
        raise StunError("PASSWORD-ALGORITHMS is empty")
    return entries


@functools.lru_cache(maxsize=16)  # one per feature set a server offers: every challenge's
def encode_nonce_cookie(features: int) -> str:
    """The nonce cookie and its security feature bits (RFC 8489 9.2): 13 characters."""
    if not 0 <= features <= 0xFFFFFF:
        raise ValueError(f"security features {features} do not fit 24 bits")
    return NONCE_COOKIE + base64.b64encode(features.to_bytes(3, "big")).decode()


def nonce_features(nonce: str) -> int | None:
    """The security feature bits of a NONCE that starts with the nonce cookie, else None
    (an RFC 5389 nonce). Never raises."""
    if not nonce.startswith(NONCE_COOKIE) or len(nonce) < len(NONCE_COOKIE) + 4:
        return None
    return _cookie_features(nonce[len(NONCE_COOKIE) : len(NONCE_COOKIE) + 4])


@functools.lru_cache(maxsize=64)  # a server issues one or two cookies: decode each once
def _cookie_features(chars: str) -> int | None:
    try:
        raw = base64.b64decode(chars, validate=True)
    except ValueError:
        return None
    return int.from_bytes(raw, "big")
