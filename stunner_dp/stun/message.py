"""STUN message framing: strict parsing, encoding, integrity and fingerprint.

The parser runs on the server's request path, so it does one pass over the
datagram with a precompiled ``struct`` and keeps attribute values as plain
``bytes`` slices; typed decoding is left to :mod:`.attributes`, on demand.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from zlib import crc32

from .constants import (
    ATTR_FINGERPRINT,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_MESSAGE_INTEGRITY_SHA256,
    COMPREHENSION_OPTIONAL,
    HEADER_SIZE,
    MAGIC_COOKIE,
)
from .errors import StunError

_HEADER = struct.Struct("!HHI12s")
_ATTR_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")

_FINGERPRINT_XOR = 0x5354554E
_MI_SIZE = 20  # HMAC-SHA1 digest
_MI_SHA256_MAX = 32
_MI_SHA256_MIN = 16  # RFC 8489 14.6: truncation allowed down to 16 bytes
_MAX_BODY = 0xFFFF - 3  # largest multiple of 4 that fits the 16-bit length
# No legitimate STUN/TURN message carries more than a few dozen attributes (an Allocate with
# every option has about 15); a 64 KB datagram of empty attributes would carry 16,000, and
# every later step (the 420 list, peer judging) would pay per attribute.
MAX_ATTRIBUTES = 128

# Attributes that must come last, in this order; encode_message adds them itself.
_TRAILERS = frozenset({ATTR_MESSAGE_INTEGRITY, ATTR_MESSAGE_INTEGRITY_SHA256, ATTR_FINGERPRINT})


def message_type(method: int, cls: int) -> int:
    """Interleave the 12-bit method with the class bits (RFC 8489 5)."""
    return (method & 0x00F) | ((method & 0x070) << 1) | ((method & 0xF80) << 2) | cls


def split_message_type(msg_type: int) -> tuple[int, int]:
    """Inverse of :func:`message_type`: returns ``(method, cls)``."""
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    return method, msg_type & 0x0110


@dataclass(slots=True)
class Message:
    """A parsed (or locally built) STUN message.

    Attribute values are undecoded and unpadded; ``raw`` and the offsets are
    kept so integrity can be checked later, once the server has found the key.
    """

    method: int
    cls: int
    transaction_id: bytes
    attributes: list[tuple[int, bytes]]
    raw: bytes = b""
    integrity_offset: int = -1
    integrity_sha256_offset: int = -1
    fingerprint_offset: int = -1

    def get(self, attr_type: int) -> bytes | None:
        # Linear scan: messages carry a handful of attributes, a dict costs more.
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None

    def get_all(self, attr_type: int) -> list[bytes]:
        return [v for t, v in self.attributes if t == attr_type]

    def unknown_required(self, known: frozenset[int]) -> list[int]:
        """The comprehension-required types (below 0x8000) not in `known`, each once, in the
        order they first appear: what a 420's UNKNOWN-ATTRIBUTES lists (RFC 8489 14.13)."""
        for t, _ in self.attributes:  # the common case, every type known: no list built
            if t < COMPREHENSION_OPTIONAL and t not in known:
                break
        else:
            return []
        required = (t for t, _ in self.attributes if t < COMPREHENSION_OPTIONAL)
        return list(dict.fromkeys(t for t in required if t not in known))

    def has(self, attr_type: int) -> bool:
        return self.get(attr_type) is not None  # get's plain loop beats any() over a genexpr

    def check_integrity(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY (HMAC-SHA1); False when absent or wrong."""
        off = self.integrity_offset
        if off < 0:
            return False
        raw = self.raw
        expected = _hmac_over(raw, off, _MI_SIZE, key, "sha1")
        return hmac.compare_digest(expected, raw[off + 4 : off + 4 + _MI_SIZE])

    def check_integrity_sha256(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY-SHA256, full or truncated; False when absent or wrong."""
        off = self.integrity_sha256_offset
        if off < 0:
            return False
        raw = self.raw
        size = _U16.unpack_from(raw, off + 2)[0]
        expected = _hmac_over(raw, off, size, key, "sha256")[:size]
        return hmac.compare_digest(expected, raw[off + 4 : off + 4 + size])


def _hmac_over(data: bytes, offset: int, value_size: int, key: bytes, digest: str) -> bytes:
    """HMAC of ``data[:offset]`` with the header length patched (RFC 8489 14.5).

    The length must count up to the end of the integrity attribute itself,
    ignoring anything after it (e.g. FINGERPRINT).
    """
    length = offset - HEADER_SIZE + 4 + value_size
    # one-shot hmac.digest runs in C; hmac.new builds a Python object per call
    return hmac.digest(key, data[:2] + _U16.pack(length) + data[4:offset], digest)


def _fingerprint(data: bytes) -> int:
    return crc32(data) ^ _FINGERPRINT_XOR


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test: could this datagram be a STUN message?"""
    return (
        len(data) >= HEADER_SIZE
        and data[0] & 0xC0 == 0
        and data[4] == 0x21
        and data[5] == 0x12
        and data[6] == 0xA4
        and data[7] == 0x42
    )


def parse_message(data: bytes) -> Message:
    """Parse one STUN message strictly; raises only :class:`StunError`."""
    if type(data) is not bytes:
        # Accept bytearray/memoryview, but store immutable bytes in ``raw``.
        try:
            data = bytes(data)
        except Exception as exc:
            raise StunError(f"not a bytes-like object: {type(data).__name__}") from exc
    end = len(data)
    if end < HEADER_SIZE:
        raise StunError("shorter than a STUN header")
    msg_type, length, cookie, tid = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunError("top two bits of the message type are not zero")
    if cookie != MAGIC_COOKIE:
        raise StunError("bad magic cookie")
    if length & 3:
        raise StunError("message length is not a multiple of 4")
    if length != end - HEADER_SIZE:
        raise StunError("message length does not match the datagram size")

    attributes: list[tuple[int, bytes]] = []
    append = attributes.append
    unpack_attr = _ATTR_HEADER.unpack_from
    mi_off = mi256_off = fp_off = -1
    guarded = False  # an integrity/fingerprint attribute has been seen
    seen = 0  # attributes, ignored ones included
    pos = HEADER_SIZE
    while pos < end:
        # ``end - pos`` is a multiple of 4 here, so a full attribute header fits.
        atype, alen = unpack_attr(data, pos)
        vstart = pos + 4
        nxt = vstart + ((alen + 3) & ~3)
        if nxt > end:
            raise StunError(f"attribute 0x{atype:04X} overruns the message")
        seen += 1
        if seen > MAX_ATTRIBUTES:
            raise StunError(f"more than {MAX_ATTRIBUTES} attributes")
        # One test keeps ordinary attributes on the fast path; the ordering
        # rules only matter once a trailer attribute shows up.
        if guarded or atype in _TRAILERS:
            guarded = True
            if fp_off >= 0:
                # 14.7: FINGERPRINT is the last attribute; one that is not fails the test
                raise StunError("attribute after FINGERPRINT")
            if atype == ATTR_FINGERPRINT:
                if alen != 4:
                    raise StunError("FINGERPRINT must be 4 bytes")
                # FINGERPRINT is last (checked on the next turn), so the header
                # length already counts it and data[:pos] is the CRC input as-is.
                if _fingerprint(data[:pos]) != _U32.unpack_from(data, vstart)[0]:
                    raise StunError("FINGERPRINT mismatch")
                fp_off = pos
            elif mi256_off >= 0:
                # 14.6: all but FINGERPRINT after MESSAGE-INTEGRITY-SHA256 is ignored
                pos = nxt
                continue
            elif atype == ATTR_MESSAGE_INTEGRITY_SHA256:
                if alen < _MI_SHA256_MIN or alen > _MI_SHA256_MAX or alen & 3:
                    raise StunError("bad MESSAGE-INTEGRITY-SHA256 length")
                mi256_off = pos
            elif mi_off >= 0:
                # 14.5: all but MESSAGE-INTEGRITY-SHA256 and FINGERPRINT after
                # MESSAGE-INTEGRITY is ignored (a second MESSAGE-INTEGRITY too)
                pos = nxt
                continue
            elif alen != _MI_SIZE:  # atype is MESSAGE-INTEGRITY: the only trailer left
                raise StunError("MESSAGE-INTEGRITY must be 20 bytes")
            else:
                mi_off = pos
        append((atype, data[vstart : vstart + alen]))
        pos = nxt

    # split_message_type, inlined: this is the request path.
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    return Message(method, msg_type & 0x0110, tid, attributes, data, mi_off, mi256_off, fp_off)


def _attr(atype: int, value: bytes) -> bytes:
    n = len(value)
    if n > 0xFFFF:
        raise ValueError(f"attribute 0x{atype:04X} value too long ({n} bytes)")
    return _ATTR_HEADER.pack(atype, n) + value + b"\x00" * (-n & 3)


def encode_message(
    method: int,
    cls: int,
    transaction_id: bytes,
    attributes: Sequence[tuple[int, bytes]] = (),
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """Build a STUN message; integrity/fingerprint attributes are appended in RFC order.

    Raises ``ValueError`` for caller mistakes (these are programming errors,
    not hostile input, so they are not :class:`StunError`).
    """
    if len(transaction_id) != 12:
        raise ValueError("transaction_id must be 12 bytes")
    if not 0 <= method <= 0xFFF or cls not in (0x000, 0x010, 0x100, 0x110):
        raise ValueError("bad method or class")
    parts: list[bytes] = []
    for atype, value in attributes:
        if atype in _TRAILERS:
            raise ValueError("integrity/fingerprint attributes are added by encode_message")
        if not 0 <= atype <= 0xFFFF:
            raise ValueError(f"bad attribute type {atype}")
        parts.append(_attr(atype, value))
    body = b"".join(parts)
    mtype = message_type(method, cls)

    def header(extra: int) -> bytes:
        # Each trailer is computed with the length it will see on the wire.
        length = len(body) + extra
        if length > _MAX_BODY:
            raise ValueError("message too long")
        return _HEADER.pack(mtype, length, MAGIC_COOKIE, transaction_id)

    if integrity_key is not None:
        mac = hmac.digest(integrity_key, header(4 + _MI_SIZE) + body, "sha1")
        body += _attr(ATTR_MESSAGE_INTEGRITY, mac)
    if integrity_sha256_key is not None:
        mac = hmac.digest(integrity_sha256_key, header(4 + 32) + body, "sha256")
        body += _attr(ATTR_MESSAGE_INTEGRITY_SHA256, mac)
    if fingerprint:
        crc = _fingerprint(header(8) + body)
        body += _attr(ATTR_FINGERPRINT, _U32.pack(crc))
    return header(0) + body
