"""The program on lo relays ChannelData <-> UDP in the kernel, for IPv4 (127.0.0.1) and ::1.

"client", "listener", "relay" and "peer" are plain UDP sockets on free ports; the client sends
either through a raw socket (full checksums the kernel verifies: proves the arithmetic) or
through its UDP socket (CHECKSUM_PARTIAL skbs: proves the PARTIAL path). When the kernel
relays, the listener/relay sockets see nothing; after remove() they see everything again.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import (
    RawSender,
    channeldata,
    drain,
    recv,
    recv_or_none,
    snmp6_udp_csum_errors,
    snmp_udp,
    udp_checksum,
    udp_socket,
)

from stunner_dp.offload import ChannelHandle, OffloadEngine, OffloadError

CH = 0x4001


@dataclass
class Lo:
    host: str
    family: int
    client: socket.socket
    listener: socket.socket
    relay: socket.socket
    peer: socket.socket
    raw: RawSender

    def addr(self, s: socket.socket) -> tuple[str, int]:
        a = s.getsockname()
        return a[0], a[1]

    def send_client(self, data: bytes, raw: bool, zero_checksum: bool = False) -> None:
        if raw:
            self.raw.send(self.addr(self.client), self.addr(self.listener), data, zero_checksum)
        else:
            self.client.sendto(data, self.addr(self.listener))

    def send_peer(self, data: bytes, raw: bool) -> None:
        if raw:
            self.raw.send(self.addr(self.peer), self.addr(self.relay), data)
        else:
            self.peer.sendto(data, self.addr(self.relay))

    def install(self, engine: OffloadEngine, channel: int = CH) -> ChannelHandle:
        return engine.add_channel(self.addr(self.client), self.addr(self.listener), channel,
                                  self.addr(self.relay), self.addr(self.peer))


def csum_errors(family: int) -> int:
    if family == socket.AF_INET:
        return snmp_udp()["InCsumErrors"]
    return snmp6_udp_csum_errors()


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def lo(request: pytest.FixtureRequest) -> Iterator[Lo]:
    host: str = request.param
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [udp_socket(host) for _ in range(4)]
    raw = RawSender(fam)
    try:
        yield Lo(host, fam, *socks, raw)
    finally:
        raw.close()
        for s in socks:
            s.close()


@pytest.mark.parametrize("raw", [True, False], ids=["raw-client", "udp-client"])
def test_relays_both_ways_in_the_kernel(lo_engine: OffloadEngine, lo: Lo, raw: bool) -> None:
    errors0 = csum_errors(lo.family)
    h = lo.install(lo_engine)
    assert lo_engine.entries == 1
    sizes = [1, 3, 160, 511, 512, 513, 1200, 4000, 9216]
    for n in sizes:
        payload = bytes((i * 7 + n) & 0xFF for i in range(n))
        lo.send_client(channeldata(CH, payload), raw)
        data, src = recv(lo.peer)
        assert (data, src) == (payload, lo.addr(lo.relay))
        reply = payload[::-1]
        lo.send_peer(reply, raw)
        data, src = recv(lo.client)
        assert (data, src) == (channeldata(CH, reply), lo.addr(lo.listener))
    # the kernel did it: user space saw none of it
    assert recv_or_none(lo.listener) is None
    assert recv_or_none(lo.relay) is None
    c = lo_engine.counters(h)
    assert (c.fwd_packets, c.fwd_bytes) == (len(sizes), sum(sizes))
    assert (c.rev_packets, c.rev_bytes) == (len(sizes), sum(sizes))
    assert csum_errors(lo.family) == errors0

    lo_engine.remove(h)
    assert lo_engine.entries == 0
    frame = channeldata(CH, b"after remove")
    lo.send_client(frame, raw)
    assert recv(lo.listener) == (frame, lo.addr(lo.client))
    lo.send_peer(b"to the relay", raw)
    assert recv(lo.relay) == (b"to the relay", lo.addr(lo.peer))
    assert recv_or_none(lo.peer) is None
    assert recv_or_none(lo.client) is None
    assert lo_engine.counters(h).fwd_packets == len(sizes)


def test_ipv4_zero_checksum_stays_zero_and_others_are_exact(lo_engine: OffloadEngine) -> None:
    host = "127.0.0.1"
    client, listener, relay, peer = (udp_socket(host) for _ in range(4))
    raw = RawSender(socket.AF_INET)
    sniff = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    sniff.settimeout(0.05)
    try:
        a = {s: s.getsockname() for s in (client, listener, relay, peer)}
        lo_engine.add_channel(a[client], a[listener], CH, a[relay], a[peer])
        drain(sniff)
        seen: dict[bool, int] = {}
        for zero in (True, False):
            raw.send(a[client], a[listener], channeldata(CH, b"checksum?"), zero_checksum=zero)
            assert recv(peer)[0] == b"checksum?"
            for _ in range(2000):  # the sniffer sees every UDP datagram on the host: find ours
                try:
                    pkt = sniff.recv(70000)
                except TimeoutError:
                    break
                ihl = (pkt[0] & 0xF) * 4
                sport, dport, _ln, check = struct.unpack_from("!HHHH", pkt, ihl)
                if (sport, dport) == (a[relay][1], a[peer][1]):
                    seen[zero] = check
                    udp = pkt[ihl:ihl + 8 + 9]
                    if not zero:
                        assert check == udp_checksum(host, host, udp[:6] + b"\0\0" + udp[8:])
                    break
        assert seen == {True: 0, False: seen.get(False)} and seen[False] != 0
    finally:
        for s in (client, listener, relay, peer, sniff):
            s.close()
        raw.close()


@pytest.mark.parametrize("raw", [True, False], ids=["raw-client", "udp-client"])
def test_what_the_kernel_leaves_to_user_space(lo_engine: OffloadEngine, lo: Lo,
                                              raw: bool) -> None:
    h = lo.install(lo_engine)
    before = lo_engine.pass_reasons()
    cases = [
        ("length", channeldata(CH, b"padded to 4", pad=b"\0")),   # UDP ChannelData has no padding
        ("length", channeldata(CH, b"trailing", pad=b"xyzw")),
        ("length", channeldata(CH, b"short", length=9)),           # length field > payload
        ("length", channeldata(CH, b"long", length=2)),
        ("no_entry", channeldata(0x4002, b"unknown channel")),
        ("not_channeldata", channeldata(0x8001, b"outside 0x4000-0x7fff")),
        ("not_channeldata", b"\x00\x01\x00\x00" + bytes(16)),     # a STUN binding request
        ("not_channeldata", b"\x40"),
        ("too_big", channeldata(CH, bytes(9217))),
    ]
    for _, frame in cases:
        lo.send_client(frame, raw)
        assert recv(lo.listener) == (frame, lo.addr(lo.client))
    lo.send_peer(bytes(9217), raw)
    assert recv(lo.relay) == (bytes(9217), lo.addr(lo.peer))
    assert recv_or_none(lo.peer) is None
    assert recv_or_none(lo.client) is None
    after = lo_engine.pass_reasons()
    want: dict[str, int] = {}
    for reason, _ in cases:
        want[reason] = want.get(reason, 0) + 1
    want["too_big"] += 1
    for reason, n in want.items():
        # >=: the program sees every datagram on lo, other tests' too
        assert after[reason] - before[reason] >= n, reason
    c = lo_engine.counters(h)
    assert (c.fwd_packets, c.rev_packets) == (0, 0)


def test_api_refusals(lo_engine: OffloadEngine) -> None:
    c, li, r, p = ("127.0.0.1", 40001), ("127.0.0.1", 40002), ("127.0.0.1", 40003), \
        ("127.0.0.1", 40004)
    h = lo_engine.add_channel(c, li, 0x7FFF, r, p)
    with pytest.raises(OffloadError, match="already exists"):
        lo_engine.add_channel(c, li, 0x7FFF, ("127.0.0.1", 40005), ("127.0.0.1", 40006))
    with pytest.raises(OffloadError, match="already exists"):
        lo_engine.add_channel(("127.0.0.1", 40007), li, 0x4000, r, p)
    assert lo_engine.entries == 1
    with pytest.raises(ValueError, match="channel"):
        lo_engine.add_channel(c, li, 0x8000, r, p)
    with pytest.raises(ValueError, match="family"):
        lo_engine.add_channel(c, li, 0x4000, ("::1", 1), ("::1", 2))
    with pytest.raises(ValueError, match="IP_PKTINFO"):
        lo_engine.add_channel(c, ("0.0.0.0", 40002), 0x4000, ("127.0.0.1", 1), ("127.0.0.1", 2))
    lo_engine.remove(h)
    with pytest.raises(KeyError):
        lo_engine.remove(h)
    assert lo_engine.entries == 0


def test_close_detaches_and_is_idempotent() -> None:
    from conftest import require_offload

    require_offload()
    engine = OffloadEngine.load(["lo"])
    assert [a.mode for a in engine.attachments] == ["tcx"]
    client, listener, relay, peer = (udp_socket("127.0.0.1") for _ in range(4))
    try:
        a = {s: s.getsockname() for s in (client, listener, relay, peer)}
        engine.add_channel(a[client], a[listener], CH, a[relay], a[peer])
        client.sendto(channeldata(CH, b"x"), a[listener])
        assert recv(peer)[0] == b"x"
        engine.close()
        engine.close()
        assert engine.closed
        client.sendto(channeldata(CH, b"y"), a[listener])
        assert recv(listener)[0] == channeldata(CH, b"y")
        with pytest.raises(OffloadError, match="closed"):
            engine.pass_reasons()
    finally:
        engine.close()
        for s in (client, listener, relay, peer):
            s.close()
