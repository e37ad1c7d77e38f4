"""Real TURN clients through the compiled forwarder: aioice and coturn's turnutils_uclient
relay with zero loss with forwarder="compiled", and the C thread, not Python, carried their
ChannelData (see forwarder/kit.py for the proof: the channels' own counters stay 0 until
`stats()` folds the thread's counts in, and then `stunner_forwarder_packets` holds exactly
what was sent and echoed). What the thread hands to Python (`handed_off`) is the clients'
STUN traffic only: a few messages per client, not one per media packet. (The thread relays
nothing but ChannelData on a bound channel, so this also proves the clients used channels.)"""

from __future__ import annotations

import pytest
from helpers.fast_path import (
    MESSAGES,
    aioice_echoed,
    channels,
    python_relayed,
    turnutils_peer,
    uclient_without_loss,
)

from forwarder.kit import compiled_server
from stunner_dp.testing import udp_echo_peer

# STUN messages a client exchanges (Allocate twice, ChannelBind, Refresh, CreatePermission,
# retransmissions): a generous bound that is still far below the media packets
STUN_PER_CLIENT = 20


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
async def test_aioice_relays_through_the_thread(host: str) -> None:
    async with (
        compiled_server(host) as ts,
        udp_echo_peer(host) as peer,
        aioice_echoed(ts, peer) as sent,  # zero loss, both ways
    ):
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


@pytest.mark.interop
async def test_turnutils_uclient_relays_through_the_thread() -> None:
    clients, messages = 5, 100
    async with compiled_server() as ts, turnutils_peer() as peer_port:
        summary = await uclient_without_loss(ts, peer_port, clients, messages)
        # uclient deletes its allocations when done; each removal folded the thread's counts
        # into its channel first. The cluster counts what Python and the thread relayed, the
        # forwarder figures what the thread did: equal, so Python relayed none of it.
        stats = ts.server.stats()
        fwd, cluster = stats.forwarder, stats.clusters["peers"]
        assert fwd.installs >= clients  # a channel per client
        assert (fwd.tx_packets, fwd.rx_packets) == (summary.sent, summary.received), summary.output
        assert (cluster.tx_packets, cluster.rx_packets) == (fwd.tx_packets, fwd.rx_packets)
        assert fwd.entries == 0  # the relaying allocations are gone, their entries with them
        assert 0 < fwd.handed_off <= clients * STUN_PER_CLIENT, fwd
        assert (fwd.handoff_dropped, fwd.install_failures) == (0, 0)
