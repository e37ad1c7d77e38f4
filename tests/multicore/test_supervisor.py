"""Multi-core: `stunnerd -u 2` runs a supervisor and two SO_REUSEPORT workers. Twenty aioice
clients allocate and relay; a worker killed with SIGKILL is restarted, new allocations
succeed, and /metrics sums the workers exactly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from aioice.turn import create_turn_endpoint
from helpers.multicore import Daemon, alive, metric, run_daemon, wait_for_metric

from stunner_dp.client.turn import TurnClient, error_code
from stunner_dp.testing import udp_echo_peer

CLIENTS = 20
PACKETS = 5  # per client, each echoed
TIMEOUT = 5.0


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, Any]) -> None:
        self.queue.put_nowait(data)


async def open_client(daemon: Daemon) -> tuple[Any, Receiver]:
    relay, receiver = await asyncio.wait_for(
        create_turn_endpoint(Receiver, daemon.address, "test-user", "test-pass"), TIMEOUT
    )
    return relay, receiver


async def relay_through(relay: Any, receiver: Receiver, peer: tuple[str, int], tag: str) -> None:
    for i in range(PACKETS):
        payload = f"{tag}-{i}".encode()
        relay.sendto(payload, peer)
        assert await asyncio.wait_for(receiver.queue.get(), TIMEOUT) == payload


async def test_two_workers_restart_and_sum(tmp_path: Path) -> None:
    async with run_daemon(tmp_path) as daemon, udp_echo_peer() as peer:
        pids = daemon.workers()
        assert len(pids) == 2, daemon.log.read_text()
        clients = []
        try:
            for n in range(CLIENTS):
                relay, receiver = await open_client(daemon)
                clients.append(relay)
                await relay_through(relay, receiver, peer, f"c{n}")

            for _ in range(6):  # refused credentials, counted by whichever worker got them
                async with TurnClient(daemon.address, "udp", timeout=TIMEOUT) as bad:
                    assert error_code(await bad.allocate("test-user", "wrong"))[0] == 401

            m = await daemon.metrics()
            assert metric(m, "stunner_auth_failures_total") == 6
            assert metric(m, "stunner_workers") == 2
            assert metric(m, "stunner_allocations_active") == CLIENTS
            per_worker = {
                w: metric(m, "stunner_worker_allocations_active", worker=w) for w in ("0", "1")
            }
            assert sum(per_worker.values()) == CLIENTS
            # the kernel spread the clients over both workers, so the figures are real sums
            assert all(v > 0 for v in per_worker.values()), per_worker
            assert metric(m, "stunner_listener_connections_total", name="udp-listener") == CLIENTS
            assert metric(m, "stunner_connections_total") == CLIENTS
            for direction in ("rx", "tx"):
                assert (
                    metric(m, "stunner_cluster_packets_total", name="peers", direction=direction)
                    == CLIENTS * PACKETS
                )
            payload_bytes = sum(len(f"c{n}-{i}") for n in range(CLIENTS) for i in range(PACKETS))
            assert metric(m, "stunner_cluster_bytes_total", name="peers", direction="tx") == (
                payload_bytes
            )
            worker_of_pid = {
                int(labels[0][1]): labels[1][1]
                for (name, labels), _ in m.items()
                if name == "stunner_worker_info"
            }
            assert sorted(worker_of_pid) == sorted(pids)

            victim = pids[0]
            lost = per_worker[worker_of_pid[victim]]
            os.kill(victim, signal.SIGKILL)
            m = await wait_for_metric(
                daemon,
                lambda m: (
                    metric(m, "stunner_worker_restarts_total") == 1
                    and metric(m, "stunner_workers") == 2
                ),
                "worker restarted",
            )
            new_pids = daemon.workers()
            assert victim not in new_pids and len(new_pids) == 2
            # the survivor's allocations are still counted, the dead worker's are gone ...
            assert metric(m, "stunner_allocations_active") == CLIENTS - lost
            # ... and counters keep what the dead worker had reported (they never go down)
            assert (
                metric(m, "stunner_cluster_packets_total", name="peers", direction="tx")
                == CLIENTS * PACKETS
            )
            assert metric(m, "stunner_connections_total") == CLIENTS
            assert metric(m, "stunner_auth_failures_total") == 6
            assert "worker died" in daemon.log.read_text()

            # new allocations succeed (wherever the kernel puts them)
            for n in range(6):
                relay, receiver = await open_client(daemon)
                clients.append(relay)
                await relay_through(relay, receiver, peer, f"new{n}")
            m = await daemon.metrics()
            assert metric(m, "stunner_allocations_active") == CLIENTS - lost + 6
            assert metric(m, "stunner_connections_total") == CLIENTS + 6
        finally:
            for relay in clients:
                relay.close()


async def test_reconfiguration_reaches_every_worker_and_sigterm_drains(tmp_path: Path) -> None:
    """A rewritten file (new password) is applied in both workers: several new clients, spread
    by the kernel, all authenticate with it. SIGTERM then drains and exits 0, workers gone."""
    async with run_daemon(tmp_path) as daemon, udp_echo_peer() as peer:
        pids = daemon.workers()
        config = json.loads(daemon.config_path.read_text())
        config["auth"]["credentials"]["password"] = "rotated-pass"
        daemon.config_path.write_text(json.dumps(config))
        for _ in range(100):
            if "config applied" in daemon.log.read_text():
                break
            await asyncio.sleep(0.1)
        relays = []
        try:
            for n in range(16):  # all on one worker: odds 2 in 65536
                relay, receiver = await asyncio.wait_for(
                    create_turn_endpoint(Receiver, daemon.address, "test-user", "rotated-pass"),
                    TIMEOUT,
                )
                relays.append(relay)
                await relay_through(relay, receiver, peer, f"r{n}")
            m = await daemon.metrics()
            assert all(
                metric(m, "stunner_worker_allocations_active", worker=w) > 0 for w in ("0", "1")
            ), "the kernel put all 16 clients on one worker"
        finally:
            for relay in relays:
                relay.close()
        await asyncio.sleep(0.2)  # the closes (Refresh 0) reach the server
        daemon.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while daemon.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert daemon.process.returncode == 0, daemon.log.read_text()
        for _ in range(50):
            if not any(alive(p) for p in pids):
                break
            await asyncio.sleep(0.1)
        assert not any(alive(p) for p in pids)
