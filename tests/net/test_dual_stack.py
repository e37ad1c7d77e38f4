"""One listener socket for both families: `address: "::"` binds with IPV6_V6ONLY off, so an
IPv4 client (127.0.0.1, seen as ::ffff:127.0.0.1) and an IPv6 client (::1) reach the same port,
allocate, relay to echo peers and are told their own address in XOR-MAPPED-ADDRESS."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers.stream_turnclient import StreamTurnClient
from helpers.turnclient import RawTurnClient, error_code, udp_transport

from stunner_dp import stun
from stunner_dp.net.sockets import bind_tcp, bind_udp
from stunner_dp.testing import (
    TurnServerHandle,
    free_port,
    relay_window,
    start_turn_server,
    udp_echo_peer,
)

ROUNDS = 5
TIMEOUT = 2.0
FAMILY_ASKED = {
    "ipv4": [],  # none asked: IPv4
    "ipv6": [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))],
}


@asynccontextmanager
async def dual_stack_server(*protocols: str) -> AsyncIterator[TurnServerHandle]:
    low, high = relay_window()
    listeners: list[dict[str, Any]] = [
        {
            "name": f"{p.removeprefix('TURN-').lower()}-listener",
            "protocol": p,
            "address": "::",
            "port": 0,  # filled in by start_turn_server's port below
            "min_relay_port": low,
            "max_relay_port": high,
            "routes": ["peers"],
        }
        for p in protocols
    ]
    port = free_port("::")
    for entry in listeners:
        entry["port"] = port
    async with start_turn_server(host="::", port=port, listeners=listeners) as srv:
        yield srv


async def _allocate(client: RawTurnClient, srv: TurnServerHandle, family: str) -> stun.Message:
    await client.challenge()
    client.login(srv.username, srv.password)
    resp = await client.request(stun.METHOD_ALLOCATE, udp_transport() + FAMILY_ASKED[family])
    assert error_code(resp) == 0, error_code(resp)
    return resp


def _mapped(resp: stun.Message) -> tuple[str, int]:
    value = resp.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    assert value is not None
    return stun.decode_xor_address(value, resp.transaction_id)


async def _relay_round_trips(client: RawTurnClient, peer: tuple[str, int]) -> int:
    assert error_code(await client.channel_bind(0x4001, peer)) == 0
    got = 0
    for i in range(ROUNDS):
        payload = f"dual{i:04d}".encode()  # 8 bytes: TCP pads ChannelData to 4
        client.send_channel_data(0x4001, payload)
        frame = await client.next_unsolicited(TIMEOUT)
        assert frame[:2] == b"\x40\x01" and frame[4:] == payload, frame
        got += 1
    return got


@pytest.mark.parametrize("relay_family", ["ipv4", "ipv6"])
async def test_udp_one_socket_serves_both_families(relay_family: str) -> None:
    peer_host = "127.0.0.1" if relay_family == "ipv4" else "::1"
    async with dual_stack_server("TURN-UDP") as srv, udp_echo_peer(peer_host) as peer:
        for client_host in ("127.0.0.1", "::1"):
            async with RawTurnClient((client_host, srv.port)) as client:
                resp = await _allocate(client, srv, relay_family)
                assert _mapped(resp) == client.local_address  # 127.0.0.1, not ::ffff:127.0.0.1
                assert await _relay_round_trips(client, peer) == ROUNDS
        assert list(srv.server.listeners) == ["udp-listener"]  # one socket served both


async def test_udp_ipv4_client_gets_data_indications() -> None:
    """A permitted peer without a channel: the Data indication goes to the mapped client."""
    async with dual_stack_server("TURN-UDP") as srv, udp_echo_peer("127.0.0.1") as peer:
        client = RawTurnClient(("127.0.0.1", srv.port))
        async with client:
            await _allocate(client, srv, "ipv4")
            assert error_code(await client.create_permission(peer)) == 0
            tid = b"\x01" * 12
            send = stun.encode_message(
                stun.METHOD_SEND,
                stun.CLASS_INDICATION,
                tid,
                [
                    (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)),
                    (stun.ATTR_DATA, b"indicated"),
                ],
            )
            client.send_raw(send)
            data = await client.next_unsolicited(TIMEOUT)
            msg = stun.parse_message(data)
            assert msg.method == stun.METHOD_DATA
            assert msg.get(stun.ATTR_DATA) == b"indicated"


async def test_tcp_one_socket_serves_both_families() -> None:
    async with dual_stack_server("TURN-TCP") as srv, udp_echo_peer("127.0.0.1") as peer:
        for client_host in ("127.0.0.1", "::1"):
            async with StreamTurnClient((client_host, srv.port)) as client:
                resp = await _allocate(client, srv, "ipv4")
                assert _mapped(resp) == client.local_address
                assert await _relay_round_trips(client, peer) == ROUNDS


@pytest.mark.parametrize("bind", [bind_udp, bind_tcp])
def test_only_the_wildcard_is_dual_stack(bind: Any) -> None:
    """IPV6_V6ONLY is off only when asked (address "::"); an IPv6 listener stays IPv6 only."""
    with bind("::", 0, reuse_port=False, dual_stack=True) as dual:
        assert dual.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    with bind("::", 0, reuse_port=False) as v6only:
        assert v6only.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


async def test_udp_burst_to_ipv4_client_leaves_in_batches() -> None:
    """Peer → client in a burst: the relay's batched send (GSO where the kernel has it) goes
    out of the dual-stack listener socket to the client's ::ffff: address."""
    burst = 32
    async with dual_stack_server("TURN-UDP") as srv, udp_echo_peer("127.0.0.1") as peer:
        client = RawTurnClient(("127.0.0.1", srv.port))
        async with client:
            await _allocate(client, srv, "ipv4")
            assert error_code(await client.channel_bind(0x4002, peer)) == 0
            sent = {f"burst{i:03d}".encode() for i in range(burst)}
            for payload in sorted(sent):
                client.send_channel_data(0x4002, payload)
            got = set()
            for _ in range(burst):
                frame = await client.next_unsolicited(TIMEOUT)
                assert frame[:2] == b"\x40\x02", frame
                got.add(frame[4:])
            assert got == sent
