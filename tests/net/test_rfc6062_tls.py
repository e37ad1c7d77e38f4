"""RFC 6062 over a TURN-TLS listener: the control connection is TLS, the Connect reaches a TCP
echo peer, and the ConnectionBind's data connection is a new TLS connection that carries the
peer's bytes raw (inside TLS) both ways; a peer-initiated connection is announced on the TLS
control connection and bound the same way."""

from __future__ import annotations

import asyncio
import os

from helpers.proxy_client import insecure_tls
from helpers.tcp_relay_client import (
    TlsTcpRelayClient,
    bind_data_connection,
    connection_id,
    tcp_echo_peer,
)
from helpers.tls_helpers import CertPair, cert, secure_server
from helpers.turnclient import error_code

from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME

__all__ = ["cert"]  # the session fixture

SIZES = (1, 1400, 16384, 16385, 200_000)  # one TLS record and past it
WAIT = 5.0


async def test_connect_and_bind_over_tls(cert: CertPair) -> None:
    tls = insecure_tls()
    async with (
        tcp_echo_peer() as peer,
        secure_server(cert, endpoints=["127.0.0.1"]) as running,
        TlsTcpRelayClient(("127.0.0.1", running.port), tls) as control,
    ):
        relay = await control.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        assert error_code(await control.create_permission(peer.address)) == 0
        cid = connection_id(await control.connect_peer(peer.address))
        assert peer.accepted == [relay]
        data, resp = await bind_data_connection(control, cid, tls)
        assert error_code(resp) == 0
        try:
            for size in SIZES:
                payload = os.urandom(size)
                data.writer.write(payload)
                assert await data.read_exactly(size) == payload, size
        finally:
            data.close()


async def test_peer_initiated_connection_over_tls(cert: CertPair) -> None:
    tls = insecure_tls()
    async with (
        secure_server(cert, endpoints=["127.0.0.1"]) as running,
        TlsTcpRelayClient(("127.0.0.1", running.port), tls) as control,
    ):
        relay = await control.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        assert error_code(await control.create_permission(("127.0.0.1", 1))) == 0
        peer_reader, peer_writer = await asyncio.open_connection(*relay)
        try:
            cid, announced = await control.next_attempt(WAIT)
            assert announced == peer_writer.get_extra_info("sockname")[:2]
            data, resp = await bind_data_connection(control, cid, tls)
            assert error_code(resp) == 0
            try:
                for size in SIZES:
                    to_peer, to_client = os.urandom(size), os.urandom(size)
                    data.writer.write(to_peer)
                    peer_writer.write(to_client)
                    got = await asyncio.wait_for(peer_reader.readexactly(size), WAIT)
                    assert got == to_peer, size
                    assert await data.read_exactly(size) == to_client, size
            finally:
                data.close()
        finally:
            peer_writer.close()
