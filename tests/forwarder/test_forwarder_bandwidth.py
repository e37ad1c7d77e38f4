"""admin.user_bandwidth with the compiled forwarder: a user over its cap leaves the thread (its
relay socket unwatched, its entries removed: the token bucket runs in Python), everyone else
stays in it, and once back under the cap the user's relay and channels return to the thread.
(tests/net/test_user_bandwidth.py checks the amounts under the default mode; this checks
where the packets go.)"""

from __future__ import annotations

import asyncio
from typing import Any

from helpers.fast_path import allocations
from helpers.hostile_kit import PeerSocket, UdpTurn, code, open_peer, relayed
from helpers.waits import until

from forwarder.kit import CH, admin, compiled_server
from stunner_dp import stun
from stunner_dp.net.relay import RelaySocket
from stunner_dp.testing import TurnServerHandle, ephemeral_credentials

SECRET = "forwarder-bandwidth"
CAP = 100_000  # bytes/s per user and direction
PAYLOAD = 1000


def relay_of(ts: TurnServerHandle, user: str) -> RelaySocket:
    [alloc] = [a for a in allocations(ts) if a.quota_user == user]
    assert isinstance(alloc.relay, RelaySocket)
    return alloc.relay


def in_thread(ts: TurnServerHandle, user: str) -> bool:
    assert ts.server.forwarder is not None
    return ts.server.forwarder.watching(relay_of(ts, user).sock)


async def flood(c: UdpTurn, rate: float, seconds: float) -> None:
    """ChannelData at `rate` bytes/s for `seconds` (10 ms steps)."""
    steps = int(seconds / 0.01)
    per_step = max(1, int(rate * 0.01) // PAYLOAD)
    for _ in range(steps):
        for _ in range(per_step):
            c.send(stun.encode_channel_data(CH, b"x" * PAYLOAD))
        await asyncio.sleep(0.01)


async def to_peer(c: UdpTurn, peer: PeerSocket, tag: bytes, n: int) -> None:
    """n ChannelData on CH, each `tag`-i, all of them at the peer."""
    peer.got.clear()
    for i in range(n):
        c.send(stun.encode_channel_data(CH, tag + b"-%d" % i))
    assert await until(lambda: len(peer.got) == n)


async def test_a_capped_user_leaves_the_thread_and_comes_back() -> None:
    peers: list[PeerSocket] = [await open_peer("127.0.0.1") for _ in range(2)]
    config: dict[str, Any] = {
        "auth_type": "ephemeral",
        "secret": SECRET,
        "admin": admin(user_bandwidth=CAP, loglevel="all:WARNING"),
    }
    try:
        async with (
            compiled_server(**config) as ts,
            UdpTurn(ts.address) as alice,
            UdpTurn(ts.address) as bob,
        ):
            relays = {}
            for c, user, peer in ((alice, "alice", peers[0]), (bob, "bob", peers[1])):
                relays[user] = relayed(await c.allocate(*ephemeral_credentials(SECRET, user)))
                assert code(await c.bind(CH, peer.address)) == 0
            assert ts.server.stats().forwarder.entries == 2
            assert in_thread(ts, "alice") and in_thread(ts, "bob")

            await flood(alice, 3 * CAP, 1.0)
            assert await until(lambda: ts.server.stats().bandwidth.capped_users == 1, 5.0)
            # alice's relay left the thread, her entry with it; bob's stayed
            assert not in_thread(ts, "alice") and in_thread(ts, "bob")
            assert ts.server.stats().forwarder.entries == 1
            fwd0 = ts.server.stats().forwarder
            await to_peer(bob, peers[1], b"bob", 5)
            fwd = ts.server.stats().forwarder
            assert fwd.tx_packets - fwd0.tx_packets == 5  # bob's, by the thread
            # what alice sends now is Python's (the bucket's), none of it the thread's
            for i in range(3):
                alice.send(stun.encode_channel_data(CH, b"alice-%d" % i))
            peers[0].sendto(b"to-alice", relays["alice"])
            await alice.ask(stun.METHOD_BINDING, auth=False)
            await asyncio.sleep(0.05)
            after = ts.server.stats().forwarder
            assert (after.tx_packets, after.rx_packets) == (fwd.tx_packets, fwd.rx_packets)

            # back under the cap: her relay and channel return to the thread
            assert await until(lambda: ts.server.stats().bandwidth.capped_users == 0, 15.0)
            assert in_thread(ts, "alice")
            assert ts.server.stats().forwarder.entries == 2
            back0 = ts.server.stats().forwarder
            await to_peer(alice, peers[0], b"again", 10)
            for i in range(10):
                peers[0].sendto(b"reply-%d" % i, relays["alice"])
            got = [g for g in await alice.received(0.3) if g[:2] == CH.to_bytes(2, "big")]
            assert len([g for g in got if b"reply-" in g]) == 10
            back = ts.server.stats().forwarder
            assert back.tx_packets - back0.tx_packets == 10  # all by the thread again
            assert back.rx_packets - back0.rx_packets == 10
    finally:
        for p in peers:
            if p.transport is not None:
                p.transport.close()
