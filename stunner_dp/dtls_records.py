"""DTLS 1.2 record framing shared by the DTLS listener (net/dtls.py) and the DTLS client
(client/dtls.py): bytes only, so either side imports it without loading the other."""

from __future__ import annotations

DTLS1_2_VERSION = 0xFEFD  # not exported by pyOpenSSL
MTU = 1200  # datagram payload size for handshake flights (what WebRTC stacks assume)
RECORD_HEADER = 13  # type, version (2), epoch (2), sequence number (6), length (2)


def split_records(data: bytes) -> list[bytes]:
    """The DTLS records in OpenSSL's output (a memory BIO joins what it writes)."""
    records = []
    off = 0
    while off + RECORD_HEADER <= len(data):
        end = off + RECORD_HEADER + ((data[off + 11] << 8) | data[off + 12])
        records.append(data[off:end])
        off = end
    return records


def pack_datagrams(data: bytes, mtu: int = MTU) -> list[bytes]:
    """Records packed into datagrams of at most `mtu` bytes (a record longer than that goes
    alone); a record is never split across datagrams."""
    out: list[bytes] = []
    current = b""
    for record in split_records(data):
        if current and len(current) + len(record) > mtu:
            out.append(current)
            current = b""
        current += record
    if current:
        out.append(current)
    return out
