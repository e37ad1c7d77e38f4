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

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers.fast_path import (
    MESSAGES,
    aioice_echoed,
    channels,
    python_relayed,
    turnutils_peer,
    uclient_without_loss,
)
from helpers.gates import require_offload

from stunner_dp.testing import TurnServerHandle, start_turn_server, udp_echo_peer

OFFLOAD = {"offload_engine": "TC", "offload_interfaces": ["lo"]}


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


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_aioice_relays_through_the_kernel(host: str) -> None:
    async with (
        offloaded_server(host) as ts,
        udp_echo_peer(host) as peer,
        aioice_echoed(ts, peer) as sent,  # zero loss, both ways
    ):
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


async def test_turnutils_uclient_relays_through_the_kernel() -> None:
    clients, messages = 5, 100
    async with offloaded_server() as ts, turnutils_peer() as peer_port:
        summary = await uclient_without_loss(ts, peer_port, clients, messages)
        # uclient deletes its allocations when done; each removal folded the kernel's counts
        # into its channel first. The cluster counts what Python and the kernel relayed, the
        # offload figures what the kernel did: equal, so Python relayed none of it.
        stats = ts.server.stats()
        off, cluster = stats.offload, stats.clusters["peers"]
        assert off.installs >= clients  # a channel per client (uclient refreshes them too)
        assert (off.tx_packets, off.rx_packets) == (summary.sent, summary.received), summary.output
        assert (cluster.tx_packets, cluster.rx_packets) == (off.tx_packets, off.rx_packets)
        assert off.entries == 0  # the relaying allocations are gone, their entries with them
