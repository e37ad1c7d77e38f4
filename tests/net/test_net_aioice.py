"""Check 3: aioice's TURN client allocates over UDP and TCP, static and ephemeral credentials,
and exchanges data with a UDP echo peer through the relay: on 127.0.0.1, and over ::1 to an
IPv6 listener and an IPv6 peer (issue 11: an IPv6-only listener gives IPv6 relays)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint

from stunner_dp.testing import ephemeral_credentials, start_turn_server, udp_echo_peer

SECRET = "aioice-test-secret"
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


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("auth_type", ["static", "ephemeral"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_aioice_relays_to_echo_peer(transport: str, auth_type: str, host: str) -> None:
    overrides: dict[str, Any] = {"auth_type": auth_type, "secret": SECRET, "host": host}
    async with start_turn_server(**overrides) as ts, udp_echo_peer(host) as peer:
        if auth_type == "ephemeral":
            username, password = ephemeral_credentials(SECRET, "alice")
        else:
            username, password = ts.username, ts.password
        relay, receiver = await asyncio.wait_for(
            create_turn_endpoint(Receiver, ts.address, username, password, transport=transport),
            TIMEOUT,
        )
        try:
            relayed = relay.get_extra_info("sockname")
            low = ts.config["listeners"][0]["min_relay_port"]
            high = ts.config["listeners"][0]["max_relay_port"]
            assert relayed[0] == host  # the listener's family
            assert low <= relayed[1] <= high

            listener = f"{transport}-listener"
            allocations = ts.server.turn.allocations[listener]
            assert len(allocations) == 1
            (alloc,) = allocations.values()
            assert alloc.username == username
            assert alloc.client[0] == host

            sent = [f"{host}-{transport}-{auth_type}-{i}".encode() for i in range(MESSAGES)]
            for payload in sent:
                relay.sendto(payload, peer)
            got = []
            for _ in sent:
                data, source = await asyncio.wait_for(receiver.queue.get(), TIMEOUT)
                assert source == peer
                got.append(data)
            # UDP on loopback keeps order within one socket pair, but compare as sets anyway
            assert sorted(got) == sorted(sent)
            assert receiver.errors == []
        finally:
            relay.close()
        # closing deletes the allocation (Refresh with LIFETIME 0)
        for _ in range(50):
            if not ts.server.turn.allocations[listener]:
                break
            await asyncio.sleep(0.05)
        assert ts.server.turn.allocations[listener] == {}


async def test_fixture_serves_aioice(turn_server: Any) -> None:
    """The pytest plugin's fixture, used the way a WebRTC developer would."""
    async with udp_echo_peer() as peer:
        relay, receiver = await asyncio.wait_for(
            create_turn_endpoint(
                Receiver, turn_server.address, turn_server.username, turn_server.password
            ),
            TIMEOUT,
        )
        try:
            relay.sendto(b"ping", peer)
            data, source = await asyncio.wait_for(receiver.queue.get(), TIMEOUT)
            assert (data, source) == (b"ping", peer)
        finally:
            relay.close()
    assert turn_server.turn_url("udp") == f"turn:127.0.0.1:{turn_server.port}?transport=udp"
