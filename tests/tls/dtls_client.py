"""A TURN client over DTLS for tests: pyOpenSSL in client mode over memory BIOs, on an asyncio
UDP socket; the TURN side is tests/net/turnclient.py's RawTurnClient (requests, challenge,
allocate, ChannelData), whose datagrams are encrypted here."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from turnclient import RawTurnClient

from stunner_dp.net.dtls import DTLS1_2_VERSION, MTU, pack_datagrams

HANDSHAKE_TIMEOUT = 10.0


def client_context(ca: Path | None) -> SSL.Context:
    context = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    context.set_min_proto_version(DTLS1_2_VERSION)
    context.set_options(SSL.OP_NO_QUERY_MTU)
    if ca is not None:
        context.load_verify_locations(str(ca))
        context.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    return context


def drain(conn: SSL.Connection) -> bytes:
    chunks = []
    while True:
        try:
            chunks.append(conn.bio_read(65536))
        except SSL.WantReadError:
            return b"".join(chunks)


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, client: DtlsTurnClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[str, Any]) -> None:
        self.client.on_datagram(data)


class DtlsTurnClient(RawTurnClient):
    """`async with DtlsTurnClient(server, ca) as c:` handshakes (verifying the server's
    certificate against `ca` when given), then speaks TURN like RawTurnClient."""

    def __init__(
        self,
        server: tuple[str, int],
        ca: Path | None = None,
        *,
        local_addr: tuple[str, int] | None = None,
        handshake: bool = True,
    ) -> None:
        super().__init__(server)
        self.ssl = SSL.Connection(client_context(ca), None)
        self.ssl.set_connect_state()
        self.ssl.set_ciphertext_mtu(MTU)
        self.local_addr = local_addr
        self.do_handshake = handshake
        self.established = False
        self.closed_by_server = False  # a close_notify arrived
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()  # raw, during the handshake

    async def __aenter__(self) -> DtlsTurnClient:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Proto(self), remote_addr=self.server, local_addr=self.local_addr
        )
        if self.do_handshake:
            await self.handshake()
        return self

    # -- DTLS -----------------------------------------------------------------------------------

    def send_wire(self, data: bytes) -> None:
        """Datagrams as they are, bypassing DTLS (for junk and for handshake flights)."""
        assert self.transport is not None
        for datagram in pack_datagrams(data) if data[:1] in (b"\x14", b"\x15", b"\x16") else [data]:
            self.transport.sendto(datagram)

    def _flush(self) -> None:
        out = drain(self.ssl)
        if out:
            self.send_wire(out)

    def step(self) -> bool:
        """One do_handshake; True once the handshake is done."""
        try:
            self.ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return False
        self._flush()
        self.established = True
        return True

    async def next_datagram(self, timeout: float) -> bytes:
        return await asyncio.wait_for(self.datagrams.get(), timeout)

    async def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.step():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("DTLS handshake did not finish")
            wait = self.ssl.DTLSv1_get_timeout() or 1.0
            try:
                data = await self.next_datagram(min(wait, left))
            except TimeoutError:
                self.ssl.DTLSv1_handle_timeout()
                self._flush()
                continue
            self.ssl.bio_write(data)

    def on_datagram(self, data: bytes) -> None:
        if not self.established:
            self.datagrams.put_nowait(data)
            return
        self.ssl.bio_write(data)
        while True:
            try:
                plain = self.ssl.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed_by_server = True
                break
            except SSL.Error:
                break
            self.proto.datagram_received(plain, self.server)
        self._flush()

    def close_notify(self) -> None:
        with contextlib.suppress(SSL.Error):
            self.ssl.shutdown()
        self._flush()

    # -- RawTurnClient's one way out --------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        assert self.transport is not None and self.established
        self.ssl.send(data)
        self.transport.sendto(drain(self.ssl))
