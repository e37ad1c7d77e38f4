"""Issue 11's check: a dual allocation (RFC 8656 ADDITIONAL-ADDRESS-FAMILY) with a client of our
own over real sockets: one Allocate, two XOR-RELAYED-ADDRESS (IPv4 first), a permission and a
channel per family, each peer reached from the relay of its family; Refresh with LIFETIME 0
and REQUESTED-ADDRESS-FAMILY IPv6 drops the IPv6 relay only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from helpers.turnclient import RawTurnClient, error_code, udp_transport

from stunner_dp import stun
from stunner_dp.testing import free_port, relay_window, start_turn_server

TIMEOUT = 2.0
ROUNDS = 5
DUAL = [(stun.ATTR_ADDITIONAL_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]
V6 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]


class _Echo(asyncio.DatagramProtocol):
    """Echoes every datagram and remembers where each came from (the relay of its family)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sources: set[tuple[str, int]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, Any]) -> None:
        self.sources.add((str(addr[0]), int(addr[1])))
        assert self.transport is not None
        self.transport.sendto(data, addr)


@asynccontextmanager
async def echo_peer(host: str) -> AsyncIterator[tuple[tuple[str, int], _Echo]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Echo, local_addr=(host, 0))
    try:
        name = transport.get_extra_info("sockname")
        yield (str(name[0]), int(name[1])), proto
    finally:
        transport.close()


async def _round_trips(client: RawTurnClient, channel: int, tag: str) -> int:
    got = 0
    for i in range(ROUNDS):
        payload = f"{tag}{i:03d}".encode()
        client.send_channel_data(channel, payload)
        frame = await client.next_unsolicited(TIMEOUT)
        assert frame[:2] == channel.to_bytes(2, "big") and frame[4:] == payload, frame
        got += 1
    return got


@pytest.mark.parametrize(("address", "additional"), [("127.0.0.1", "::1"), ("::1", "127.0.0.1")])
async def test_dual_allocation_relays_to_both_families(address: str, additional: str) -> None:
    port = free_port(address)
    low, high = relay_window()
    listener = {
        "name": "udp-listener",
        "protocol": "TURN-UDP",
        "address": address,
        "additional_address": additional,
        "port": port,
        "min_relay_port": low,
        "max_relay_port": high,
        "routes": ["peers"],
    }
    async with (
        start_turn_server(host=address, port=port, listeners=[listener]) as srv,
        echo_peer("127.0.0.1") as (peer4, echo4),
        echo_peer("::1") as (peer6, echo6),
    ):
        client = RawTurnClient((address, port))
        async with client:
            await client.challenge()
            client.login(srv.username, srv.password)
            resp = await client.request(stun.METHOD_ALLOCATE, udp_transport() + DUAL)
            assert error_code(resp) == 0, error_code(resp)
            assert resp.get(stun.ATTR_ADDRESS_ERROR_CODE) is None  # both families allocated
            relay4, relay6 = (
                stun.decode_xor_address(v, resp.transaction_id)
                for v in resp.get_all(stun.ATTR_XOR_RELAYED_ADDRESS)
            )
            assert relay4[0] == "127.0.0.1" and relay6[0] == "::1"
            assert low <= relay4[1] <= high and low <= relay6[1] <= high

            for peer in (peer4, peer6):
                assert error_code(await client.create_permission(peer)) == 0
            assert error_code(await client.channel_bind(0x4001, peer4)) == 0
            assert error_code(await client.channel_bind(0x4002, peer6)) == 0
            assert await _round_trips(client, 0x4001, "four") == ROUNDS
            assert await _round_trips(client, 0x4002, "six") == ROUNDS
            # each peer saw only the relay of its own family
            assert echo4.sources == {relay4}
            assert echo6.sources == {relay6}

            zero = [(stun.ATTR_LIFETIME, stun.encode_u32(0))]
            assert error_code(await client.request(stun.METHOD_REFRESH, zero + V6)) == 0
            # the IPv6 relay is gone: an IPv6 peer is now 443, the IPv4 side still relays
            assert error_code(await client.create_permission(peer6)) == 443
            assert await _round_trips(client, 0x4001, "more") == ROUNDS
            table = srv.server.turn.allocations["udp-listener"]  # read only
            (alloc,) = table.values()
            assert [r.address[0] for r in alloc.relays] == ["127.0.0.1"]
