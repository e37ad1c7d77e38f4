"""The PROXY protocol header (HAProxy's spec, v1 text and v2 binary), bytes only.

A TCP load balancer that SNATs puts this header before the client's first byte so the server
learns the client's address. `parse_header` reads it off the front of a connection's bytes:
None while it may still be incomplete, a `ProxyHeader` once whole, `ProxyHeaderError` (and
nothing else) for anything that is not a header. No sockets, no clock: the listener
(`net/tcp.py`) owns the deadline and the trust check.

Only what a TURN-TCP/TLS listener can use is accepted: PROXY over TCP4/TCP6, and LOCAL (v2)
or UNKNOWN (v1), the LB's own connections (health checks), which carry no client address.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = [
    "MAX_HEADER",
    "MAX_V1",
    "MAX_V2_BODY",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "encode_v1",
    "encode_v2",
    "parse_header",
]

V1_PREFIX = b"PROXY "
MAX_V1 = 107  # the spec's bound, "PROXY UNKNOWN" with two full IPv6 endpoints and CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/protocol, length
# TLVs (AWS's VPC endpoint ID, Azure's link ID, haproxy's ALPN/authority) fit well inside this;
# the spec's 64 KiB is more than a connection awaiting its header may hold
MAX_V2_BODY = 1024
MAX_HEADER = V2_FIXED + MAX_V2_BODY

_V2_VERSION = 0x20
_V2_LOCAL, _V2_PROXY = 0x00, 0x01
_V2_UNSPEC, _V2_TCP4, _V2_TCP6 = 0x00, 0x11, 0x21
_V2_ADDR_LEN = {_V2_TCP4: 12, _V2_TCP6: 36}


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol header this listener accepts."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    # the client's (IP, port) as the LB saw it; None: a LOCAL/UNKNOWN connection (the LB's own)
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # bytes the header took: what follows is the client's


def parse_header(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """The header at the start of `data`, None if `data` may be the start of one."""
    buf = bytes(data[:MAX_HEADER])
    if buf[:1] == b"P":
        return _parse_v1(buf)
    if buf[:1] == b"\r":
        return _parse_v2(buf)
    if buf:
        raise ProxyHeaderError("no PROXY protocol header")
    return None


def _parse_v1(buf: bytes) -> ProxyHeader | None:
    if not buf.startswith(V1_PREFIX[: len(buf)]):
        raise ProxyHeaderError("no PROXY protocol header")
    end = buf.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(buf) >= MAX_V1:
            raise ProxyHeaderError(f"v1 header without CRLF in {MAX_V1} bytes")
        if b"\n" in buf or b"\r" in buf[:-1]:
            raise ProxyHeaderError("v1 header with a bare CR or LF")
        return None
    try:
        line = buf[len(V1_PREFIX) : end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    parts = line.split(" ")
    length = end + 2
    if parts[0] == "UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(1, None, None, length)
    if len(parts) != 5 or parts[0] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 header is not 'PROXY TCP4|TCP6 src dst sport dport'")
    family = socket.AF_INET if parts[0] == "TCP4" else socket.AF_INET6
    src = (_v1_ip(parts[1], family), _v1_port(parts[3]))
    dst = (_v1_ip(parts[2], family), _v1_port(parts[4]))
    return ProxyHeader(1, src, dst, length)


def _v1_ip(text: str, family: int) -> str:
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        raise ProxyHeaderError("v1 header has a bad address for its family") from None


def _v1_port(text: str) -> int:
    if not (text.isdigit() and text.isascii() and len(text) <= 5) or int(text) > 65535:
        raise ProxyHeaderError("v1 header has a bad port")
    return int(text)


def _parse_v2(buf: bytes) -> ProxyHeader | None:
    if not buf.startswith(V2_SIGNATURE[: len(buf)]):
        raise ProxyHeaderError("no PROXY protocol header")
    if len(buf) < V2_FIXED:
        return None
    ver_cmd, fam, size = buf[12], buf[13], int.from_bytes(buf[14:16], "big")
    if ver_cmd & 0xF0 != _V2_VERSION:
        raise ProxyHeaderError(f"v2 header of version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"v2 header with command {command}")
    if size > MAX_V2_BODY:
        raise ProxyHeaderError(f"v2 header of {size} bytes, more than {MAX_V2_BODY}")
    if len(buf) < V2_FIXED + size:
        return None
    length = V2_FIXED + size
    if command == _V2_LOCAL or fam == _V2_UNSPEC:  # the LB's own connection: no client
        return ProxyHeader(2, None, None, length)
    need = _V2_ADDR_LEN.get(fam)
    if need is None:
        raise ProxyHeaderError(f"v2 header of family/protocol {fam:#04x}, not TCP4 or TCP6")
    if size < need:
        raise ProxyHeaderError(f"v2 address block of {size} bytes, {need} needed")
    block = buf[V2_FIXED : V2_FIXED + need]
    family, width = (socket.AF_INET, 4) if fam == _V2_TCP4 else (socket.AF_INET6, 16)
    src_ip = socket.inet_ntop(family, block[:width])
    dst_ip = socket.inet_ntop(family, block[width : 2 * width])
    ports = block[2 * width :]
    src = (src_ip, int.from_bytes(ports[0:2], "big"))
    dst = (dst_ip, int.from_bytes(ports[2:4], "big"))
    return ProxyHeader(2, src, dst, length)


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 header (UNKNOWN when either end is None): what an LB's `send-proxy` sends."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    kind = "TCP6" if ":" in source[0] else "TCP4"
    line = f"PROXY {kind} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    return line.encode("ascii")


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header (LOCAL when either end is None): what an LB's `send-proxy-v2` sends."""
    if source is None or destination is None:
        return (
            V2_SIGNATURE
            + bytes([_V2_VERSION | _V2_LOCAL, _V2_UNSPEC])
            + len(tlvs).to_bytes(2, "big")
            + tlvs
        )
    six = ":" in source[0]
    family = socket.AF_INET6 if six else socket.AF_INET
    body = (
        socket.inet_pton(family, source[0])
        + socket.inet_pton(family, destination[0])
        + source[1].to_bytes(2, "big")
        + destination[1].to_bytes(2, "big")
        + tlvs
    )
    head = bytes([_V2_VERSION | _V2_PROXY, _V2_TCP6 if six else _V2_TCP4])
    return V2_SIGNATURE + head + len(body).to_bytes(2, "big") + body
