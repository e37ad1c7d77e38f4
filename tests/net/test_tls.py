"""TURN-TLS: a real self-signed certificate made at test time, real clients.

stunner-dp's own probe (allocate and relay over TLS), coturn's turnutils_uclient with TLS, and a
client that speaks plain TCP to the TLS port, which must not disturb the others."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from helpers.tls_helpers import CertPair, need_turnutils, run_probe, run_uclient, secure_server
from helpers.uclient import assert_no_loss

from stunner_dp import stun
from stunner_dp.client.turn import TurnClient, check
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, udp_echo_peer

TIMEOUT = 30.0


def trusting(cert: CertPair) -> ssl.SSLContext:
    """A client context that trusts the test certificate, and checks the host name."""
    context = ssl.create_default_context(cafile=str(cert.cert_path))
    context.check_hostname = True
    return context


async def test_probe_over_tls(cert: CertPair) -> None:
    async with secure_server(cert) as srv:
        uri = f"turns://{DEFAULT_USERNAME}:{DEFAULT_PASSWORD}@127.0.0.1:{srv.port}?transport=tcp"
        code, out = await run_probe(uri, "--insecure")
        assert code == 0, out
        assert "round trip" in out and "FAIL" not in out, out
        low, high = srv.low_high
        relay_port = int(out.split("relay address 127.0.0.1:")[1].split(",")[0])
        assert low <= relay_port <= high, out
        stats = srv.server.stats().listeners["tls-listener"]
        assert stats.connections_total >= 1
        assert stats.rx_packets >= 5  # binding, two allocates, permission, bind, ...
        # without --insecure the self-signed certificate is refused, and the probe says why
        code, out = await run_probe(uri)
        assert code != 0
        assert "TLS handshake failed" in out, out


async def test_verified_tls_allocation_and_relay(cert: CertPair) -> None:
    """The certificate's SAN covers 127.0.0.1: a verifying client gets a relay and echoes."""
    async with secure_server(cert) as srv, udp_echo_peer() as peer:
        client = TurnClient(("127.0.0.1", srv.port), "tls", 3.0, trusting(cert))
        await client.connect()
        try:
            check(await client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD), "Allocate")
            assert srv.server.allocation_count == 1
            check(await client.create_permission(peer), "CreatePermission")
            check(await client.channel_bind(peer), "ChannelBind")
            for i in range(20):
                payload = b"over-tls-%d" % i
                client.send_channel_data(payload)
                assert (await client.receive_channel_data())[1] == payload
        finally:
            client.close()
        # the allocation ends with its TLS connection (RFC 8656 3.1)
        for _ in range(100):
            if srv.server.allocation_count == 0:
                break
            await asyncio.sleep(0.02)
        assert srv.server.allocation_count == 0


@pytest.mark.interop
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["-t", "-S", "-c", "-n", "20"], 20),
        (["-t", "-S", "-c", "-s", "-n", "20"], 20),  # Send/Data indications
        (["-t", "-S", "-c", "-m", "5", "-n", "50"], 250),
    ],
    ids=["channels", "send-indications", "5-clients"],
)
async def test_uclient_tls(cert: CertPair, turn_peer: int, flags: list[str], expected: int) -> None:
    need_turnutils()
    async with secure_server(cert) as srv:
        summary = await run_uclient(srv.port, turn_peer, *flags)
        assert_no_loss(summary, expected)
        assert srv.server.stats().listeners["tls-listener"].connections_total >= 1


async def test_plain_tcp_to_tls_port_does_not_disturb(cert: CertPair) -> None:
    """A client speaking plain TURN-TCP (and one sending junk) to the TLS port fails its
    handshake; a TLS client in the middle of a session is not disturbed, and a new one works."""
    loop = asyncio.get_running_loop()
    async with secure_server(cert) as srv, udp_echo_peer() as peer:
        good = TurnClient(("127.0.0.1", srv.port), "tls", 3.0, trusting(cert))
        await good.connect()
        try:
            check(await good.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD), "Allocate")
            check(await good.create_permission(peer), "CreatePermission")
            check(await good.channel_bind(peer), "ChannelBind")

            binding = stun.encode_message(
                stun.METHOD_BINDING, stun.CLASS_REQUEST, b"\x01" * 12, [], fingerprint=True
            )
            bad_streams = []
            for junk in (binding, b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.0\r\n\r\n"):
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)
                w.write(junk)
                await w.drain()
                bad_streams.append((r, w))
            # and one that connects and says nothing
            silent = socket.create_connection(("127.0.0.1", srv.port))
            for r, _ in bad_streams:
                # the server ends each of them (an alert and/or EOF), never answers as TURN
                data = await asyncio.wait_for(r.read(4096), 5.0)
                assert not stun.is_stun(data)
            for i in range(10):
                good.send_channel_data(b"still-here-%d" % i)
                assert (await good.receive_channel_data())[1] == b"still-here-%d" % i

            second = TurnClient(("127.0.0.1", srv.port), "tls", 3.0, trusting(cert))
            await second.connect()
            try:
                check(await second.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD), "Allocate")
                assert srv.server.allocation_count == 2
            finally:
                second.close()
            for _, w in bad_streams:
                w.close()
            await loop.run_in_executor(None, silent.close)
        finally:
            good.close()
