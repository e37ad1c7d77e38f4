"""Every channel's kernel counts are its own and exact: 8 clients on lo, two channels each (two
peers), each channel carrying a different number of packets of a different size both ways.
The engine's per-entry counters, each allocation's folded totals, the cluster, the listener
and `stunner_offload_*` must all match what was sent, and a second scrape adds nothing.

(The bench once saw only entry 0 counting: 125 of 1,000 packets with 8 clients, because the
entry id went into the map values big-endian and indexed past `entry_stats`.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from conftest import require_offload
from helpers.hostile_kit import PeerSocket, UdpTurn, code, open_peer, relayed

from stunner_dp import stun
from stunner_dp.offload import Counters
from stunner_dp.testing import start_turn_server

CLIENTS = 8
CHANNELS = (0x4000, 0x4001)  # one per peer
OFFLOAD = {"offload_engine": "TC", "offload_interfaces": ["lo"]}


def plan(client: int, which: int) -> tuple[int, int, int, int]:
    """(packets to the peer, their size, packets back, their size): distinct per channel."""
    k = 2 * client + which
    return 3 + k, 10 + k, 2 + 2 * k, 7 + 3 * k


async def until_count(pred: object, limit: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while loop.time() < end and not pred():  # type: ignore[operator]
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def peers() -> AsyncIterator[list[PeerSocket]]:
    out: list[PeerSocket] = []
    try:
        for _ in CHANNELS:
            out.append(await open_peer("127.0.0.1"))
        yield out
    finally:
        for p in out:
            if p.transport is not None:
                p.transport.close()


async def test_each_of_several_channels_counts_exactly_what_it_relayed() -> None:
    require_offload()
    admin = {"name": "counters", "metrics_endpoint": "", "healthcheck_endpoint": "", **OFFLOAD}
    async with (
        peers() as ps,
        start_turn_server(protocols=("TURN-UDP",), admin=admin) as ts,
        contextlib.AsyncExitStack() as stack,
    ):
        controller = ts.server.offload.controller
        assert controller is not None, ts.server.offload.reason
        clients = [await stack.enter_async_context(UdpTurn(ts.address)) for _ in range(CLIENTS)]
        relays = [relayed(await c.allocate()) for c in clients]
        for c in clients:
            for ch, p in zip(CHANNELS, ps, strict=True):
                assert code(await c.bind(ch, p.address)) == 0
        turn = ts.server.turn
        assert turn is not None
        by_client = {a.client: a for a in turn.all_allocations()}
        allocs = [by_client[c.local_address] for c in clients]
        handles = [[controller.handle(a.bindings[ch]) for ch in CHANNELS] for a in allocs]
        assert all(h is not None for row in handles for h in row)
        assert len({h.id for row in handles for h in row if h is not None}) == 2 * CLIENTS
        before = ts.server.stats()

        for i, c in enumerate(clients):
            for w, ch in enumerate(CHANNELS):
                n, size, _, _ = plan(i, w)
                for s in range(n):
                    c.send(stun.encode_channel_data(ch, bytes([i, w, s]).ljust(size, b".")))
        for w, p in enumerate(ps):
            want = sum(plan(i, w)[0] for i in range(CLIENTS))
            await until_count(lambda p=p, want=want: len(p.got) >= want)
            assert len(p.got) == want
            # the kernel sent each from its client's relay address
            for data, src in p.got:
                assert data[1] == w and src == relays[data[0]]
        for i in range(CLIENTS):
            for w, p in enumerate(ps):
                _, _, n, size = plan(i, w)
                for s in range(n):
                    p.sendto(bytes([i, w, s]).ljust(size, b","), relays[i])
        for i, c in enumerate(clients):
            want = sum(plan(i, w)[2] for w in range(len(CHANNELS)))
            back = [g for g in await c.received(0.3) if g[:1] == b"\x40"]
            for _ in range(20):
                if len(back) >= want:
                    break
                back += [g for g in await c.received(0.1) if g[:1] == b"\x40"]
            assert len(back) == want, (i, len(back), want)
            assert all(g[4] == i for g in back)

        for i, row in enumerate(handles):
            for w, h in enumerate(row):
                assert h is not None
                n, size, m, back_size = plan(i, w)
                assert controller.engine.counters(h) == Counters(n, n * size, m, m * back_size)

        for _ in range(2):  # a second scrape folds nothing twice
            stats = ts.server.stats()
            sums = [0, 0, 0, 0]  # tx packets, tx bytes, rx packets, rx bytes
            for i, a in enumerate(allocs):
                want = [0, 0, 0, 0]
                for w, ch in enumerate(CHANNELS):
                    n, size, m, back_size = plan(i, w)
                    chan = a.bindings[ch]
                    assert (chan.out_packets, chan.out_bytes) == (n, n * size)
                    assert (chan.in_packets, chan.in_bytes) == (m, m * back_size)
                    for k, v in enumerate((n, n * size, m, m * back_size)):
                        want[k] += v
                assert a.totals() == tuple(want), i
                sums = [s + w for s, w in zip(sums, want, strict=True)]
            tx_p, tx_b, rx_p, rx_b = sums
            off = stats.offload
            assert (off.entries, off.tx_packets, off.tx_bytes) == (2 * CLIENTS, tx_p, tx_b)
            assert (off.rx_packets, off.rx_bytes) == (rx_p, rx_b)
            cl = stats.clusters["peers"]
            assert (cl.tx_packets, cl.tx_bytes, cl.rx_packets, cl.rx_bytes) == (
                tx_p,
                tx_b,
                rx_p,
                rx_b,
            )
            lis, lis0 = stats.listeners["udp-listener"], before.listeners["udp-listener"]
            # wire figures: ChannelData with its 4-byte header, rx from clients, tx to them
            assert lis.rx_packets - lis0.rx_packets == tx_p
            assert lis.rx_bytes - lis0.rx_bytes == tx_b + 4 * tx_p
            assert lis.tx_packets - lis0.tx_packets == rx_p
            assert lis.tx_bytes - lis0.tx_bytes == rx_b + 4 * rx_p
