"""The production path: NIC-like veths, bpf_fib_lookup and a redirect to the egress device.

Three network namespaces the test creates and always deletes, addresses from 198.18.0.0/15 only
(IPv6 disabled in them so no other address appears):

  client 198.18.1.2 - veth - [198.18.1.1 listener server relay 198.18.2.1] - veth - peer 198.18.2.2

The program is attached on both server-side veths (ingress). The receiving sockets get the
payload, and UdpInCsumErrors stays 0 in every namespace.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import (
    RawSender,
    channeldata,
    delete_netns,
    in_netns,
    netns_names,
    recv,
    recv_or_none,
    require_offload,
    sh,
    snmp_udp,
    udp_socket,
)

from stunner_dp.offload import OffloadEngine

CH = 0x5AB1
CLIENT, LISTENER = ("198.18.1.2", 31001), ("198.18.1.1", 31002)
RELAY, PEER = ("198.18.2.1", 31003), ("198.18.2.2", 31004)


@dataclass
class Topo:
    cns: str
    sns: str
    pns: str
    sveths: list[str]


@pytest.fixture
def topo() -> Iterator[Topo]:
    require_offload()
    cns, sns, pns = names = netns_names("n")
    base = cns[:-1]
    vc, vsc, vsp, vp = base + "vc", base + "vsc", base + "vsp", base + "vp"
    delete_netns(names)
    try:
        for n in names:
            sh("ip", "netns", "add", n)
            sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", sns, "link", "add", vsc, "type", "veth",
           "peer", "name", vc, "netns", cns)
        sh("ip", "-n", sns, "link", "add", vsp, "type", "veth", "peer", "name", vp, "netns", pns)
        sh("ip", "-n", cns, "addr", "add", "198.18.1.2/24", "dev", vc)
        sh("ip", "-n", sns, "addr", "add", "198.18.1.1/24", "dev", vsc)
        sh("ip", "-n", sns, "addr", "add", "198.18.2.1/24", "dev", vsp)
        sh("ip", "-n", pns, "addr", "add", "198.18.2.2/24", "dev", vp)
        for n, dev in ((cns, vc), (sns, vsc), (sns, vsp), (pns, vp)):
            sh("ip", "-n", n, "link", "set", dev, "up")
        # bpf_fib_lookup (ingress view) wants forwarding on in the server namespace
        sh("ip", "netns", "exec", sns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield Topo(cns, sns, pns, [vsc, vsp])
    finally:
        delete_netns(names)


@dataclass
class Socks:
    client: socket.socket
    listener: socket.socket
    relay: socket.socket
    peer: socket.socket
    craw: RawSender
    praw: RawSender

    def close(self) -> None:
        for s in (self.client, self.listener, self.relay, self.peer):
            s.close()
        self.craw.close()
        self.praw.close()


@pytest.fixture
def socks(topo: Topo) -> Iterator[Socks]:
    with in_netns(topo.cns):
        client, craw = udp_socket(*CLIENT), RawSender(socket.AF_INET)
    with in_netns(topo.sns):
        listener, relay = udp_socket(*LISTENER), udp_socket(*RELAY)
    with in_netns(topo.pns):
        peer, praw = udp_socket(*PEER), RawSender(socket.AF_INET)
    s = Socks(client, listener, relay, peer, craw, praw)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def engine(topo: Topo) -> Iterator[OffloadEngine]:
    with in_netns(topo.sns):
        e = OffloadEngine.load(topo.sveths)
    try:
        yield e
    finally:
        e.close()


def csum_errors(topo: Topo) -> int:
    return sum(snmp_udp(n)["InCsumErrors"] for n in (topo.cns, topo.sns, topo.pns))


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "udp"])
def test_relays_between_namespaces(topo: Topo, socks: Socks, engine: OffloadEngine,
                                   raw: bool) -> None:
    assert {a.mode for a in engine.attachments} == {"tcx"}
    # user space first (ARP warm-up both ways, and proof the path works without the kernel)
    socks.client.sendto(b"hello", LISTENER)
    assert recv(socks.listener) == (b"hello", CLIENT)
    socks.peer.sendto(b"hello", RELAY)
    assert recv(socks.relay) == (b"hello", PEER)

    h = engine.add_channel(CLIENT, LISTENER, CH, RELAY, PEER)
    sizes = [1, 2, 3, 160, 513, 1200, 1468]
    for n in sizes:
        payload = bytes((i * 13 + n) & 0xFF for i in range(n))
        frame = channeldata(CH, payload)
        if raw:
            socks.craw.send(CLIENT, LISTENER, frame)
        else:
            socks.client.sendto(frame, LISTENER)
        assert recv(socks.peer) == (payload, RELAY)
        reply = payload[::-1]
        if raw:
            socks.praw.send(PEER, RELAY, reply)
        else:
            socks.peer.sendto(reply, RELAY)
        assert recv(socks.client) == (channeldata(CH, reply), LISTENER)
    assert recv_or_none(socks.listener) is None
    assert recv_or_none(socks.relay) is None
    c = engine.counters(h)
    assert (c.fwd_packets, c.fwd_bytes, c.rev_packets, c.rev_bytes) == \
        (len(sizes), sum(sizes), len(sizes), sum(sizes))
    assert csum_errors(topo) == 0

    # the reverse direction adds 4 bytes: a full-MTU peer datagram goes to user space
    before = engine.pass_reasons()["mtu"]
    big = bytes(1500 - 28)
    socks.peer.sendto(big, RELAY)
    assert recv(socks.relay) == (big, PEER)
    assert engine.pass_reasons()["mtu"] == before + 1

    engine.remove(h)
    socks.client.sendto(channeldata(CH, b"user space"), LISTENER)
    assert recv(socks.listener) == (channeldata(CH, b"user space"), CLIENT)
    socks.peer.sendto(b"user space", RELAY)
    assert recv(socks.relay) == (b"user space", PEER)
    assert recv_or_none(socks.peer) is None
    assert recv_or_none(socks.client) is None
    assert csum_errors(topo) == 0
