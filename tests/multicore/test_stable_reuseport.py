"""A worker restart leaves the other workers' clients where they are (issue 13, item 2).

The kernel picks a socket of a SO_REUSEPORT group by a hash of the 4-tuple over the group's
sockets: a socket leaving or joining the group moves clients between workers, and a client
moved to a worker that does not hold its allocation gets 437 and loses its relay. So the
supervisor holds every worker's listener sockets and hands a restarted worker the same ones:
the group never changes. `stunnerd -u 2`, 40 UDP clients with a channel to an echo peer, one
worker SIGKILLed: every allocation of the other worker refreshes and relays after the restart.
"""

from __future__ import annotations

import os
import signal
from contextlib import suppress
from pathlib import Path

import pytest
from helpers.multicore import Daemon, metric, run_daemon, wait_for_metric, worker_pids_by_index

from stunner_dp.client.turn import TurnClient, TurnError, check, error_code, relayed_address
from stunner_dp.testing import udp_echo_peer

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
