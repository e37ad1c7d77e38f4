"""A TLS connection whose handshake was still going on when its listener stopped must not be
served by the stopped listener once the handshake completes."""

from __future__ import annotations

import asyncio
import copy
import socket
import ssl

from helpers.tls_helpers import CertPair, secure_server

from stunner_dp import stun
from stunner_dp.config import parse_config


async def test_handshake_in_progress_when_the_listener_stops_is_not_served(
    cert: CertPair,
) -> None:
    async with secure_server(cert, protocols=("TURN-TLS", "TURN-UDP")) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.port))  # accepted, no ClientHello yet
        try:
            await asyncio.sleep(0.2)  # the server accepts it and waits for the handshake
            new = copy.deepcopy(srv.config)
            new["listeners"] = [lis for lis in new["listeners"] if lis["name"] != "tls-listener"]
            await srv.server.apply(parse_config(new))
            assert "tls-listener" not in srv.server.listeners
            context = ssl.create_default_context(cafile=str(cert.cert_path))
            raw.setblocking(False)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(sock=raw, ssl=context, server_hostname="127.0.0.1"),
                    5.0,
                )
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                return  # refused at the handshake: fine
            raw = None  # type: ignore[assignment]  # the transport owns it now
            try:
                binding = stun.encode_message(
                    stun.METHOD_BINDING, stun.CLASS_REQUEST, b"\x02" * 12, [], fingerprint=True
                )
                writer.write(binding)
                try:
                    data = await asyncio.wait_for(reader.read(4096), 2.0)
                except (OSError, ssl.SSLError):
                    data = b""
                assert not stun.is_stun(data), "a stopped listener answered"
            finally:
                writer.close()
        finally:
            if raw is not None:
                raw.close()
