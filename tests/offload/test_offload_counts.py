"""The kernel's counts survive every way an entry ends: what the program relayed for a channel
reaches `stunner_offload_*` and the listener and cluster figures even when no scrape read it
while the channel lived (a client that relays and deletes its allocation between two scrapes,
as turnutils_uclient does), and for every entry, not only the first one the engine installed
(turnutils_uclient binds an idle RTCP channel first, then the one that carries the media)."""

from __future__ import annotations

import asyncio

from conftest import require_offload
from helpers.hostile_kit import UdpTurn, code, open_peer, relayed

from stunner_dp import stun
from stunner_dp.testing import start_turn_server

CH = 0x4000
N = 40
OFFLOAD = {"offload_engine": "TC", "offload_interfaces": ["lo"]}


async def test_every_entrys_counts_are_kept_when_its_allocation_ends_unscraped() -> None:
    require_offload()
    peer = await open_peer("127.0.0.1")
    admin = {"name": "counts", "metrics_endpoint": "", "healthcheck_endpoint": "", **OFFLOAD}
    try:
        async with (
            start_turn_server(protocols=("TURN-UDP",), admin=admin) as ts,
            UdpTurn(ts.address) as c,
        ):
            assert ts.server.offload.controller is not None, ts.server.offload.reason
            relay = relayed(await c.allocate())
            idle = await open_peer("127.0.0.1")  # bound first, carries nothing
            try:
                assert code(await c.bind(CH + 1, idle.address)) == 0
            finally:
                if idle.transport is not None:
                    idle.transport.close()
            assert code(await c.bind(CH, peer.address)) == 0
            assert ts.server.stats().offload.entries == 2
            for i in range(N):
                c.send(stun.encode_channel_data(CH, b"x%03d" % i))
            for _ in range(300):
                if len(peer.got) >= N:
                    break
                await asyncio.sleep(0.01)
            for i in range(N):
                peer.sendto(b"y%03d" % i, relay)
            back = [g for g in await c.received(0.5) if g[:2] == CH.to_bytes(2, "big")]
            assert (len(peer.got), len(back)) == (N, N)
            refresh = await c.ask(stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, stun.encode_u32(0))])
            assert code(refresh) == 0 and ts.server.allocation_count == 0
            stats = ts.server.stats()  # the first scrape: after the allocation is gone
            off, cluster = stats.offload, stats.clusters["peers"]
            assert (off.tx_packets, off.rx_packets) == (N, N)
            assert (off.tx_bytes, off.rx_bytes) == (4 * N, 4 * N)
            assert (cluster.tx_packets, cluster.rx_packets) == (N, N)
            assert (cluster.tx_bytes, cluster.rx_bytes) == (4 * N, 4 * N)
            lis = stats.listeners["udp-listener"]
            assert lis.rx_bytes >= 8 * N and lis.tx_bytes >= 8 * N  # ChannelData with headers
    finally:
        if peer.transport is not None:
            peer.transport.close()
