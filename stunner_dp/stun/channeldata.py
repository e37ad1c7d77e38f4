"""TURN ChannelData framing (RFC 8656 section 12) and stream demultiplexing."""

from __future__ import annotations

import struct

from .constants import HEADER_SIZE
from .errors import StunError, only_stun_errors

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF

_CD_HEADER = struct.Struct("!HH")


def is_channel_data(data: bytes) -> bool:
    """Cheap demultiplexing test: first byte 0x40..0x4F and a full header."""
    return len(data) >= 4 and 0x40 <= data[0] <= 0x4F


@only_stun_errors
def parse_channel_data(data: bytes, max_channel: int = CHANNEL_MAX) -> tuple[int, bytes]:
    """Return ``(channel, payload)``; raises only :class:`StunError`.

    ``max_channel=0x7FFF`` accepts the RFC 5766 channel range too.

    Bytes after the payload are accepted only up to the 4-byte padding
    boundary (UDP peers MAY pad, RFC 8656 12.5); anything longer is garbage.
    """
    n = len(data)
    if n < 4:
        raise StunError("ChannelData shorter than its header")
    channel, length = _CD_HEADER.unpack_from(data)
    if not CHANNEL_MIN <= channel <= max_channel:
        raise StunError(f"channel number 0x{channel:04X} out of range")
    if length > n - 4:
        raise StunError("ChannelData length exceeds the datagram")
    if n > 4 + ((length + 3) & ~3):
        raise StunError("ChannelData has bytes beyond its padding")
    return channel, bytes(data[4 : 4 + length])


def encode_channel_data(
    channel: int, payload: bytes, *, pad: bool = False, max_channel: int = CHANNEL_MAX
) -> bytes:
    """Frame ``payload``; ``pad=True`` for stream transports, where padding is mandatory."""
    if not CHANNEL_MIN <= channel <= max_channel:
        raise ValueError(f"channel number 0x{channel:04X} out of range")
    n = len(payload)
    if n > 0xFFFF:
        raise ValueError("ChannelData payload too long")
    head = _CD_HEADER.pack(channel, n)
    if pad and n & 3:
        return head + payload + b"\x00" * (-n & 3)
    return head + payload


@only_stun_errors
def stream_frame_length(buf: bytes | bytearray | memoryview) -> int | None:
    """Length of the next frame on a TCP/TLS stream (RFC 8656 12.5), None if unknown yet.

    STUN frames are header + message length; ChannelData frames are rounded
    up to 4 bytes because padding is mandatory on streams. A first byte
    whose top bits are 10 or 11 cannot start either, so the stream is junk.
    """
    if len(buf) < 4:
        return None
    first = buf[0]
    top = first >> 6
    length = (buf[2] << 8) | buf[3]
    if top == 0:
        if length & 3:
            raise StunError("STUN message length is not a multiple of 4")
        return HEADER_SIZE + length
    if top == 1:
        return 4 + ((length + 3) & ~3)
    raise StunError("stream does not start with STUN or ChannelData")
