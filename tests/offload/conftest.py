"""Shared by the offload tests: the root/CI gate, packet builders, sockets and namespaces.

These tests use the real kernel: they need root (CAP_BPF + CAP_NET_ADMIN). Off CI and not root
they skip with the reason; in CI (CI=true) a missing privilege is a failure, not a skip.
Traffic stays on 127.0.0.0/8 and ::1, or inside network namespaces the tests create (and always
delete) with addresses from 198.18.0.0/15 only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.gates import require_offload as require_offload

from stunner_dp.offload import OffloadEngine

CLONE_NEWNET = 0x40000000


@pytest.fixture
def lo_engine() -> Iterator[OffloadEngine]:
    require_offload()
    engine = OffloadEngine.load(["lo"])
    try:
        yield engine
    finally:
        engine.close()


# -- packets --------------------------------------------------------------------------------


def channeldata(channel: int, data: bytes, length: int | None = None, pad: bytes = b"") -> bytes:
    return struct.pack("!HH", channel, len(data) if length is None else length) + data + pad


def _ones_sum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def udp_checksum(src: str, dst: str, udp: bytes) -> int:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    s, d = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    if fam == socket.AF_INET:
        pseudo = s + d + struct.pack("!BBH", 0, 17, len(udp))
    else:
        pseudo = s + d + struct.pack("!I3xB", len(udp), 17)
    c = 0xFFFF - _ones_sum(pseudo + udp)
    return c or 0xFFFF


def udp_datagram(
    src: tuple[str, int], dst: tuple[str, int], payload: bytes, zero_checksum: bool = False
) -> bytes:
    hdr = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0)
    if zero_checksum:
        return hdr + payload
    c = udp_checksum(src[0], dst[0], hdr + payload)
    return hdr[:6] + struct.pack("!H", c) + payload


class RawSender:
    """Sends hand-made UDP datagrams (full checksum: CHECKSUM_NONE skbs the kernel verifies)."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def send(
        self,
        src: tuple[str, int],
        dst: tuple[str, int],
        payload: bytes,
        zero_checksum: bool = False,
    ) -> None:
        self.sock.sendto(udp_datagram(src, dst, payload, zero_checksum), (dst[0], 0))

    def close(self) -> None:
        self.sock.close()


def udp_socket(host: str, port: int = 0) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.settimeout(2.0)
    return s


def recv_or_none(sock: socket.socket, wait: float = 0.25) -> tuple[bytes, tuple[str, int]] | None:
    sock.settimeout(wait)
    try:
        data, addr = sock.recvfrom(70000)
    except (TimeoutError, BlockingIOError):
        return None
    finally:
        sock.settimeout(2.0)
    return data, (addr[0], addr[1])


def recv(sock: socket.socket, wait: float = 2.0) -> tuple[bytes, tuple[str, int]]:
    got = recv_or_none(sock, wait)
    assert got is not None, f"nothing arrived at {sock.getsockname()} within {wait}s"
    return got


def drain(sock: socket.socket) -> None:
    for _ in range(1000):
        if recv_or_none(sock, 0.01) is None:
            return


def snmp_udp(netns: str | None = None) -> dict[str, int]:
    """The Udp: (or Udp6) counters of /proc/net/snmp (netns: of that namespace)."""
    if netns is None:
        text = Path("/proc/net/snmp").read_text()
    else:
        text = subprocess.run(
            ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    rows = [ln.split() for ln in text.splitlines() if ln.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))


def snmp6_udp_csum_errors(netns: str | None = None) -> int:
    path = "/proc/net/snmp6"
    text = (
        Path(path).read_text()
        if netns is None
        else subprocess.run(
            ["ip", "netns", "exec", netns, "cat", path],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    )
    for ln in text.splitlines():
        k, _, v = ln.partition(" ")
        if k == "Udp6InCsumErrors":
            return int(v)
    return 0


# -- network namespaces ---------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in netns ``name`` (sockets made there stay there)."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if _libc.setns(back, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(back)


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=20)


def netns_names(tag: str) -> list[str]:
    base = f"sdp{os.getpid() % 100000}{tag}"
    return [base + s for s in ("c", "s", "p")]


def delete_netns(names: list[str]) -> None:
    for n in names:
        subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=20)


def wait_until(pred: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(10000):
        if callable(pred) and pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return False
