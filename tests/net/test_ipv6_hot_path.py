"""Issue 11: IPv6 takes the same hot paths as IPv4, with the same rules and counts.

IPv6 sockets report a source as (host, port, flowinfo, scope_id) while the tables key on
(host, port). These tests run over ::1: an IPv6 listener, and the dual-stack `address: "::"`
socket (IPv4 clients seen as ::ffff:127.0.0.1). Client to peer, ChannelData is judged inline
by `UdpListener` as on IPv4: a frame on a channel the client has not bound, one longer than
its datagram, one from an address without an allocation are each dropped *and counted*.
Peer to client, an IPv6 relay batches a burst (GSO) like an IPv4 one; a permitted peer
without a channel still gets a Data indication, one without a permission is dropped and counted.
Over its bandwidth cap an IPv6 allocation is diverted off both hot paths, and put back on them
(the batching reader included) once it is under the cap again.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers.hostile_kit import PeerSocket, open_peer
from helpers.turnclient import RawTurnClient, error_code, udp_transport
from helpers.waits import until

from stunner_dp import stun
from stunner_dp.net.relay import RelaySocket
from stunner_dp.net.udp import UdpListener
from stunner_dp.testing import TurnServerHandle, start_turn_server
from stunner_dp.turn.allocation import Allocation

CH, UNBOUND = 0x4000, 0x4FFF
TIMEOUT = 3.0
IPV6_RELAY = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]

# (listener address, client address, relay family): an IPv6 listener, and the dual-stack
# socket with an IPv4 client (::ffff:127.0.0.1 to the socket) and with an IPv6 one.
SETUPS = {
    "ipv6": ("::1", "::1", "ipv6"),
    "dual-mapped-ipv4-relay": ("::", "127.0.0.1", "ipv4"),
    "dual-mapped-ipv6-relay": ("::", "127.0.0.1", "ipv6"),
    "dual-ipv6": ("::", "::1", "ipv6"),
}
SETUP = pytest.mark.parametrize("setup", list(SETUPS))
IPV6_RELAYS = pytest.mark.parametrize(
    "setup", [name for name, (_, _, family) in SETUPS.items() if family == "ipv6"]
)


@asynccontextmanager
async def serving(listen: str) -> AsyncIterator[TurnServerHandle]:
    # the Python hot path's IPv6 handling (tests/forwarder checks the compiled one's)
    async with start_turn_server(
        host=listen, protocols=("TURN-UDP",), endpoints=["127.0.0.1", "::1"], forwarder="python"
    ) as ts:
        yield ts


@asynccontextmanager
async def scene(setup: str) -> AsyncIterator[tuple[TurnServerHandle, RawTurnClient, PeerSocket]]:
    """A server, one allocated client and a peer of the relay's family."""
    listen, client_host, family = SETUPS[setup]
    peer = await open_peer("::1" if family == "ipv6" else "127.0.0.1")
    try:
        async with serving(listen) as ts, RawTurnClient((client_host, ts.port)) as c:
            await allocate(c, ts, family)
            yield ts, c, peer
    finally:
        assert peer.transport is not None
        peer.transport.close()


async def allocate(c: RawTurnClient, ts: TurnServerHandle, family: str) -> tuple[str, int]:
    await c.challenge()
    c.login(ts.username, ts.password)
    asked = IPV6_RELAY if family == "ipv6" else []
    resp = await c.request(stun.METHOD_ALLOCATE, udp_transport() + asked)
    assert error_code(resp) == 0, error_code(resp)
    value = resp.get(stun.ATTR_XOR_RELAYED_ADDRESS)
    assert value is not None
    relayed = stun.decode_xor_address(value, resp.transaction_id)
    assert (":" in relayed[0]) == (family == "ipv6"), relayed
    return relayed


def listener(ts: TurnServerHandle) -> UdpListener:
    lst = ts.server.listeners["udp-listener"]
    assert isinstance(lst, UdpListener)
    return lst


def the_allocation(ts: TurnServerHandle) -> Allocation:
    turn = ts.server.turn
    assert turn is not None
    [alloc] = turn.all_allocations()
    return alloc


def the_relay(ts: TurnServerHandle) -> RelaySocket:
    relay = the_allocation(ts).relay
    assert isinstance(relay, RelaySocket)
    return relay


def channel_data(number: int, payload: bytes, length: int | None = None) -> bytes:
    """A ChannelData frame as given: `length` may lie about the payload."""
    return struct.pack("!HH", number, len(payload) if length is None else length) + payload


def count_sendmsg_batches(lst: UdpListener) -> list[int]:
    """Wrap the listener's real `sendmsg` so each call records the size of what it sent: one
    entry per GSO batch (or per datagram, unbatched)."""
    real_sendmsg = lst.sendmsg
    assert real_sendmsg is not None
    batches: list[int] = []

    def counting_sendmsg(buffers: Any, ancdata: Any, flags: int, address: Any) -> int:
        batches.append(len(buffers[0]))
        return real_sendmsg(buffers, ancdata, flags, address)

    lst.sendmsg = counting_sendmsg
    return batches


async def settle(c: RawTurnClient) -> None:
    """A Binding answered on the client's socket: the server has read what was sent before."""
    answer = await c.request(stun.METHOD_BINDING, auth=False)
    assert answer.cls == stun.CLASS_SUCCESS


def payloads(peer: PeerSocket) -> list[bytes]:
    return [d for d, _ in peer.got]


# -- client to peer: UdpListener's inline ChannelData ----------------------------------------


@SETUP
async def test_channel_data_is_relayed_and_counted_on_its_channel(setup: str) -> None:
    async with scene(setup) as (ts, c, peer):
        assert error_code(await c.channel_bind(CH, peer.address)) == 0
        sent = [b"one", b"two-two", b"three-three-three"]
        for payload in sent:
            c.send_raw(channel_data(CH, payload))
        assert await until(lambda: len(peer.got) == len(sent)), peer.got
        assert payloads(peer) == sent
        chan = the_allocation(ts).channels[CH]
        assert (chan.out_packets, chan.out_bytes) == (3, sum(map(len, sent)))
        assert listener(ts).counters.dropped == 0


@SETUP
async def test_channel_data_nobody_may_relay_is_dropped_and_counted(setup: str) -> None:
    """A channel the client never bound, a length past the datagram's end, a client without
    an allocation: each frame dropped and counted; the canary after them is relayed."""
    _, client_host, _ = SETUPS[setup]
    async with scene(setup) as (ts, c, peer):
        assert error_code(await c.channel_bind(CH, peer.address)) == 0
        lst = listener(ts)
        before = lst.counters.dropped
        c.send_raw(channel_data(UNBOUND, b"unbound channel"))
        c.send_raw(channel_data(CH, b"short", length=6))
        async with RawTurnClient((client_host, ts.port)) as stranger:
            stranger.send_raw(channel_data(CH, b"no allocation"))
            await settle(stranger)
        c.send_raw(channel_data(CH, b"canary"))
        await settle(c)
        assert await until(lambda: b"canary" in payloads(peer)), peer.got
        assert payloads(peer) == [b"canary"]
        assert lst.counters.dropped == before + 3
        chan = the_allocation(ts).channels[CH]
        assert (chan.out_packets, chan.out_bytes) == (1, len(b"canary"))


# -- peer to client: RelaySocket's reader ------------------------------------------------------


@IPV6_RELAYS
async def test_ipv6_relay_sends_a_burst_in_batches(setup: str) -> None:
    """A burst from an IPv6 peer read in one wake-up leaves in GSO sendmsg batches (as from an
    IPv4 relay), each datagram still its own frame, whole and in order, counted on the
    channel."""
    async with scene(setup) as (ts, c, peer):
        pool = ts.server.relays
        assert pool is not None
        if not pool.gso:
            pytest.skip("this kernel has no UDP GSO")
        relayed = the_relay(ts).address
        assert error_code(await c.channel_bind(CH, peer.address)) == 0
        batches = count_sendmsg_batches(listener(ts))
        burst = [i.to_bytes(4, "big") + bytes([i]) * 96 for i in range(32)]
        for payload in burst:  # without yielding: the burst is read in one wake-up
            peer.sendto(payload, relayed)
        got = [await c.next_unsolicited(TIMEOUT) for _ in burst]
        assert [stun.parse_channel_data(frame) for frame in got] == [(CH, p) for p in burst]
        assert all(len(frame) == 4 + 100 for frame in got)  # one frame per datagram
        assert batches and sum(batches) <= len(burst) * 104, batches
        assert len(batches) < len(burst), batches  # batched, not one sendmsg per datagram
        chan = the_allocation(ts).channels[CH]
        assert (chan.in_packets, chan.in_bytes) == (32, 32 * 100)


@IPV6_RELAYS
async def test_ipv6_peer_without_channel_gets_a_data_indication(setup: str) -> None:
    """Before any permission, what an IPv6 peer sends is dropped and counted; then beside a
    channel, a permitted peer without one reaches the client in a Data indication carrying
    its (host, port), counted on the permission."""
    async with scene(setup) as (ts, c, peer):
        other = await open_peer("::1")
        try:
            relay = the_relay(ts)
            dropped = relay.dropped
            other.sendto(b"no permission yet", relay.address)
            assert await until(lambda: relay.dropped == dropped + 1), relay.dropped
            assert error_code(await c.channel_bind(CH, peer.address)) == 0  # permits ::1
            peer.sendto(b"on-channel", relay.address)
            other.sendto(b"indicated", relay.address)
            frames = [await c.next_unsolicited(TIMEOUT) for _ in range(2)]
            channel = [stun.parse_channel_data(f) for f in frames if stun.is_channel_data(f)]
            assert channel == [(CH, b"on-channel")]
            [indication] = [stun.parse_message(f) for f in frames if stun.is_stun(f)]
            assert (indication.method, indication.cls) == (
                stun.METHOD_DATA,
                stun.CLASS_INDICATION,
            )
            assert indication.get(stun.ATTR_DATA) == b"indicated"
            raw_peer = indication.get(stun.ATTR_XOR_PEER_ADDRESS)
            assert raw_peer is not None
            assert stun.decode_xor_address(raw_peer, indication.transaction_id) == other.address
            perm = the_allocation(ts).permissions["::1"]
            assert (perm.in_packets, perm.in_bytes) == (1, len(b"indicated"))
            assert relay.dropped == dropped + 1
        finally:
            assert other.transport is not None
            other.transport.close()


# -- the bandwidth cap (net/bandwidth.py) diverts IPv6 relays off the hot paths and back -------

CAP = 200_000  # bytes/s per user and direction
PAYLOAD = 1000


async def pace(send: Callable[[], None], rate: float, seconds: float) -> float:
    """PAYLOAD-byte datagrams at `rate` bytes/s for `seconds` (bounded); the time taken."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    for _ in range(int(seconds / 0.005) + 10):
        elapsed = loop.time() - start
        if elapsed >= seconds:
            break
        while sent < rate * elapsed:
            send()
            sent += PAYLOAD
        await asyncio.sleep(0.005)
    return loop.time() - start


def drain(c: RawTurnClient) -> int:
    """Bytes of ChannelData payload the client has received (and not read) so far."""
    got = 0
    while not c.proto.unsolicited.empty():
        got += len(c.proto.unsolicited.get_nowait()) - 4
    return got


@pytest.mark.parametrize("direction", ["to_peer", "to_client"])
async def test_ipv6_user_over_the_cap_then_back_on_the_hot_path(direction: str) -> None:
    """Over its cap, an IPv6 allocation gets about the cap through and the excess is counted;
    back under it, everything goes through again, and peer bursts leave in batches again."""
    admin = {
        "name": "ipv6-cap",
        "loglevel": "all:WARNING",
        "metrics_endpoint": "",
        "healthcheck_endpoint": "",
        "user_bandwidth": CAP,
    }
    to_peer = direction == "to_peer"
    peer = await open_peer("::1")
    try:
        async with (
            start_turn_server(
                host="::1",
                protocols=("TURN-UDP",),
                endpoints=["::1"],
                admin=admin,
                forwarder="python",
            ) as ts,
            RawTurnClient(("::1", ts.port)) as c,
        ):
            relayed = await allocate(c, ts, "ipv6")
            assert error_code(await c.channel_bind(CH, peer.address)) == 0
            payload = b"x" * PAYLOAD

            def send() -> None:
                if to_peer:
                    c.send_raw(channel_data(CH, payload))
                else:
                    peer.sendto(payload, relayed)

            took = await pace(send, 3 * CAP, 1.5)
            await settle(c)
            await asyncio.sleep(0.2)
            sent = int(3 * CAP * took) // PAYLOAD * PAYLOAD
            got = sum(map(len, payloads(peer))) if to_peer else drain(c)
            stats = ts.server.stats()
            dropped = stats.bandwidth.tx_bytes if to_peer else stats.bandwidth.rx_bytes
            allowed = CAP + CAP * took  # the burst, then the rate
            assert 0.6 * allowed <= got <= 1.3 * allowed + 0.5 * CAP, (got, allowed, sent)
            assert dropped >= 0.8 * (sent - got), (dropped, sent, got)
            assert await until(lambda: ts.server.stats().bandwidth.capped_users == 0, 10.0)
            peer.got.clear()
            for _ in range(10):
                send()
                await asyncio.sleep(0.02)
            await settle(c)
            if to_peer:
                assert await until(lambda: len(peer.got) == 10), len(peer.got)
            else:
                assert await until(lambda: c.proto.unsolicited.qsize() == 10)
                drain(c)
            pool = ts.server.relays
            assert pool is not None
            if to_peer or not pool.gso:
                return
            batches = count_sendmsg_batches(listener(ts))
            for _ in range(16):  # well under the cap's burst; read in one wake-up
                peer.sendto(b"b" * 100, relayed)
            got_frames = [await c.next_unsolicited(TIMEOUT) for _ in range(16)]
            assert got_frames == [channel_data(CH, b"b" * 100)] * 16
            assert 0 < len(batches) < 16, batches
    finally:
        assert peer.transport is not None
        peer.transport.close()
