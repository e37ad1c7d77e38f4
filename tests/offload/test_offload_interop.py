"""Real TURN clients through the kernel fast path on lo (issue 10): aioice and coturn's
turnutils_uclient relay with zero loss while `admin.offload_engine: TC` is on, and the kernel,
not the server's sockets, carried their ChannelData.

Proof that the kernel relayed: a channel's own counters are bumped by the Python hot paths
only, until `Server.stats()` folds the kernel's counts in. So with every packet delivered and
those counters still 0 before the first `stats()`, no packet went through Python; after it,
`stunner_offload_*` holds exactly what was sent and echoed. (The kernel takes nothing but
ChannelData on a bound channel, so this also proves the clients used channels, not Send
indications: aioice binds a channel for each peer before its first datagram.)"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint
from conftest import require_offload
from helpers.uclient import assert_no_loss, parse_summary

from stunner_dp.testing import TurnServerHandle, free_port, start_turn_server, udp_echo_peer
from stunner_dp.turn.allocation import Channel

OFFLOAD = {"offload_engine": "TC", "offload_interfaces": ["lo"]}
MESSAGES = 300
BURST = 20  # aioice datagrams sent before waiting for their echoes
TIMEOUT = 5.0


def admin() -> dict[str, Any]:
    return {
        "name": "offload-interop",
        "loglevel": "all:INFO",
        "metrics_endpoint": "",
        "healthcheck_endpoint": "",
        **OFFLOAD,
    }


@asynccontextmanager
async def offloaded_server(host: str = "127.0.0.1") -> AsyncIterator[TurnServerHandle]:
    require_offload()
    async with start_turn_server(host=host, protocols=("TURN-UDP",), admin=admin()) as ts:
        assert ts.server.offload.controller is not None, ts.server.offload.reason
        yield ts


def channels(ts: TurnServerHandle) -> list[Channel]:
    turn = ts.server.turn
    assert turn is not None
    return [ch for alloc in turn.all_allocations() for ch in alloc.bindings.values()]


def python_relayed(ts: TurnServerHandle) -> tuple[int, int]:
    """(to peers, to clients) counted by the Python hot paths (before any stats() fold)."""
    chans = channels(ts)
    return sum(c.out_packets for c in chans), sum(c.in_packets for c in chans)


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, Any]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_aioice_relays_through_the_kernel(host: str) -> None:
    async with offloaded_server(host) as ts, udp_echo_peer(host) as peer:
        relay, receiver = await asyncio.wait_for(
            create_turn_endpoint(Receiver, ts.address, ts.username, ts.password), TIMEOUT
        )
        try:
            sent = [b"aioice-%d" % i for i in range(MESSAGES)]
            got: list[bytes] = []
            for start in range(0, MESSAGES, BURST):
                for payload in sent[start : start + BURST]:
                    relay.sendto(payload, peer)
                for _ in sent[start : start + BURST]:
                    data, source = await asyncio.wait_for(receiver.queue.get(), TIMEOUT)
                    assert source == peer
                    got.append(data)
            assert sorted(got) == sorted(sent)  # zero loss, both ways
            # aioice bound one channel (ChannelBind) and its entry is in the kernel
            [chan] = channels(ts)
            assert chan.number >= 0x4000
            # the server's sockets saw none of the ChannelData nor the echoes
            assert python_relayed(ts) == (0, 0)
            off = ts.server.stats().offload
            assert (off.entries, off.tx_packets, off.rx_packets) == (1, MESSAGES, MESSAGES)
            payload = sum(map(len, sent))
            assert (off.tx_bytes, off.rx_bytes) == (payload, payload)
            assert python_relayed(ts) == (MESSAGES, MESSAGES)  # folded in by stats()
            cluster = ts.server.stats().clusters["peers"]
            assert (cluster.tx_packets, cluster.rx_packets) == (MESSAGES, MESSAGES)
        finally:
            relay.close()


@asynccontextmanager
async def turnutils_peer() -> AsyncIterator[int]:
    """coturn's UDP echo server on 127.0.0.1, stopped by its PID."""
    if shutil.which("turnutils_peer") is None or shutil.which("turnutils_uclient") is None:
        pytest.skip("coturn's turnutils_uclient/turnutils_peer are not installed (apt-get coturn)")
    port = free_port(tcp=False)
    proc = await asyncio.create_subprocess_exec(
        "turnutils_peer", "-L", "127.0.0.1", "-p", str(port),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.sleep(0.3)
        assert proc.returncode is None, "turnutils_peer exited at once"
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def run_uclient(args: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        "turnutils_uclient", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace")


async def test_turnutils_uclient_relays_through_the_kernel() -> None:
    clients, messages = 5, 100
    async with offloaded_server() as ts, turnutils_peer() as peer_port:
        # no -s: ChannelBind and ChannelData; -c: no extra RTCP allocation
        args = ["-c", "-u", ts.username, "-w", ts.password, "-p", str(ts.port)]
        args += ["-e", "127.0.0.1", "-r", str(peer_port), "-m", str(clients)]
        args += ["-n", str(messages), "-l", "160", "-z", "5", "127.0.0.1"]
        out = await run_uclient(args)
        summary = parse_summary(out, out[-3000:])
        total = clients * messages
        assert_no_loss(summary, total)
        # uclient deletes its allocations when done; each removal folded the kernel's counts
        # into its channel first. The cluster counts what Python and the kernel relayed, the
        # offload figures what the kernel did: equal, so Python relayed none of it.
        stats = ts.server.stats()
        off, cluster = stats.offload, stats.clusters["peers"]
        assert off.installs >= clients  # a channel per client (uclient refreshes them too)
        assert (off.tx_packets, off.rx_packets) == (summary.sent, summary.received), out[-3000:]
        assert (cluster.tx_packets, cluster.rx_packets) == (off.tx_packets, off.rx_packets)
        assert off.entries == 0  # the relaying allocations are gone, their entries with them
