"""A DTLS 1.2 client association on one connected UDP socket, for TURN over DTLS (RFC 7350).

pyOpenSSL in client mode over memory BIOs, as the listener of stunner_dp/net/dtls.py is on the
server side: the socket, the datagram boundaries and the retransmission timer stay ours. The
handshake retransmits its flights on OpenSSL's own timer (`DTLSv1_get_timeout` /
`DTLSv1_handle_timeout`) and gives up after a deadline; once it is done, every `send` is one
record in one datagram and every record received goes to `on_data` decrypted.

The certificate is verified (chain and host name, from the subject alternative names) unless
the context says otherwise (`client_context(verify=False)`, the probe's ``--insecure``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from cryptography import x509
from OpenSSL import SSL, crypto

from stunner_dp.dtls_records import DTLS1_2_VERSION, MTU, RECORD_HEADER, pack_datagrams

Addr = tuple[str, int]
HANDSHAKE_TIMEOUT = 10.0
RECV_SIZE = 65536
FIRST_RETRANSMIT = 1.0  # when OpenSSL's timer is not running (RFC 6347 4.2.4.1)

# OpenSSL's X509_V_ERR_* codes a probe meets (the rest are named by number)
VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    26: "unsupported certificate purpose",
}


class DtlsHandshakeError(Exception):
    """A handshake that failed (an alert, a certificate that does not verify) or timed out."""

    def __init__(
        self,
        message: str,
        *,
        timed_out: bool = False,
        refused: bool = False,
        verify_error: str = "",
    ) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.refused = refused  # an ICMP port unreachable came back meanwhile
        self.verify_error = verify_error


def client_context(*, verify: bool = True, cafile: str | Path | None = None) -> SSL.Context:
    """A DTLS 1.2 client context: verifying against `cafile`, or the system's CAs without
    one; `verify=False` accepts any certificate."""
    context = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    context.set_min_proto_version(DTLS1_2_VERSION)
    context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
    if verify:
        if cafile is not None:
            context.load_verify_locations(str(cafile))
        else:
            context.set_default_verify_paths()
        context.set_verify(SSL.VERIFY_PEER)
    return context


def hostname_matches(cert: x509.Certificate, name: str) -> bool:
    """Whether the certificate's subject alternative names cover `name` (an IP address, or a
    DNS name, with a wildcard allowed as the whole leftmost label)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return ip in san.get_values_for_type(x509.IPAddress)
    name = name.lower().rstrip(".")
    parent = name.partition(".")[2]
    for pattern in san.get_values_for_type(x509.DNSName):
        pattern = pattern.lower().rstrip(".")
        if pattern == name or (pattern.startswith("*.") and parent and pattern[2:] == parent):
            return True
    return False


def drain(conn: SSL.Connection) -> bytes:
    """Everything OpenSSL has written to the connection's outgoing memory BIO."""
    chunks = []
    while True:
        try:
            chunks.append(conn.bio_read(RECV_SIZE))
        except SSL.WantReadError:
            return b"".join(chunks)


def _describe(exc: SSL.Error) -> str:
    """OpenSSL's reasons, e.g. 'certificate verify failed' or 'tlsv1 alert ...'."""
    reasons = [
        str(item[2])
        for item in (exc.args[0] if exc.args and isinstance(exc.args[0], list) else [])
        if isinstance(item, tuple) and len(item) == 3 and item[2]
    ]
    return "; ".join(reasons) or str(exc) or type(exc).__name__


def _ignore(_: object) -> None:
    pass


class DtlsClient(asyncio.DatagramProtocol):
    """One DTLS association with `server` on its own connected UDP socket.

    `await open()`, then `await handshake()`; `send()` encrypts, `on_data` gets what the server
    sent decrypted, `on_error` gets "closed" (close_notify) or "refused" (ICMP port unreachable)
    once the association is up. Until then the datagrams received wait in a queue the handshake
    (or a caller stepping it by hand with `step` and `next_datagram`) reads.
    """

    def __init__(
        self,
        context: SSL.Context,
        server: Addr,
        *,
        server_name: str = "",
        on_data: Callable[[bytes], None] = _ignore,
        on_error: Callable[[str], None] = _ignore,
        mtu: int = MTU,
    ) -> None:
        self.server = server
        self.server_name = server_name or server[0]
        self.on_data = on_data
        self.on_error = on_error
        self.mtu = mtu
        self.ssl = SSL.Connection(context, None)
        self.ssl.set_connect_state()
        self.ssl.set_ciphertext_mtu(mtu)
        if not _is_ip(self.server_name):
            self.ssl.set_tlsext_host_name(self.server_name.encode("idna"))
        self.verifying = context.get_verify_mode() != SSL.VERIFY_NONE
        if self.verifying:
            self.ssl.set_verify(context.get_verify_mode(), self._verify)
        self.transport: asyncio.DatagramTransport | None = None
        self.established = False
        self.closed_by_peer = False  # a close_notify arrived
        self.refused = False  # an ICMP port unreachable arrived
        self.verify_error = ""
        self._handshake_data: asyncio.Queue[bytes] = asyncio.Queue()

    async def open(self, local_addr: Addr | None = None) -> None:
        """The UDP socket, connected to the server (no datagram is sent yet)."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(
            lambda: self, remote_addr=self.server, local_addr=local_addr
        )

    @property
    def local_address(self) -> Addr:
        assert self.transport is not None
        name = self.transport.get_extra_info("sockname")
        return str(name[0]), int(name[1])

    # -- the handshake --------------------------------------------------------------------------

    def step(self) -> bool:
        """One do_handshake, its output sent; True once the handshake is done. Raises
        DtlsHandshakeError for an alert or a certificate that does not verify."""
        try:
            self.ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return False
        except SSL.Error as exc:
            self._flush()  # our alert, if OpenSSL wrote one
            reason = _describe(exc)
            if self.verify_error:
                reason = f"{reason} ({self.verify_error})"
            raise DtlsHandshakeError(reason, verify_error=self.verify_error) from None
        self._flush()
        self.established = True
        queue = self._handshake_data
        for _ in range(queue.qsize()):  # what came right behind the server's last flight
            self._receive(queue.get_nowait())
        return True

    async def next_datagram(self, timeout: float) -> bytes:
        """The next datagram received before the handshake is done, as it is."""
        return await asyncio.wait_for(self._handshake_data.get(), timeout)

    async def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """Run the handshake, retransmitting flights on OpenSSL's timer, for at most `timeout`
        seconds. Raises DtlsHandshakeError (`timed_out` set for the deadline)."""
        deadline = time.monotonic() + timeout
        while not self.step():
            left = deadline - time.monotonic()
            if left <= 0:
                raise DtlsHandshakeError(
                    f"no handshake within {timeout:g} s", timed_out=True, refused=self.refused
                )
            retransmit = self.ssl.DTLSv1_get_timeout()
            wait = FIRST_RETRANSMIT if retransmit is None else retransmit
            try:
                data = self._handshake_data.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    data = await self.next_datagram(max(min(wait, left), 0.001))
                except TimeoutError:
                    if wait <= left:
                        self._retransmit()
                    continue
            self.ssl.bio_write(data)

    def _retransmit(self) -> None:
        try:
            self.ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            raise DtlsHandshakeError(_describe(exc), refused=self.refused) from None
        self._flush()

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            name = VERIFY_ERRORS.get(errno, f"X509 verify error {errno}")
            self.verify_error = f"{name}, certificate depth {depth}"
            return False
        if depth == 0 and not hostname_matches(cert.to_cryptography(), self.server_name):
            self.verify_error = f"the certificate is not for {self.server_name}"
            return False
        return True

    # -- datagrams ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (asyncio's UDP transports need not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.established:
            self._receive(data)
        else:
            self._handshake_data.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        # a connected UDP socket reports the ICMP port unreachable of a dead port this way
        refused = isinstance(exc, ConnectionRefusedError)
        self.refused = self.refused or refused
        if self.established:
            self.on_error("refused" if refused else str(exc))

    def _receive(self, data: bytes) -> None:
        self.ssl.bio_write(data)
        for _ in range(len(data) // RECORD_HEADER + 1):  # at most one record each
            try:
                plain = self.ssl.recv(RECV_SIZE)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed_by_peer = True
                self.on_error("closed")
                break
            except SSL.Error:
                break  # a record that does not decrypt: dropped
            self.on_data(plain)
        self._flush()  # e.g. our last flight again, when the server repeated its Finished

    def send(self, data: bytes) -> None:
        """One record in one datagram. Raises ConnectionError once the association is gone."""
        if self.transport is None or not self.established or self.closed_by_peer:
            raise ConnectionError("no DTLS association")
        try:
            self.ssl.send(data)
        except SSL.Error as exc:
            raise ConnectionError(_describe(exc)) from None
        self.transport.sendto(drain(self.ssl))

    def send_wire(self, data: bytes) -> None:
        """A datagram as it is, past DTLS."""
        assert self.transport is not None
        self.transport.sendto(data)

    def _flush(self) -> None:
        out = drain(self.ssl)
        if out and self.transport is not None:
            for datagram in pack_datagrams(out, self.mtu):
                self.transport.sendto(datagram)

    def close_notify(self) -> None:
        with contextlib.suppress(SSL.Error):
            self.ssl.shutdown()
        self._flush()

    def close(self) -> None:
        """A close_notify when the association is up, then the socket closed."""
        if self.transport is None:
            return
        if self.established and not self.closed_by_peer:
            self.close_notify()
        self.transport.close()
        self.transport = None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
