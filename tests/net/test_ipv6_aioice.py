"""Issue 11's check: aioice's TURN client over ::1 (UDP and TCP to an IPv6 listener) gets an
IPv6 relay and exchanges data with an IPv6 UDP echo peer on ::1 through it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint

from stunner_dp.testing import start_turn_server, udp_echo_peer

MESSAGES = 20
TIMEOUT = 5.0


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.errors: list[Exception] = []

    def datagram_received(self, data: bytes, addr: tuple[str, Any]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_aioice_over_ipv6_to_ipv6_peer(transport: str) -> None:
    async with start_turn_server(host="::1") as ts, udp_echo_peer("::1") as peer:
        relay, receiver = await asyncio.wait_for(
            create_turn_endpoint(
                Receiver, ts.address, ts.username, ts.password, transport=transport
            ),
            TIMEOUT,
        )
        try:
            relayed = relay.get_extra_info("sockname")
            low = ts.config["listeners"][0]["min_relay_port"]
            high = ts.config["listeners"][0]["max_relay_port"]
            assert relayed[0] == "::1"  # an IPv6-only listener gives IPv6 relays
            assert low <= relayed[1] <= high
            sent = [f"v6-{transport}-{i}".encode() for i in range(MESSAGES)]
            for payload in sent:
                relay.sendto(payload, peer)
            got = []
            for _ in sent:
                data, source = await asyncio.wait_for(receiver.queue.get(), TIMEOUT)
                assert source == peer
                got.append(data)
            assert sorted(got) == sorted(sent)
            assert receiver.errors == []
            table = ts.server.turn.allocations[f"{transport}-listener"]  # read only
            (alloc,) = table.values()
            assert alloc.client[0] == "::1"
        finally:
            relay.close()
