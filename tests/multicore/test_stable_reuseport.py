"""A worker restart leaves the other workers' clients where they are (issue 13, item 2).

The kernel picks a socket of a SO_REUSEPORT group by a hash of the 4-tuple over the group's
sockets: a socket leaving or joining the group moves clients between workers, and a client
moved to a worker that does not hold its allocation gets 437 and loses its relay. So the
supervisor holds every worker's listener sockets and hands a restarted worker the same ones:
the group never changes. `stunnerd -u 2`, 40 UDP clients with a channel to an echo peer, one
worker SIGKILLed: every allocation of the other worker refreshes and relays after the restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest
from helpers.multicore import Daemon, metric, run_daemon, wait_for_metric, worker_pids_by_index
from helpers.tls_helpers import CertPair, cert, secure_config

from stunner_dp.client.dtls import client_context
from stunner_dp.client.turn import TurnClient, TurnError, check, error_code, relayed_address
from stunner_dp.config import parse_config
from stunner_dp.daemon.supervisor import Supervisor
from stunner_dp.testing import free_port, make_config, relay_window, udp_echo_peer

__all__ = ["cert"]  # the fixture

CLIENTS = 40
TIMEOUT = 3.0
ATTEMPTS = 3  # echoes tried per client (loopback does not lose, but be patient once or twice)


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` has open."""
    found: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def bound_inodes(table: str, port: int, *, listening: bool = False) -> set[int]:
    """The inodes of the sockets in /proc/net/`table` bound to local `port` (TCP: in LISTEN)."""
    found: set[int] = set()
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and (not listening or fields[3] == "0A"):
            found.add(int(fields[9]))
    return found


def owner_of_udp_port(port: int, inodes_by_worker: dict[str, set[int]]) -> str:
    """Which worker has the UDP socket bound to `port` (a relay socket) open."""
    inodes = bound_inodes("udp", port)
    owners = [w for w, held in inodes_by_worker.items() if inodes & held]
    assert len(owners) == 1, (port, owners)
    return owners[0]


async def relays(client: TurnClient, tag: bytes) -> bool:
    """Whether ChannelData sent now comes back from the echo peer."""
    while not client.channel_data.empty():
        client.channel_data.get_nowait()  # stale echoes of earlier rounds
    for attempt in range(ATTEMPTS):
        payload = tag + b"-%d" % attempt
        client.send_channel_data(payload)
        try:
            while True:
                _, got = await client.receive_channel_data(1.0)
                if got == payload:
                    return True
        except TimeoutError:
            continue
    return False


async def open_clients(daemon: Daemon, peer: tuple[str, int]) -> list[tuple[TurnClient, int]]:
    """CLIENTS allocations, each with a channel to `peer` that relays; with their relay ports."""
    clients: list[tuple[TurnClient, int]] = []
    for n in range(CLIENTS):  # each its own socket: a distinct source port
        client = TurnClient(daemon.address, "udp", timeout=TIMEOUT)
        await client.connect()
        resp = await client.allocate("test-user", "test-pass")
        clients.append((client, relayed_address(resp)[1]))
        check(resp, "Allocate")
        check(await client.channel_bind(peer), "ChannelBind")
        assert await relays(client, b"before-%d" % n)
    return clients


@pytest.mark.parametrize("victim", ["0", "1"])
async def test_killing_a_worker_leaves_the_other_workers_allocations_relaying(
    tmp_path: Path, victim: str
) -> None:
    async with run_daemon(tmp_path, protocols=("TURN-UDP",)) as daemon, udp_echo_peer() as peer:
        clients: list[tuple[TurnClient, int]] = []
        try:
            clients = await open_clients(daemon, peer)
            pids = worker_pids_by_index(await daemon.metrics())
            assert sorted(pids) == ["0", "1"], pids
            inodes = {w: socket_inodes(pid) for w, pid in pids.items()}
            # which worker holds each allocation: the one with its relay socket open
            survivors = [c for c, port in clients if owner_of_udp_port(port, inodes) != victim]
            assert 0 < len(survivors) < CLIENTS, "the kernel put all clients on one worker"

            os.kill(pids[victim], signal.SIGKILL)
            await wait_for_metric(
                daemon,
                lambda m: (
                    metric(m, "stunner_worker_restarts_total") == 1
                    and metric(m, "stunner_workers") == 2
                ),
                "worker restarted",
            )
            assert worker_pids_by_index(await daemon.metrics())[victim] != pids[victim]

            refreshed, relayed = 0, 0
            for n, client in enumerate(survivors):
                with suppress(TurnError):  # no answer: lost too
                    refreshed += error_code(await client.refresh())[0] == 0  # 437: lost
                relayed += await relays(client, b"after-%d" % n)
            print(  # the figure for the issue
                f"worker {victim} killed: of {len(survivors)} allocations on the other worker, "
                f"{refreshed} refreshed and {relayed} relayed after the restart"
            )
            assert (refreshed, relayed) == (len(survivors), len(survivors))
        finally:
            for client, _ in clients:
                client.close()


async def test_a_restarted_worker_gets_the_same_listener_sockets(tmp_path: Path) -> None:
    """The group of each listener port (UDP and TCP) is the same sockets after a restart, and
    the new worker has them open: no socket left the group, none joined."""
    async with run_daemon(tmp_path) as daemon:
        pids = worker_pids_by_index(await daemon.metrics())
        groups = {
            "udp": bound_inodes("udp", daemon.port),
            "tcp": bound_inodes("tcp", daemon.port, listening=True),
        }
        assert all(len(group) == 2 for group in groups.values()), groups
        os.kill(pids["0"], signal.SIGKILL)
        await wait_for_metric(
            daemon,
            lambda m: (
                metric(m, "stunner_worker_restarts_total") == 1
                and metric(m, "stunner_workers") == 2
            ),
            "worker restarted",
        )
        successor = worker_pids_by_index(await daemon.metrics())["0"]
        assert successor != pids["0"]
        assert bound_inodes("udp", daemon.port) == groups["udp"]
        assert bound_inodes("tcp", daemon.port, listening=True) == groups["tcp"]
        held = socket_inodes(successor)
        assert groups["udp"] & held and groups["tcp"] & held


async def _until(cond: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


def groups(port: int) -> tuple[set[int], set[int]]:
    """The sockets bound to `port`: UDP, and TCP in LISTEN."""
    return bound_inodes("udp", port), bound_inodes("tcp", port, listening=True)


async def test_the_held_sockets_follow_the_config() -> None:
    """Listeners moved to another port leave no socket behind on the old one; a restart after
    the move keeps the new groups; a removed listener's port is freed; so is every port once
    the supervisor stops."""
    low, high = relay_window(20)
    first, second = free_port(), free_port()
    config = make_config(port=first, min_relay_port=low, max_relay_port=high)
    sup = Supervisor(2, bind_host="127.0.0.1")
    await sup.start(parse_config(config))
    try:
        udp, tcp = groups(first)
        assert len(udp) == len(tcp) == 2, (udp, tcp)

        for listener in config["listeners"]:
            listener["port"] = second
        await sup.apply(parse_config(config))
        assert groups(first) == (set(), set())
        udp, tcp = groups(second)
        assert len(udp) == len(tcp) == 2, (udp, tcp)

        slot = sup.slots[1]
        victim = slot.pid
        os.kill(victim, signal.SIGKILL)
        await _until(lambda: sup.restarts == 1 and slot.alive, "worker 1 restarted")
        assert slot.pid != victim
        assert groups(second) == (udp, tcp)
        assert udp & socket_inodes(slot.pid) and tcp & socket_inodes(slot.pid)

        config["listeners"] = [lis for lis in config["listeners"] if lis["protocol"] == "TURN-UDP"]
        await sup.apply(parse_config(config))
        assert groups(second) == (udp, set())  # the UDP listener kept its sockets
    finally:
        await sup.stop()
    assert groups(second) == (set(), set())


async def test_tls_and_dtls_listeners_keep_their_sockets_and_serve_after_a_restart(
    cert: CertPair,
) -> None:
    """TURN-TLS (a TCP group) and TURN-DTLS (a UDP group) on one port: a restarted worker gets
    the same sockets back, and both workers serve TLS and DTLS Allocates on them."""
    low, high = relay_window(40)
    port = free_port()
    config = secure_config(
        cert, port, ("TURN-TLS", "TURN-DTLS"), min_relay_port=low, max_relay_port=high
    )
    sup = Supervisor(2, bind_host="127.0.0.1")
    await sup.start(parse_config(config))
    try:
        before = groups(port)
        assert len(before[0]) == len(before[1]) == 2, before
        slot = sup.slots[0]
        victim = slot.pid
        os.kill(victim, signal.SIGKILL)
        await _until(lambda: sup.restarts == 1 and slot.alive, "worker 0 restarted")
        assert groups(port) == before
        tls = ssl.create_default_context(cafile=str(cert.cert_path))
        dtls = client_context(cafile=cert.cert_path)
        clients = []
        try:
            for transport in ("tls", "dtls") * 8:  # spread by the kernel over both workers
                client = TurnClient(
                    ("127.0.0.1", port),
                    transport,
                    timeout=TIMEOUT,
                    ssl_context=tls,
                    dtls_context=dtls,
                )
                await client.connect()
                clients.append(client)
                check(await client.allocate("test-user", "test-pass"), f"{transport} Allocate")
            await sup.refresh()
            per_worker = {w: s.allocations for w, s in sup.stats().workers.per_worker.items()}
            assert sorted(per_worker) == ["0", "1"] and all(per_worker.values()), per_worker
        finally:
            for client in clients:
                client.close()
    finally:
        await sup.stop()


async def test_a_worker_that_drained_and_exited_leaves_the_groups() -> None:
    """While draining, a worker that got SIGTERM exits once idle and is not restarted: its
    sockets are closed, so its share of the clients goes to the workers still serving."""
    port = free_port()
    low, high = relay_window(20)
    config = make_config(port=port, min_relay_port=low, max_relay_port=high)
    sup = Supervisor(2, bind_host="127.0.0.1")
    await sup.start(parse_config(config))
    try:
        udp, tcp = groups(port)
        assert len(udp) == len(tcp) == 2, (udp, tcp)
        sup.set_draining(True)
        slot = sup.slots[0]
        process = slot.process
        assert process is not None
        os.kill(slot.pid, signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        await _until(
            lambda: all(len(group) == 1 for group in groups(port)), "its sockets left the groups"
        )
        survivor = socket_inodes(sup.slots[1].pid)
        assert groups(port) == (udp & survivor, tcp & survivor)
        assert len(udp & survivor) == len(tcp & survivor) == 1
        assert sup.restarts == 0
    finally:
        await sup.stop()
