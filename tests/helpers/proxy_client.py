"""The raw stream client (`StreamTurnClient`) from a chosen source address, with bytes of our
choosing (a PROXY protocol header) before STUN, and TLS started after them, as an LB in TLS
passthrough would leave it."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import cast

from helpers.stream_turnclient import StreamTurnClient
from stunner_dp import stun

CONNECT_TIMEOUT = 5.0


def insecure_tls() -> ssl.SSLContext:
    """A client context for the tests' self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


STREAM_TIMEOUT = 15.0


class ProxiedClient(StreamTurnClient):
    def __init__(
        self,
        server: tuple[str, int],
        *,
        source: str | None = None,
        prefix: bytes = b"",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(server)
        self.source, self.prefix, self.tls = source, prefix, tls

    async def __aenter__(self) -> ProxiedClient:
        loop = asyncio.get_running_loop()
        local = (self.source, 0) if self.source else None
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: self.frames, *self.server, local_addr=local),
            CONNECT_TIMEOUT,
        )
        self.stream = cast(asyncio.Transport, transport)
        try:
            sock = self.stream.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # closed by the server at accept already: the test asks about that
            pass
        if self.prefix:
            self.stream.write(self.prefix)
        if self.tls is not None:
            started = await asyncio.wait_for(
                loop.start_tls(self.stream, self.frames, self.tls), CONNECT_TIMEOUT
            )
            assert started is not None
            self.stream = started
        return self

    async def transact(
        self, data: bytes, tid: bytes, timeout: float = STREAM_TIMEOUT
    ) -> stun.Message:
        # A stream loses nothing: a late answer (a loaded CI machine, a haproxy hop) is slow,
        # not missing, so wait longer than the datagram client's retransmission-sized timeout.
        return await super().transact(data, tid, timeout)

    async def mapped_address(self) -> tuple[str, int]:
        """XOR-MAPPED-ADDRESS of a Binding request: who the server thinks we are."""
        resp = await self.request(stun.METHOD_BINDING, auth=False)
        value = resp.get(stun.ATTR_XOR_MAPPED_ADDRESS)
        assert value is not None, resp
        return stun.decode_xor_address(value, resp.transaction_id)

    async def closed_by_server(self, timeout: float = 10.0) -> bool:
        """Whether the server closes the connection within `timeout`."""
        try:
            await asyncio.wait_for(self.frames.closed.wait(), timeout)
        except TimeoutError:
            return False
        return True
