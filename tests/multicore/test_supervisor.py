"""Multi-core: `stunnerd -u 2` runs a supervisor and two SO_REUSEPORT workers. Twenty aioice
clients allocate and relay; a worker killed with SIGKILL is restarted, new allocations
succeed, and /metrics sums the workers exactly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aioice.turn import create_turn_endpoint
from prometheus_client.parser import text_string_to_metric_families

from stunner_dp.client.turn import TurnClient, error_code
from stunner_dp.testing import free_port, make_config, relay_window, udp_echo_peer

CLIENTS = 20
PACKETS = 5  # per client, each echoed
TIMEOUT = 5.0


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    health_port: int
    config_path: Path
    log: Path

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r,
        ):
            assert r.status == 200
            text = await r.text()
        return {
            (x.name, tuple(sorted(x.labels.items()))): x.value
            for f in text_string_to_metric_families(text)
            for x in f.samples
        }

    async def ready(self) -> bool:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{self.health_port}/ready") as r,
            ):
                return r.status == 200
        except aiohttp.ClientError:
            return False


def metric(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, /, **kw: str
) -> float:
    return m[(name, tuple(sorted(kw.items())))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of a dead supervisor is gone for our purposes
    with suppress(FileNotFoundError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


@contextmanager
def _stopped_by_pid(process: subprocess.Popen[bytes], workers: list[int]) -> Iterator[None]:
    try:
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for pid in workers:
            with suppress(ProcessLookupError):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


@asynccontextmanager
async def run_daemon(tmp_path: Path, workers: int = 2) -> AsyncIterator[Daemon]:
    low, high = relay_window(200)
    for _attempt in range(3):
        port, mport, hport = free_port(), free_port(tcp=True, udp=False), free_port()
        config = make_config(
            port=port,
            min_relay_port=low,
            max_relay_port=high,
            admin={
                "name": "multicore-test",
                "loglevel": "all:INFO",
                "metrics_endpoint": f"http://127.0.0.1:{mport}/metrics",
                "healthcheck_endpoint": f"http://127.0.0.1:{hport}",
            },
        )
        path = tmp_path / "stunnerd.json"
        path.write_text(json.dumps(config))
        log = tmp_path / "stunnerd.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "stunner_dp.cli", "-c", str(path), "-w", "-u", str(workers)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        daemon = Daemon(process, port, mport, hport, path, log)
        seen: list[int] = []
        with _stopped_by_pid(process, seen):
            for _ in range(200):
                if process.poll() is not None or await daemon.ready():
                    break
                await asyncio.sleep(0.05)
            if process.poll() is not None:
                continue  # lost a port race: try other ports
            assert await daemon.ready(), log.read_text()
            for _ in range(100):
                seen[:] = daemon.workers()
                if len(seen) == workers:
                    break
                await asyncio.sleep(0.05)
            yield daemon
            seen[:] = sorted(set(seen) | set(daemon.workers()))
            return
    raise AssertionError("stunnerd did not start:\n" + log.read_text())


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


async def wait_for_metric(daemon: Daemon, ok: Any, what: str) -> dict[Any, float]:
    m: dict[Any, float] = {}
    for _ in range(150):
        m = await daemon.metrics()
        if ok(m):
            return m
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: never true; last scrape {m}")


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
            if not any(_alive(p) for p in pids):
                break
            await asyncio.sleep(0.1)
        assert not any(_alive(p) for p in pids)
