"""RFC 6062 TCP relays on real sockets (net/tcp_relay.py): a TCP control connection allocates a
TCP relay; Connect reaches a TCP echo peer on 127.0.0.1 and a ConnectionBind data connection
carries raw bytes both ways; a peer that connects to the relay address is announced by a
ConnectionAttempt when it has a permission and refused without one; a second Connect to the
same peer is 446, a Connect to a closed port 447."""

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
    start_turn_server,
)

SIZES = (1, 2, 3, 7, 100, 1400, 4096, 65535, 65536, 200_000, 1_000_000)
WAIT = 5.0


def tcp_server(**overrides: Any) -> AbstractAsyncContextManager[TurnServerHandle]:
    return start_turn_server(protocols=("TURN-TCP",), endpoints=["127.0.0.1"], **overrides)


async def echo_many_sizes(data_writer: asyncio.StreamWriter, read_exactly: object) -> int:
    """Send each size, read it back whole; the bytes are random so a swap or a loss shows."""
    total = 0
    for size in SIZES:
        payload = os.urandom(size)
        data_writer.write(payload)
        back = await read_exactly(size)  # type: ignore[operator]
        assert back == payload, size
        total += size
    return total


async def test_connect_and_bind_relay_bytes_both_ways() -> None:
    async with tcp_echo_peer() as peer, tcp_server() as ts, TcpRelayClient(ts.address) as control:
        relay = await control.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        assert relay[0] == "127.0.0.1"
        low, high = (
            ts.config["listeners"][0]["min_relay_port"],
            ts.config["listeners"][0]["max_relay_port"],
        )
        assert low <= relay[1] <= high
        assert error_code(await control.create_permission(peer.address)) == 0
        cid = connection_id(await control.connect_peer(peer.address))
        # the peer saw a connection from the relay IP
        assert [ip for ip, _ in peer.accepted] == ["127.0.0.1"]
        data, resp = await bind_data_connection(control, cid)
        assert error_code(resp) == 0
        try:
            total = await echo_many_sizes(data.writer, data.read_exactly)
            assert total == sum(SIZES)
        finally:
            data.close()


async def test_peer_initiated_connection_with_a_permission() -> None:
    async with tcp_server() as ts, TcpRelayClient(ts.address) as control:
        relay = await control.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        peer_reader, peer_writer = await asyncio.open_connection(
            *relay, local_addr=("127.0.0.1", 0)
        )
        peer_port = peer_writer.get_extra_info("sockname")[1]
        try:
            # no permission yet: the relay closes it
            assert await asyncio.wait_for(peer_reader.read(1), WAIT) == b""
        except ConnectionResetError:
            pass
        finally:
            peer_writer.close()
        assert error_code(await control.create_permission(("127.0.0.1", peer_port))) == 0

        peer_reader, peer_writer = await asyncio.open_connection(*relay)
        try:
            first = b"sent before the bind"
            peer_writer.write(first)  # waits in the kernel until the data connection is bound
            cid, announced = await control.next_attempt(WAIT)
            assert announced == peer_writer.get_extra_info("sockname")[:2]
            data, resp = await bind_data_connection(control, cid)
            assert error_code(resp) == 0
            try:
                assert await data.read_exactly(len(first)) == first
                for size in SIZES:
                    to_peer, to_client = os.urandom(size), os.urandom(size)
                    data.writer.write(to_peer)
                    peer_writer.write(to_client)
                    got_peer = await asyncio.wait_for(peer_reader.readexactly(size), WAIT)
                    got_client = await data.read_exactly(size, WAIT)
                    assert got_peer == to_peer, size
                    assert got_client == to_client, size
            finally:
                data.close()
            # the data connection closed: so does the peer's
            assert await asyncio.wait_for(peer_reader.read(), WAIT) == b""
        finally:
            peer_writer.close()


async def test_a_second_connect_is_446_and_a_closed_port_447() -> None:
    async with tcp_echo_peer() as peer, tcp_server() as ts, TcpRelayClient(ts.address) as control:
        await control.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        assert error_code(await control.create_permission(peer.address)) == 0
        connection_id(await control.connect_peer(peer.address))
        assert error_code(await control.connect_peer(peer.address)) == 446
        closed = ("127.0.0.1", free_port(udp=False))  # nothing listens: refused at once
        assert error_code(await control.create_permission(closed)) == 0
        assert error_code(await control.connect_peer(closed)) == 447
        # the failed one left nothing: a second try is 447 again, not 446
        assert error_code(await control.connect_peer(closed)) == 447


async def test_udp_listener_still_answers_442() -> None:
    async with (
        start_turn_server(protocols=("TURN-UDP",), endpoints=["127.0.0.1"]) as ts,
        RawTurnClient(ts.address) as client,
    ):
        await client.challenge()
        client.login(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        resp = await client.request(stun.METHOD_ALLOCATE, list(tcp_transport()))
        assert error_code(resp) == 442


async def test_relayed_bytes_count_in_the_cluster_and_listener_figures() -> None:
    """Cluster figures are payload bytes (tx to peers, rx from peers), listener figures wire
    bytes (rx from clients, tx to clients): a TCP relay's bytes are both, and stay counted
    once the data connection and then the allocation are gone."""
    async with tcp_echo_peer() as peer, tcp_server() as ts:
        server = ts.server
        async with TcpRelayClient(ts.address) as control:
            await control.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
            assert server.allocation_count == 1
            assert error_code(await control.create_permission(peer.address)) == 0
            cid = connection_id(await control.connect_peer(peer.address))
            data, resp = await bind_data_connection(control, cid)
            assert error_code(resp) == 0
            before = server.stats()
            assert "peers" not in before.clusters or before.clusters["peers"].tx_bytes == 0
            total = await echo_many_sizes(data.writer, data.read_exactly)
            during = server.stats()
            cluster = during.clusters["peers"]
            assert (cluster.tx_bytes, cluster.rx_bytes) == (total, total)
            assert cluster.tx_packets > 0 and cluster.rx_packets > 0
            lst, lst0 = during.listeners["tcp-listener"], before.listeners["tcp-listener"]
            assert lst.rx_bytes - lst0.rx_bytes == total
            assert lst.tx_bytes - lst0.tx_bytes == total
            data.close()
            for _ in range(300):  # the peer connection closes with its data connection
                if not server.turn.tcp.connections:  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.01)
            closed = server.stats().clusters["peers"]
            assert (closed.tx_bytes, closed.rx_bytes) == (total, total)
        for _ in range(300):
            if server.allocation_count == 0:
                break
            await asyncio.sleep(0.01)
        assert server.allocation_count == 0
        gone = server.stats().clusters["peers"]
        assert (gone.tx_bytes, gone.rx_bytes) == (total, total)
