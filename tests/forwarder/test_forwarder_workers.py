"""`stunnerd -u 2 --forwarder compiled`: each worker runs its own forwarder thread, both
workers' allocations are relayed by their threads, and the supervisor's /metrics counts every
packet once: `stunner_forwarder_*`, listener and cluster figures are the sum over the workers,
not doubled (the model: tests/offload/test_offload_workers.py).

Proof that the threads relayed all of it: the cluster figures count what Python and the
threads relayed, `stunner_forwarder_packets` only the threads'; both equal what was sent, and
what the threads handed to Python is a few STUN messages per client, not the media."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path

from helpers.hostile_kit import PeerSocket, UdpTurn, code, open_peer, relayed
from helpers.multicore import Daemon, alive, metric, wait_for_metric

from forwarder.kit import require_forwarder
from stunner_dp import stun
from stunner_dp.net.forwarder import FORWARDER_ENV
from stunner_dp.testing import free_port, make_config, relay_window

CLIENTS = 16  # source ports the kernel spreads over both workers' reuseport sockets
PACKETS = 20  # each way, per client
CH = 0x4000
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@asynccontextmanager
async def compiled_daemon(tmp: Path, peer_port: int) -> AsyncIterator[Daemon]:
    """`stunnerd -u 2 --forwarder compiled`, stopped with its workers by PID."""
    low, high = relay_window(200)
    port, mport, hport = free_port(), free_port(tcp=True, udp=False), free_port()
    admin = {
        "name": "forwarder-workers",
        "loglevel": "all:INFO",
        "metrics_endpoint": f"http://127.0.0.1:{mport}/metrics",
        "healthcheck_endpoint": f"http://127.0.0.1:{hport}",
    }
    config = make_config(
        port=port,
        protocols=("TURN-UDP",),
        min_relay_port=low,
        max_relay_port=high,
        endpoints=[f"127.0.0.1:<{peer_port}-{peer_port}>"],
        admin=admin,
    )
    path = tmp / "stunnerd.json"
    path.write_text(json.dumps(config))
    log = tmp / "stunnerd.log"
    env = {k: v for k, v in os.environ.items() if k != FORWARDER_ENV}  # the flag alone decides
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stunner_dp.cli", "-c", str(path), "-w", "-u", "2",
             "--forwarder", "compiled"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    daemon = Daemon(proc, port, mport, hport, path, log)
    workers: list[int] = []
    try:
        for _ in range(300):
            if proc.poll() is not None or await daemon.ready():
                break
            await asyncio.sleep(0.05)
        assert await daemon.ready(), log.read_text(errors="replace")
        for _ in range(100):
            workers[:] = daemon.workers()
            if len(workers) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(workers) == 2, log.read_text(errors="replace")
        yield daemon
    finally:
        workers[:] = sorted(set(workers) | set(daemon.workers()))
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in workers:
            if alive(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def figure(m: Metrics, metric_name: str, /, **labels: str) -> float:
    return m.get((metric_name, tuple(sorted(labels.items()))), 0.0)


async def until_all_arrived(peer: PeerSocket, n: int) -> None:
    for _ in range(500):
        if len(peer.got) >= n:
            return
        await asyncio.sleep(0.01)


async def test_both_workers_forward_in_their_threads_and_the_supervisor_counts_once(
    tmp_path: Path,
) -> None:
    require_forwarder()
    peer = await open_peer("127.0.0.1")
    try:
        async with compiled_daemon(tmp_path, peer.address[1]) as daemon, AsyncExitStack() as st:
            m = await wait_for_metric(
                daemon,
                lambda m: figure(m, "stunner_forwarder_active") == 2,
                "both workers run their forwarder thread",
            )
            clients: list[tuple[UdpTurn, tuple[str, int]]] = []
            for _ in range(CLIENTS):
                c = await st.enter_async_context(UdpTurn(daemon.address))
                relay = relayed(await c.allocate())
                assert code(await c.bind(CH, peer.address)) == 0
                clients.append((c, relay))
            m = await wait_for_metric(
                daemon,
                lambda m: figure(m, "stunner_forwarder_entries") == CLIENTS,
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
                lambda m: figure(m, "stunner_forwarder_packets_total", direction="rx") >= total,
                "the threads' counts reached the supervisor",
            )
            check_counted_once(before, m, total, payload)
    finally:
        if peer.transport is not None:
            peer.transport.close()


def check_counted_once(before: Metrics, after: Metrics, total: int, payload: int) -> None:
    def delta(metric_name: str, /, **labels: str) -> float:
        return figure(after, metric_name, **labels) - figure(before, metric_name, **labels)

    assert figure(after, "stunner_forwarder_active") == 2
    assert figure(after, "stunner_forwarder_entries") == CLIENTS
    assert figure(after, "stunner_forwarder_installs_total") == CLIENTS
    assert figure(after, "stunner_forwarder_install_failures_total") == 0
    assert figure(after, "stunner_forwarder_handoff_dropped_packets_total") == 0
    # from the last ChannelBind on, the media only: not one packet of it handed to Python
    assert delta("stunner_forwarder_handed_off_packets_total") == 0
    for d in ("tx", "rx"):
        # the threads relayed every packet, counted once over both workers
        assert figure(after, "stunner_forwarder_packets_total", direction=d) == total, d
        assert figure(after, "stunner_forwarder_bytes_total", direction=d) == payload, d
        # the cluster (Python's and the threads'): the same, so Python relayed none
        assert figure(after, "stunner_cluster_packets_total", name="peers", direction=d) == total
        assert figure(after, "stunner_cluster_bytes_total", name="peers", direction=d) == payload
        # the listener: each ChannelData once, with its 4-byte header
        listener = {"name": "udp-listener", "direction": d}
        assert delta("stunner_listener_packets_total", **listener) == total, d
        assert delta("stunner_listener_bytes_total", **listener) == payload + 4 * total, d
