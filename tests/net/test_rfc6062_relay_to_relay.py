"""RFC 6062 between two TCP allocations of one server (what `turnutils_uclient -T` does), and the
own-address rule around it (issue 13.10): a Connect may reach the relayed transport address of
another live TCP allocation, and its peer connection leaves from the Connect's own relayed
transport address (RFC 6062 5.2), so the other side's ConnectionAttempt names a relay it
permitted; every other own address (listener port, a UDP relay, an unused relay port, the
allocation's own relay) stays 403, and a UDP allocation still cannot reach a TCP relay. Two
servers (as two `-u N` workers) never share a TCP relay port, though the listening socket now
sets SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import os
from contextlib import AbstractAsyncContextManager
from typing import Any

from helpers.tcp_relay_client import (
    TcpRelayClient,
    bind_data_connection,
    connection_id,
    tcp_echo_peer,
    tcp_transport,
)
from helpers.turnclient import RawTurnClient, error_code

from stunner_dp import stun
from stunner_dp.testing import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    TurnServerHandle,
    free_port,
    relay_window,
    start_turn_server,
)

WAIT = 5.0


def tcp_server(**overrides: Any) -> AbstractAsyncContextManager[TurnServerHandle]:
    return start_turn_server(
        protocols=("TURN-UDP", "TURN-TCP"), endpoints=["127.0.0.1"], **overrides
    )


async def test_two_tcp_allocations_connect_through_their_relays() -> None:
    async with (
        tcp_server() as ts,
        TcpRelayClient(ts.address) as alice,
        TcpRelayClient(ts.address) as bob,
    ):
        relay_a = await alice.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        relay_b = await bob.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        # bob lets alice's relay in (our own address and a relay port: 403 before)
        assert error_code(await bob.create_permission(relay_a)) == 0
        cid_a = connection_id(await alice.connect_peer(relay_b))
        cid_b, announced = await bob.next_attempt(WAIT)
        # the connection came from alice's relayed transport address, not a kernel port
        assert announced == relay_a
        data_a, resp_a = await bind_data_connection(alice, cid_a)
        data_b, resp_b = await bind_data_connection(bob, cid_b)
        assert (error_code(resp_a), error_code(resp_b)) == (0, 0)
        try:
            for size in (1, 1400, 65536, 300_000):
                a_to_b, b_to_a = os.urandom(size), os.urandom(size)
                data_a.writer.write(a_to_b)
                data_b.writer.write(b_to_a)
                assert await data_b.read_exactly(size) == a_to_b, size
                assert await data_a.read_exactly(size) == b_to_a, size
        finally:
            data_a.close()
            data_b.close()


async def test_a_connect_leaves_from_the_relayed_transport_address() -> None:
    async with tcp_echo_peer() as peer, tcp_server() as ts, TcpRelayClient(ts.address) as c:
        relay = await c.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        assert error_code(await c.create_permission(peer.address)) == 0
        connection_id(await c.connect_peer(peer.address))
        assert peer.accepted == [relay]


async def test_every_other_own_address_stays_forbidden() -> None:
    async with (
        tcp_server() as ts,
        TcpRelayClient(ts.address) as tcp_client,
        RawTurnClient(ts.address) as udp_client,
    ):
        relay = await tcp_client.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        udp_relay = await udp_client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        low, high = (
            ts.config["listeners"][0]["min_relay_port"],
            ts.config["listeners"][0]["max_relay_port"],
        )
        unused = next(p for p in range(low, high + 1) if p not in (relay[1], udp_relay[1]))
        listener = ("127.0.0.1", ts.address[1])
        for peer in (listener, ("127.0.0.1", udp_relay[1]), ("127.0.0.1", unused), relay):
            assert error_code(await tcp_client.connect_peer(peer)) == 403, peer
        # the listener port is no peer for a TCP allocation's permission either
        assert error_code(await tcp_client.create_permission(listener)) == 403
        # a UDP allocation keeps the rule exactly: a TCP relay is our own address
        assert error_code(await udp_client.create_permission(relay)) == 403
        assert error_code(await udp_client.create_permission(("127.0.0.1", unused))) == 403


async def test_a_connect_to_a_relay_that_ended_is_forbidden() -> None:
    async with tcp_server() as ts, TcpRelayClient(ts.address) as alice:
        await alice.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        async with TcpRelayClient(ts.address) as bob:
            relay_b = await bob.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        for _ in range(300):  # bob's allocation ends with its control connection
            if ts.server.allocation_count == 1:
                break
            await asyncio.sleep(0.01)
        assert ts.server.allocation_count == 1
        assert error_code(await alice.connect_peer(relay_b)) == 403


async def test_two_servers_never_share_a_tcp_relay_port() -> None:
    """Like two `-u N` workers on one relay range: the second cannot listen beside the first."""
    low, _ = relay_window(1)
    one_port = {"min_relay_port": low, "max_relay_port": low}
    async with tcp_server(**one_port) as first, tcp_server(**one_port) as second:
        async with TcpRelayClient(first.address) as a:
            assert (await a.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD))[1] == low
            async with TcpRelayClient(second.address) as b:
                await b.challenge()
                b.login(DEFAULT_USERNAME, DEFAULT_PASSWORD)
                resp = await b.request(stun.METHOD_ALLOCATE, list(tcp_transport()))
                assert error_code(resp) == 508
        # the first one's relay closed: its claim went with it
        async with TcpRelayClient(second.address) as b:
            assert (await b.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD))[1] == low


async def test_the_metrics_and_health_ports_are_no_peers_for_a_tcp_allocation() -> None:
    """Relay ports are allowed TCP peers now, so the daemon's own HTTP ports must be named:
    they listen on every address of the pod, and a Connect there would read /metrics or
    /status through our relay (before: the server tried, and answered 447 for a closed port)."""
    metrics_port, health_port = free_port(), free_port()
    admin = {
        "name": "own-http",
        "loglevel": "all:INFO",
        "metrics_endpoint": f"http://:{metrics_port}/metrics",
        "healthcheck_endpoint": f"http://0.0.0.0:{health_port}",
    }
    async with tcp_server(admin=admin) as ts, TcpRelayClient(ts.address) as client:
        await client.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        for port in (metrics_port, health_port):
            assert error_code(await client.connect_peer(("127.0.0.1", port))) == 403, port
            assert error_code(await client.create_permission(("127.0.0.1", port))) == 403, port
