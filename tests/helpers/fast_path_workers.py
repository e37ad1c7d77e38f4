"""`stunnerd -u 2` with a fast path (the kernel offload or the compiled forwarder) in each
worker, shared by tests/offload/test_offload_workers.py and
tests/forwarder/test_forwarder_workers.py: both workers' allocations relayed by the fast path,
and the supervisor's /metrics counting every packet once (the fast path's `prefix*`, listener
and cluster figures are the sum over the workers, not doubled).

`prefix` names the fast path's metrics: "stunner_offload_" or "stunner_forwarder_"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.hostile_kit import PeerSocket, UdpTurn, code, relayed
from helpers.multicore import Daemon, metric, run_daemon, wait_for_metric
from stunner_dp import stun

CLIENTS = 16  # source ports the kernel spreads over both workers' reuseport sockets
PACKETS = 20  # each way, per client
CH = 0x4000
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def figure(m: Metrics, metric_name: str, /, **labels: str) -> float:
    return m.get((metric_name, tuple(sorted(labels.items()))), 0.0)


@asynccontextmanager
async def two_worker_daemon(
    tmp: Path,
    peer_port: int,
    *,
    name: str,
    admin: Mapping[str, Any] | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Daemon]:
    """`stunnerd -u 2` (TURN-UDP, the peer's port its cluster's only endpoint) with both
    workers up, stopped with its workers by PID."""
    async with run_daemon(
        tmp,
        2,
        ("TURN-UDP",),
        name=name,
        admin=admin,
        args=args,
        env=env,
        endpoints=[f"127.0.0.1:<{peer_port}-{peer_port}>"],
    ) as daemon:
        assert len(daemon.workers()) == 2, daemon.log.read_text(errors="replace")
        yield daemon


async def until_all_arrived(peer: PeerSocket, n: int) -> None:
    for _ in range(500):
        if len(peer.got) >= n:
            return
        await asyncio.sleep(0.01)


@dataclass
class Relayed:
    before: Metrics  # scraped with every channel installed, before the media
    after: Metrics  # scraped once the fast path's counts reached the supervisor
    total: int  # packets each way
    payload: int  # payload bytes each way


async def relay_over_both_workers(
    daemon: Daemon, peer: PeerSocket, prefix: str, *, loaded: str, counted: str
) -> Relayed:
    """CLIENTS clients, spread over both workers, each relays PACKETS each way with zero loss
    once `prefix`active is 2 (`loaded`) and `prefix`entries is CLIENTS; the last scrape waits
    for the rx count to reach the supervisor (`counted`)."""
    async with AsyncExitStack() as st:
        m = await wait_for_metric(daemon, lambda m: figure(m, f"{prefix}active") == 2, loaded)
        clients: list[tuple[UdpTurn, tuple[str, int]]] = []
        for _ in range(CLIENTS):
            c = await st.enter_async_context(UdpTurn(daemon.address))
            relay = relayed(await c.allocate())
            assert code(await c.bind(CH, peer.address)) == 0
            clients.append((c, relay))
        m = await wait_for_metric(
            daemon,
            lambda m: figure(m, f"{prefix}entries") == CLIENTS,
            "every client's channel installed",
        )
        per_worker = {
            w: metric(m, "stunner_worker_allocations_active", worker=w) for w in ("0", "1")
        }
        assert sum(per_worker.values()) == CLIENTS
        assert all(v > 0 for v in per_worker.values()), f"one worker took all: {per_worker}"
        before = m

        payload = 0
        for n, (c, _) in enumerate(clients):
            for i in range(PACKETS):
                data = b"c%02d-%02d" % (n, i)
                payload += len(data)
                c.send(stun.encode_channel_data(CH, data))
            # one client's burst at a time: the peer's receive buffer holds ~250 datagrams
            await until_all_arrived(peer, (n + 1) * PACKETS)
        assert len(peer.got) == CLIENTS * PACKETS  # zero loss to the peer
        for n, (_, relay) in enumerate(clients):
            for i in range(PACKETS):
                peer.sendto(b"p%02d-%02d" % (n, i), relay)
        for n, (c, _) in enumerate(clients):
            back = [g for g in await c.received(0.3) if g[:2] == CH.to_bytes(2, "big")]
            assert len(back) == PACKETS, f"client {n}: {len(back)} of {PACKETS} back"

        total = CLIENTS * PACKETS
        m = await wait_for_metric(
            daemon,
            lambda m: figure(m, f"{prefix}packets_total", direction="rx") >= total,
            counted,
        )
        return Relayed(before, m, total, payload)


def delta(r: Relayed, metric_name: str, /, **labels: str) -> float:
    return figure(r.after, metric_name, **labels) - figure(r.before, metric_name, **labels)


def check_counted_once(r: Relayed, prefix: str) -> None:
    """The fast path relayed every packet, counted once over both workers; the cluster (Python's
    and the fast path's) the same, so Python relayed none; the listener each ChannelData once."""
    after, total, payload = r.after, r.total, r.payload
    assert figure(after, f"{prefix}active") == 2
    assert figure(after, f"{prefix}entries") == CLIENTS
    for d in ("tx", "rx"):
        assert figure(after, f"{prefix}packets_total", direction=d) == total, d
        assert figure(after, f"{prefix}bytes_total", direction=d) == payload, d
        assert figure(after, "stunner_cluster_packets_total", name="peers", direction=d) == total
        assert figure(after, "stunner_cluster_bytes_total", name="peers", direction=d) == payload
        # the listener: each ChannelData once, with its 4-byte header
        listener = {"name": "udp-listener", "direction": d}
        assert delta(r, "stunner_listener_packets_total", **listener) == total, d
        assert delta(r, "stunner_listener_bytes_total", **listener) == payload + 4 * total, d
