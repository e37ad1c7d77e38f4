"""An RFC 6062 client for tests: a TCP (or TLS) control connection (`StreamTurnClient`), the
Allocate with REQUESTED-TRANSPORT TCP, Connect, and data connections that send ConnectionBind
and then carry raw bytes; plus a TCP echo peer.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from helpers.stream_turnclient import StreamTurnClient
from helpers.turnclient import TIMEOUT, error_code, peer_attr
from stunner_dp import stun

Addr = tuple[str, int]


def tcp_transport() -> list[tuple[int, bytes]]:
    return [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(stun.TRANSPORT_TCP))]


class TcpRelayClient(StreamTurnClient):
    """The control connection of one TCP allocation."""

    async def allocate_tcp(self, username: str, password: str) -> Addr:
        await self.challenge()
        self.login(username, password)
        resp = await self.request(stun.METHOD_ALLOCATE, list(tcp_transport()))
        assert resp.cls == stun.CLASS_SUCCESS, error_code(resp)
        value = resp.get(stun.ATTR_XOR_RELAYED_ADDRESS)
        assert value is not None
        return stun.decode_xor_address(value, resp.transaction_id)

    async def connect_peer(self, peer: Addr) -> stun.Message:
        """Connect: the answer (CONNECTION-ID on success)."""
        return await self.request(stun.METHOD_CONNECT, [peer_attr(peer)])

    def _credentials(self) -> list[tuple[int, bytes]]:
        return [
            (stun.ATTR_USERNAME, stun.encode_text(self.username)),
            (stun.ATTR_REALM, stun.encode_text(self.realm)),
            (stun.ATTR_NONCE, stun.encode_text(self.nonce)),
        ]

    def connection_bind_request(self, connection_id: int) -> tuple[bytes, bytes]:
        tid = os.urandom(12)
        body = [(stun.ATTR_CONNECTION_ID, stun.encode_u32(connection_id)), *self._credentials()]
        data = stun.encode_message(
            stun.METHOD_CONNECTION_BIND,
            stun.CLASS_REQUEST,
            tid,
            body,
            integrity_key=self.key,
            fingerprint=True,
        )
        return data, tid

    async def next_attempt(self, timeout: float = TIMEOUT) -> tuple[int, Addr]:
        """The next ConnectionAttempt indication: its CONNECTION-ID and peer."""
        for _ in range(100):
            msg = stun.parse_message(await self.next_unsolicited(timeout))
            if msg.method != stun.METHOD_CONNECTION_ATTEMPT:
                continue
            raw_id, raw_peer = msg.get(stun.ATTR_CONNECTION_ID), msg.get(stun.ATTR_XOR_PEER_ADDRESS)
            assert raw_id is not None and raw_peer is not None
            return stun.decode_u32(raw_id), stun.decode_xor_address(raw_peer, msg.transaction_id)
        raise AssertionError("no ConnectionAttempt")


def connection_id(resp: stun.Message) -> int:
    assert resp.cls == stun.CLASS_SUCCESS, error_code(resp)
    raw = resp.get(stun.ATTR_CONNECTION_ID)
    assert raw is not None
    return stun.decode_u32(raw)


@dataclass
class DataConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read_exactly(self, size: int, timeout: float = TIMEOUT) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(size), timeout)

    def close(self) -> None:
        self.writer.close()


async def open_data_connection(server: Addr, tls: ssl.SSLContext | None = None) -> DataConnection:
    reader, writer = await asyncio.open_connection(*server, ssl=tls)
    return DataConnection(reader, writer)


async def bind_data_connection(
    control: TcpRelayClient, cid: int, tls: ssl.SSLContext | None = None
) -> tuple[DataConnection, stun.Message]:
    """A new data connection and its ConnectionBind's answer; raw from then on when it is a
    success (the answer is read to its exact length, so no relayed byte is consumed)."""
    data = await open_data_connection(control.server, tls)
    request, tid = control.connection_bind_request(cid)
    data.writer.write(request)
    header = await data.read_exactly(stun.HEADER_SIZE)
    length = int.from_bytes(header[2:4], "big")
    msg = stun.parse_message(header + await data.read_exactly(length))
    assert msg.transaction_id == tid
    return data, msg


@dataclass
class TcpEchoPeer:
    """A TCP server on 127.0.0.1 that echoes every byte; it counts its connections."""

    server: asyncio.Server | None = None
    address: Addr = ("", 0)
    accepted: list[Addr] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(writer.get_extra_info("peername")[:2])
        self.writers.append(writer)
        # cancelled when the test ends: asyncio would log the cancellation as an error
        with suppress(OSError, asyncio.CancelledError):
            for _ in range(1_000_000):  # bounded: one chunk per turn
                chunk = await reader.read(65536)
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
        writer.close()


@asynccontextmanager
async def tcp_echo_peer(host: str = "127.0.0.1") -> AsyncIterator[TcpEchoPeer]:
    peer = TcpEchoPeer()
    peer.server = await asyncio.start_server(peer._serve, host, 0)
    sockname = peer.server.sockets[0].getsockname()
    peer.address = (str(sockname[0]), int(sockname[1]))
    try:
        yield peer
    finally:
        for writer in peer.writers:
            writer.close()
        peer.server.close()


class TlsTcpRelayClient(TcpRelayClient):
    """The control connection of one TCP allocation over TURN-TLS."""

    def __init__(self, server: Addr, tls: ssl.SSLContext) -> None:
        super().__init__(server)
        self.tls = tls

    async def __aenter__(self) -> TlsTcpRelayClient:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: self.frames, *self.server, ssl=self.tls)
        self.stream = transport  # type: ignore[assignment]  # an SSL transport is one
        return self
