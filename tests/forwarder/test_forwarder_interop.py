"""Real TURN clients through the compiled forwarder: aioice and coturn's turnutils_uclient
relay with zero loss with forwarder="compiled", and the C thread, not Python, carried their
ChannelData (see forwarder/kit.py for the proof: the channels' own counters stay 0 until
`stats()` folds the thread's counts in, and then `stunner_forwarder_packets` holds exactly
what was sent and echoed). What the thread hands to Python (`handed_off`) is the clients'
STUN traffic only: a few messages per client, not one per media packet. (The thread relays
nothing but ChannelData on a bound channel, so this also proves the clients used channels.)"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint
from helpers.uclient import assert_no_loss, parse_summary

from forwarder.kit import channels, compiled_server, python_relayed
from stunner_dp.testing import free_port, udp_echo_peer

MESSAGES = 300
BURST = 20  # aioice datagrams sent before waiting for their echoes
TIMEOUT = 5.0
# STUN messages a client exchanges (Allocate twice, ChannelBind, Refresh, CreatePermission,
# retransmissions): a generous bound that is still far below the media packets
STUN_PER_CLIENT = 20


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, Any]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
async def test_aioice_relays_through_the_thread(host: str) -> None:
    async with compiled_server(host) as ts, udp_echo_peer(host) as peer:
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
            [chan] = channels(ts)  # aioice bound one channel, and it is in the thread
            assert chan.number >= 0x4000
            assert python_relayed(ts) == (0, 0)  # Python's hot paths relayed none of it
            fwd = ts.server.stats().forwarder
            assert (fwd.active, fwd.entries, fwd.installs) == (1, 1, 1)
            assert (fwd.tx_packets, fwd.rx_packets) == (MESSAGES, MESSAGES)
            payload = sum(map(len, sent))
            assert (fwd.tx_bytes, fwd.rx_bytes) == (payload, payload)
            assert 0 < fwd.handed_off <= STUN_PER_CLIENT, fwd  # the STUN traffic only
            assert fwd.handoff_dropped == 0
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


@pytest.mark.interop
async def test_turnutils_uclient_relays_through_the_thread() -> None:
    clients, messages = 5, 100
    async with compiled_server() as ts, turnutils_peer() as peer_port:
        # no -s: ChannelBind and ChannelData; -c: no extra RTCP allocation
        args = ["-c", "-u", ts.username, "-w", ts.password, "-p", str(ts.port)]
        args += ["-e", "127.0.0.1", "-r", str(peer_port), "-m", str(clients)]
        args += ["-n", str(messages), "-l", "160", "-z", "5", "127.0.0.1"]
        out = await run_uclient(args)
        summary = parse_summary(out, out[-3000:])
        assert_no_loss(summary, clients * messages)
        # uclient deletes its allocations when done; each removal folded the thread's counts
        # into its channel first. The cluster counts what Python and the thread relayed, the
        # forwarder figures what the thread did: equal, so Python relayed none of it.
        stats = ts.server.stats()
        fwd, cluster = stats.forwarder, stats.clusters["peers"]
        assert fwd.installs >= clients  # a channel per client
        assert (fwd.tx_packets, fwd.rx_packets) == (summary.sent, summary.received), out[-3000:]
        assert (cluster.tx_packets, cluster.rx_packets) == (fwd.tx_packets, fwd.rx_packets)
        assert fwd.entries == 0  # the relaying allocations are gone, their entries with them
        assert 0 < fwd.handed_off <= clients * STUN_PER_CLIENT, fwd
        assert (fwd.handoff_dropped, fwd.install_failures) == (0, 0)
