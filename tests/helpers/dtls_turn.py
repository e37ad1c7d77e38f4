"""A TURN client over DTLS for tests: the package's DTLS client (stunner_dp/client/dtls.py)
under tests/helpers/turnclient.py's RawTurnClient (requests, challenge, allocate, ChannelData),
whose datagrams it encrypts."""

from __future__ import annotations

from pathlib import Path

from OpenSSL import SSL

from helpers.turnclient import RawTurnClient
from stunner_dp.client.dtls import HANDSHAKE_TIMEOUT, DtlsClient, client_context


class DtlsTurnClient(RawTurnClient):
    """`async with DtlsTurnClient(server, ca) as c:` handshakes (verifying the server's
    certificate against `ca` when given, host name included), then speaks TURN like
    RawTurnClient."""

    def __init__(
        self,
        server: tuple[str, int],
        ca: Path | None = None,
        *,
        local_addr: tuple[str, int] | None = None,
        handshake: bool = True,
    ) -> None:
        super().__init__(server)
        self.dtls = DtlsClient(
            client_context(verify=ca is not None, cafile=ca),
            server,
            on_data=lambda plain: self.proto.datagram_received(plain, server),
        )
        self.local_addr = local_addr
        self.do_handshake = handshake

    async def __aenter__(self) -> DtlsTurnClient:
        await self.dtls.open(self.local_addr)
        self.transport = self.dtls.transport
        if self.do_handshake:
            await self.handshake()
        return self

    @property
    def ssl(self) -> SSL.Connection:
        return self.dtls.ssl

    @property
    def established(self) -> bool:
        return self.dtls.established

    @property
    def closed_by_server(self) -> bool:
        """A close_notify arrived."""
        return self.dtls.closed_by_peer

    def send_wire(self, data: bytes) -> None:
        """A datagram as it is, bypassing DTLS (for junk)."""
        self.dtls.send_wire(data)

    def step(self) -> bool:
        """One do_handshake; True once the handshake is done."""
        return self.dtls.step()

    async def next_datagram(self, timeout: float) -> bytes:
        return await self.dtls.next_datagram(timeout)

    async def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        await self.dtls.handshake(timeout)

    def close_notify(self) -> None:
        self.dtls.close_notify()

    # -- RawTurnClient's one way out --------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.dtls.send(data)
