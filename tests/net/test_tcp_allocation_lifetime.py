"""A TURN-TCP allocation lives as long as its connection (RFC 8656 3.1), as the TLS test checks
for TURN-TLS (tests/net/test_tls.py): a client that closes (FIN) or resets (RST) its
connection leaves no allocation, its relay port is free again and nothing sent to the old
relay address reaches anyone; another client's allocation on the same listener lives on."""

from __future__ import annotations

import asyncio
import socket

import pytest
from helpers.hostile_kit import open_peer
from helpers.stream_turnclient import StreamTurnClient
from helpers.turnclient import error_code

from stunner_dp import stun
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, start_turn_server

CH = 0x4000


def port_is_free(addr: tuple[str, int]) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(addr)
        except OSError:
            return False
    return True


@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_a_tcp_allocation_ends_with_its_connection(ending: str) -> None:
    peer = await open_peer("127.0.0.1")
    try:
        async with (
            start_turn_server(protocols=("TURN-TCP",), endpoints=["127.0.0.1"]) as ts,
            StreamTurnClient(ts.address) as leaving,
            StreamTurnClient(ts.address) as staying,
        ):
            relays = {}
            for name, c in (("leaving", leaving), ("staying", staying)):
                relays[name] = await c.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
                assert error_code(await c.channel_bind(CH, peer.address)) == 0
            assert ts.server.allocation_count == 2
            assert not port_is_free(relays["leaving"])
            leaving.send_raw(stun.encode_channel_data(CH, b"before", pad=True))
            for _ in range(300):
                if peer.got:
                    break
                await asyncio.sleep(0.01)
            assert [d for d, _ in peer.got] == [b"before"]

            leaving.close() if ending == "close" else leaving.abort()
            await asyncio.wait_for(leaving.frames.closed.wait(), 3.0)
            for _ in range(300):
                if ts.server.allocation_count == 1:
                    break
                await asyncio.sleep(0.01)
            assert ts.server.allocation_count == 1
            turn = ts.server.turn
            assert turn is not None
            [alloc] = list(turn.all_allocations())
            assert alloc.client == staying.local_address
            assert port_is_free(relays["leaving"])

            # the old relay address relays nothing; the other client's still does
            peer.sendto(b"to the old relay", relays["leaving"])
            peer.sendto(b"canary", relays["staying"])
            frame = await staying.next_unsolicited(3.0)
            assert stun.parse_channel_data(frame) == (CH, b"canary")
            assert ts.server.listeners["tcp-listener"].connections_open == 1
    finally:
        if peer.transport is not None:
            peer.transport.close()
