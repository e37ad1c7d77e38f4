"""The checks the hand-written hot paths repeat from the state machine, at their edges, end to end.

`UdpListener._on_readable` (client to peer) and `RelaySocket._on_readable` (peer to client)
judge each packet without `TurnServer`: the ChannelData length against the datagram, the
channel number against the client's own live channels, the peer against the permission of
*its* IP and that permission's ports. TCP frames take the state machine's
`handle_channel_data` and the relay's one-by-one path. Each test runs on a real server on
loopback with real UDP peers three times: with the Python hot paths alone (forwarder="python"),
with the kernel fast path on (`admin.offload_engine: TC` on lo, Python behind it: the default
"auto" would put the compiled forwarder between them, which tests/offload runs), and with the
compiled forwarder's thread (forwarder="compiled"). All must give the same answers: the frames
the kernel or the thread does not take fall through to Python.

Two one-line mutants once survived the suite; these tests kill them (see the commit message
for how that was checked): `size <= nbytes - 3` in the UDP length check (the peer got one
stale byte of another client's datagram from the shared buffer) and a relay check that took
another IP's permission (a stranger relayed whenever the permitted endpoint has no port range).
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pytest
from helpers.hostile_kit import PeerSocket, open_peer
from helpers.stream_turnclient import StreamTurnClient
from helpers.turnclient import RawTurnClient, error_code
from helpers.waits import until

from stunner_dp import stun
from stunner_dp.forwarder import forwarder_unavailable_reason
from stunner_dp.offload import offload_unavailable_reason
from stunner_dp.testing import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    TurnServerHandle,
    start_turn_server,
)
from stunner_dp.turn import allocation as allocation_module
from stunner_dp.turn.allocation import Allocation

CH, CH2, UNBOUND = 0x4000, 0x4001, 0x4FFF
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
Client = RawTurnClient  # StreamTurnClient is one too


# -- the three paths -----------------------------------------------------------------------


@pytest.fixture(params=["python", "kernel", "compiled"])
def path(request: pytest.FixtureRequest) -> str:
    """Which hot path carries the media: Python alone, the kernel with Python behind it, or
    the compiled forwarder's thread with Python behind it."""
    unavailable = {"kernel": offload_unavailable_reason, "compiled": forwarder_unavailable_reason}
    if request.param in unavailable:
        reason = unavailable[request.param]()
        if reason is not None:
            if IN_CI:
                pytest.fail(f"the {request.param} path must be tested in CI: {reason}")
            pytest.skip(f"the {request.param} path is unavailable here: {reason}")
    return str(request.param)


def admin(path: str) -> dict[str, Any]:
    section: dict[str, Any] = {
        "name": "hot-path-edges",
        "loglevel": "all:INFO",
        "metrics_endpoint": "",
        "healthcheck_endpoint": "",
    }
    if path == "kernel":
        section.update(offload_engine="TC", offload_interfaces=["lo"])
    return section


@asynccontextmanager
async def serving(path: str, endpoints: list[str]) -> AsyncIterator[TurnServerHandle]:
    """TURN-UDP and TURN-TCP on one port; the kernel program loaded, or the forwarder thread
    running, when `path` says so (and only then)."""
    forwarder = "compiled" if path == "compiled" else "python"
    async with start_turn_server(endpoints=endpoints, admin=admin(path), forwarder=forwarder) as ts:
        loaded = ts.server.offload.controller is not None
        assert loaded == (path == "kernel"), ts.server.offload.reason
        assert (ts.server.forwarder is not None) == (path == "compiled")
        yield ts


@asynccontextmanager
async def client(ts: TurnServerHandle, transport: str) -> AsyncIterator[Client]:
    c: Client = StreamTurnClient(ts.address) if transport == "tcp" else RawTurnClient(ts.address)
    async with c:
        yield c


async def allocated(c: Client) -> tuple[str, int]:
    return await c.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)


async def ok(answer: Any) -> None:
    msg = await answer
    assert error_code(msg) == 0, error_code(msg)


# -- waiting without timing ----------------------------------------------------------------


async def settle(c: Client) -> None:
    """A Binding answered on the client's own socket or stream: the server has read and
    handled everything this client sent before it; then one short pause so that what those
    sends put in the peers' socket queues reaches their protocols."""
    answer = await c.request(stun.METHOD_BINDING, auth=False)
    assert answer.cls == stun.CLASS_SUCCESS
    await asyncio.sleep(0.05)


def payloads(peer: PeerSocket) -> list[bytes]:
    return [d for d, _ in peer.got]


async def peer_gets(peer: PeerSocket, *expected: bytes) -> list[bytes]:
    """Wait (bounded) until each expected payload has arrived; everything the peer got."""
    assert await until(lambda: all(e in payloads(peer) for e in expected)), payloads(peer)
    return payloads(peer)


async def client_gets(c: Client, *canaries: bytes, timeout: float = 3.0) -> list[bytes]:
    """Everything unsolicited that reaches the client until a frame carrying each canary has
    (frames from different peers may come in any order: ChannelData leave in batches)."""
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    for _ in range(10_000):
        if all(any(canary in g for g in got) for canary in canaries):
            return got
        left = end - loop.time()
        if left <= 0:
            break
        with suppress(TimeoutError):
            got.append(await c.next_unsolicited(left))
    raise AssertionError(f"a canary never reached the client: {got}")


def channel_data(number: int, payload: bytes, length: int | None = None) -> bytes:
    """A ChannelData frame as given: `length` may lie about the payload; nothing is padded."""
    return struct.pack("!HH", number, len(payload) if length is None else length) + payload


def padded(number: int, payload: bytes) -> bytes:
    return stun.encode_channel_data(number, payload, pad=True)


def channel_payloads(frames: list[bytes], number: int) -> list[bytes]:
    """The payloads of the ChannelData frames on `number` (stream padding removed)."""
    out = []
    for frame in frames:
        if len(frame) >= 4 and struct.unpack_from("!H", frame)[0] == number:
            out.append(stun.parse_channel_data(frame)[1])
    return out


def data_indications(frames: list[bytes]) -> list[tuple[tuple[str, int], bytes]]:
    out = []
    for frame in frames:
        if not stun.is_stun(frame):
            continue
        msg = stun.parse_message(frame)
        if msg.method == stun.METHOD_DATA and msg.cls == stun.CLASS_INDICATION:
            raw_peer, data = msg.get(stun.ATTR_XOR_PEER_ADDRESS), msg.get(stun.ATTR_DATA)
            assert raw_peer is not None and data is not None
            out.append((stun.decode_xor_address(raw_peer, msg.transaction_id), data))
    return out


def the_allocation(ts: TurnServerHandle, c: Client) -> Allocation:
    turn = ts.server.turn
    assert turn is not None
    for alloc in turn.all_allocations():
        if alloc.client == c.local_address:
            return alloc
    raise AssertionError(f"no allocation for {c.local_address}")


@asynccontextmanager
async def peers(*hosts: str) -> AsyncIterator[list[PeerSocket]]:
    opened: list[PeerSocket] = []
    try:
        for host in hosts:
            opened.append(await open_peer(host))
        yield opened
    finally:
        for p in opened:
            if p.transport is not None:
                p.transport.close()


TRANSPORTS = pytest.mark.parametrize("transport", ["udp", "tcp"])


# -- ChannelData length, UDP (UdpListener._on_readable) ------------------------------------


async def test_exact_length_is_relayed_by_the_path_under_test(path: str) -> None:
    async with (
        peers("127.0.0.1") as [peer],
        serving(path, ["127.0.0.1"]) as ts,
        client(ts, "udp") as c,
    ):
        await allocated(c)
        await ok(c.channel_bind(CH, peer.address))
        c.send_raw(channel_data(CH, b"exact"))
        assert await peer_gets(peer, b"exact") == [b"exact"]
        # the Python hot path counts as it relays; the kernel's and the thread's counts wait
        # for stats()
        chan = the_allocation(ts, c).channels[CH]
        assert chan.out_packets == (1 if path == "python" else 0)
        stats = ts.server.stats()
        assert chan.out_packets == 1
        assert stats.forwarder.tx_packets == (1 if path == "compiled" else 0)


async def test_udp_lengths_at_the_edges(path: str) -> None:
    """UDP needs no padding: a length shorter than the datagram relays `length` bytes and
    ignores the rest (up to the padding boundary), a length beyond the datagram is dropped,
    by one byte or by many, and a frame that is all header carries an empty payload or, if
    its length claims more, nothing."""
    async with (
        peers("127.0.0.1") as [peer],
        serving(path, ["127.0.0.1"]) as ts,
        client(ts, "udp") as c,
    ):
        await allocated(c)
        await ok(c.channel_bind(CH, peer.address))
        c.send_raw(channel_data(CH, b"one-short!", length=9))  # 10 bytes, length 9
        c.send_raw(channel_data(CH, b"one-long", length=9))  # 8 bytes, length 9
        c.send_raw(channel_data(CH, b"far", length=1000))
        c.send_raw(channel_data(CH, b"", length=1))  # header only, claims a byte
        c.send_raw(channel_data(CH, b"", length=4))
        c.send_raw(channel_data(CH, b""))  # header only, length 0: an empty datagram
        c.send_raw(channel_data(CH, b"")[:3])  # not even a header
        c.send_raw(channel_data(CH, b"canary"))
        await settle(c)
        got = await peer_gets(peer, b"one-short", b"", b"canary")
        assert sorted(got) == sorted([b"one-short", b"", b"canary"]), got


async def test_no_stale_byte_of_another_clients_datagram(path: str) -> None:
    """Client A's long datagram sits in the listener's shared receive buffer; client B's short
    one claims one byte more than it carries. Read one byte too far, the peer would get B's
    payload and A's byte after it. A's long datagram is sent twice: once relayed (on its
    channel) and once on a channel nobody bound, which Python reads whichever path runs."""
    async with (
        peers("127.0.0.1") as [peer],
        serving(path, ["127.0.0.1"]) as ts,
        client(ts, "udp") as a,
        client(ts, "udp") as b,
    ):
        for c in (a, b):
            await allocated(c)
            await ok(c.channel_bind(CH, peer.address))
        long_a = b"A" * 200
        a.send_raw(channel_data(CH, long_a))
        assert await peer_gets(peer, long_a)
        a.send_raw(channel_data(UNBOUND, long_a))
        await settle(a)  # A's frames were read (the Binding overwrites only 28 bytes)
        short_b = b"b" * 100
        b.send_raw(channel_data(CH, short_b, length=len(short_b) + 1))
        b.send_raw(channel_data(CH, b"canary-b"))
        await settle(b)
        got = await peer_gets(peer, b"canary-b")
        assert not any(g.startswith(short_b) for g in got), got
        assert sorted(got) == sorted([long_a, b"canary-b"]), got


# -- ChannelData framing on TCP (padding mandatory, frames split anyhow) ---------------------


async def test_tcp_frames_padded_unpadded_and_split(path: str) -> None:
    async with (
        peers("127.0.0.1") as [peer],
        serving(path, ["127.0.0.1"]) as ts,
        client(ts, "tcp") as c,
    ):
        assert isinstance(c, StreamTurnClient)
        await allocated(c)
        await ok(c.channel_bind(CH, peer.address))
        c.send_raw(padded(CH, b"five!"))  # 5 bytes and 3 of padding: the 5 reach the peer
        c.send_raw(channel_data(CH, b"four"))  # a multiple of 4: nothing to pad
        await peer_gets(peer, b"five!", b"four")
        # a frame without its padding is not complete: the server waits for the rest
        c.send_raw(channel_data(CH, b"wait!"))
        await asyncio.sleep(0.1)
        assert b"wait!" not in payloads(peer)
        c.send_raw(b"\0\0\0")
        await peer_gets(peer, b"wait!")
        # split across reads: inside the header, inside the payload, inside the padding
        whole = padded(CH, b"split-me") + padded(CH, b"odd-split")
        for cut in (2, 7, 12 + 4 + 6, len(whole) - 1):
            c.send_raw(whole[:cut])
            await asyncio.sleep(0.05)
            c.send_raw(whole[cut:])
            await peer_gets(peer, b"split-me", b"odd-split")
            peer.got.clear()
        # several frames in one write, a STUN message among them
        binding = stun.encode_message(
            stun.METHOD_BINDING, stun.CLASS_REQUEST, os.urandom(12), [], fingerprint=True
        )
        c.send_raw(padded(CH, b"x") + binding + padded(CH, b"yy") + padded(UNBOUND, b"z"))
        c.send_raw(padded(CH, b"canary"))
        await settle(c)
        got = await peer_gets(peer, b"x", b"yy", b"canary")
        assert got == [b"x", b"yy", b"canary"], got


async def test_tcp_peer_data_comes_back_padded(path: str) -> None:
    async with (
        peers("127.0.0.1") as [peer],
        serving(path, ["127.0.0.1"]) as ts,
        client(ts, "tcp") as c,
    ):
        relay = await allocated(c)
        await ok(c.channel_bind(CH, peer.address))
        for payload in (b"a", b"bb", b"ccc", b"dddd", b"eeeee"):
            peer.sendto(payload, relay)
        got = await client_gets(c, b"eeeee")
        assert all(len(frame) % 4 == 0 for frame in got), got
        assert channel_payloads(got, CH) == [b"a", b"bb", b"ccc", b"dddd", b"eeeee"]


# -- channel numbers: only the client's own live channels ------------------------------------


@TRANSPORTS
async def test_unbound_and_other_clients_channels_go_nowhere(path: str, transport: str) -> None:
    """B sends on the channel number A bound (and B never did), and on one nobody bound; B
    binds its own 0x4001 to another peer and that is all B reaches."""
    async with (
        peers("127.0.0.1", "127.0.0.1") as [peer_a, peer_b],
        serving(path, ["127.0.0.1"]) as ts,
        client(ts, "udp") as a,
        client(ts, transport) as b,
    ):
        await allocated(a)
        await allocated(b)
        await ok(a.channel_bind(CH, peer_a.address))
        await ok(b.channel_bind(CH2, peer_b.address))
        frame = padded if transport == "tcp" else channel_data
        b.send_raw(frame(CH, b"on-a-channel"))
        b.send_raw(frame(UNBOUND, b"on-no-channel"))
        b.send_raw(frame(CH2, b"canary"))
        a.send_raw(channel_data(CH, b"a-canary"))
        await settle(b)
        await settle(a)
        assert await peer_gets(peer_b, b"canary") == [b"canary"]
        assert await peer_gets(peer_a, b"a-canary") == [b"a-canary"]


@TRANSPORTS
async def test_an_expired_channel_carries_nothing(
    path: str, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel expires while its permission lives: the client's ChannelData on it is
    dropped, and the peer's datagrams come as Data indications, no longer as ChannelData."""
    monkeypatch.setattr(allocation_module, "CHANNEL_LIFETIME", 60.0)
    async with (
        peers("127.0.0.1") as [peer],
        serving(path, ["127.0.0.1"]) as ts,
        client(ts, transport) as c,
    ):
        relay = await allocated(c)
        await ok(c.channel_bind(CH, peer.address))
        frame = padded if transport == "tcp" else channel_data
        c.send_raw(frame(CH, b"before"))
        await peer_gets(peer, b"before")
        ts.server.tick(time.time() + 61)  # the permission (300 s) lives on
        assert CH in the_allocation(ts, c).held
        c.send_raw(frame(CH, b"after"))
        await settle(c)
        assert payloads(peer) == [b"before"]
        peer.sendto(b"peer-after", relay)
        got = await client_gets(c, b"peer-after")
        assert channel_payloads(got, CH) == []
        assert data_indications(got) == [(peer.address, b"peer-after")]


@TRANSPORTS
async def test_an_expired_permission_stops_its_channel_both_ways(path: str, transport: str) -> None:
    """The permission (300 s) ends before the channel (600 s): nothing flows either way on the
    channel until CreatePermission renews it, then both ways again."""
    async with (
        peers("127.0.0.1") as [peer],
        serving(path, ["127.0.0.1"]) as ts,
        client(ts, transport) as c,
    ):
        relay = await allocated(c)
        await ok(c.channel_bind(CH, peer.address))
        frame = padded if transport == "tcp" else channel_data
        ts.server.tick(time.time() + allocation_module.PERMISSION_LIFETIME + 1)
        c.send_raw(frame(CH, b"no-permission"))
        peer.sendto(b"peer-no-permission", relay)
        await settle(c)
        assert payloads(peer) == []
        # renewed: the canary from the peer is ChannelData, and nothing came before it
        await ok(c.create_permission(peer.address))
        peer.sendto(b"peer-renewed", relay)
        got = await client_gets(c, b"peer-renewed")
        assert channel_payloads(got, CH) == [b"peer-renewed"], got
        c.send_raw(frame(CH, b"renewed"))
        assert await peer_gets(peer, b"renewed") == [b"renewed"]


# -- permissions by IP, with and without port ranges, both directions ------------------------


@dataclass
class Cast:
    """Peers around one permitted IP (127.0.0.1): `good` has the channel, `talker` a
    permission only (its datagrams take Python's Data-indication path, whichever path runs:
    the canary that says the relay socket's queue was read), `other_port` is on the permitted
    IP outside the range when there is one, `twin` has good's port on 127.0.0.2 (no rule),
    `listed` is on 127.0.0.3 (in the rules, never permitted) and `stranger` anywhere on
    127.0.0.2."""

    good: PeerSocket
    talker: PeerSocket
    other_port: PeerSocket
    twin: PeerSocket
    listed: PeerSocket
    stranger: PeerSocket

    def all(self) -> list[PeerSocket]:
        return [self.good, self.talker, self.other_port, self.twin, self.listed, self.stranger]


@asynccontextmanager
async def cast_of_peers() -> AsyncIterator[Cast]:
    async with peers("127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.3", "127.0.0.2") as ps:
        good, talker, other_port, listed, stranger = ps
        twin = None
        for _ in range(20):  # good's port may be taken on 127.0.0.2: pick another good
            with suppress(OSError):
                twin = await open_peer("127.0.0.2", good.address[1])
                break
            assert good.transport is not None
            good.transport.close()
            good = await open_peer("127.0.0.1")
            ps.append(good)
        assert twin is not None
        try:
            yield Cast(good, talker, other_port, twin, listed, stranger)
        finally:
            assert twin.transport is not None
            twin.transport.close()


def rules(cast: Cast, ranges: bool) -> list[str]:
    if not ranges:
        return ["127.0.0.1", "127.0.0.3"]
    return [f"127.0.0.1:<{p.address[1]}-{p.address[1]}>" for p in (cast.good, cast.talker)] + [
        "127.0.0.3"
    ]


RANGES = pytest.mark.parametrize("ranges", [False, True], ids=["no-port-range", "port-ranges"])


@TRANSPORTS
@RANGES
async def test_peer_to_client_by_the_peers_own_ip(path: str, transport: str, ranges: bool) -> None:
    """On the relay, a datagram is judged by the permission of the IP it comes from and that
    permission's ports; never by another IP's."""
    async with (
        cast_of_peers() as cast,
        serving(path, rules(cast, ranges)) as ts,
        client(ts, transport) as c,
    ):
        relay = await allocated(c)
        await ok(c.channel_bind(CH, cast.good.address))
        await ok(c.create_permission(cast.talker.address))
        for p in (cast.twin, cast.stranger, cast.listed, cast.other_port, cast.good):
            p.sendto(b"from %d" % p.address[1], relay)
        cast.talker.sendto(b"talker-canary", relay)
        good_port = cast.good.address[1]
        got = await client_gets(c, b"talker-canary", b"from %d" % good_port)
        assert channel_payloads(got, CH) == [b"from %d" % good_port], got
        indications = data_indications(got)
        expected = [(cast.talker.address, b"talker-canary")]
        if not ranges:  # a permission is per IP: any port of it may send
            other = cast.other_port.address
            expected.insert(0, (other, b"from %d" % other[1]))
        assert indications == expected, got


@TRANSPORTS
@RANGES
async def test_client_to_peer_by_the_peers_own_ip(path: str, transport: str, ranges: bool) -> None:
    """ChannelData reaches only the bound peer; a channel to another port of the permitted IP
    binds (and carries) only if the rules have no port range there; no channel reaches an IP
    the rules leave out, or the same port on another IP."""
    async with (
        cast_of_peers() as cast,
        serving(path, rules(cast, ranges)) as ts,
        client(ts, transport) as c,
    ):
        await allocated(c)
        frame = padded if transport == "tcp" else channel_data
        await ok(c.channel_bind(CH, cast.good.address))
        other_answer = error_code(await c.channel_bind(CH2, cast.other_port.address))
        assert other_answer == (403 if ranges else 0)
        for number, peer in ((0x4002, cast.twin), (0x4003, cast.stranger)):
            assert error_code(await c.channel_bind(number, peer.address)) == 403
        for number in (CH2, 0x4002, 0x4003):
            c.send_raw(frame(number, b"via %x" % number))
        c.send_raw(frame(CH, b"canary"))
        await settle(c)
        assert await peer_gets(cast.good, b"canary") == [b"canary"]
        assert payloads(cast.other_port) == ([] if ranges else [b"via 4001"])
        for p in (cast.twin, cast.stranger, cast.listed, cast.talker):
            assert payloads(p) == [], p.address
