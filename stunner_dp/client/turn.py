"""The TURN client of the client side: UDP, TCP, TLS or DTLS, one request at a time.

`TurnClient` connects, runs Binding, Allocate (with the 401 challenge and a 438 retry),
CreatePermission, ChannelBind and Refresh, and sends and receives ChannelData; the helpers
below read responses (`error_code`, `check`, `mapped_address`, `relayed_address`). The probe
(`stunner-dp probe`) runs its steps with it, and the tests use it as a real client.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from OpenSSL import SSL

from stunner_dp import stun
from stunner_dp.client.dtls import DtlsClient, client_context
from stunner_dp.turn.auth import long_term_key, userhash

Addr = tuple[str, int]
Attrs = Sequence[tuple[int, bytes]]
CHANNEL = 0x4000
RTO = 0.5  # first UDP retransmission timeout, doubled on each retry (RFC 8489 6.2.1)


class TurnError(Exception):
    """A request that failed: an error response, a timeout, or a transport failure."""

    def __init__(self, kind: str, message: str, response: stun.Message | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "error" (an error response), "timeout", "refused", "closed"
        self.response = response

    @property
    def code(self) -> int:
        if self.response is None:
            return 0
        value = self.response.get(stun.ATTR_ERROR_CODE)
        return stun.decode_error_code(value)[0] if value else 0


def error_code(msg: stun.Message) -> tuple[int, str]:
    """(code, reason) of an error response; (0, "") for a success."""
    value = msg.get(stun.ATTR_ERROR_CODE)
    if msg.cls != stun.CLASS_ERROR or value is None:
        return 0, ""
    return stun.decode_error_code(value)


class _Link:
    """What both transports feed: whole frames (STUN or ChannelData) and errors."""

    def __init__(self, on_frame: Callable[[bytes], None], on_error: Callable[[str], None]) -> None:
        self.on_frame = on_frame
        self.on_error = on_error


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.link.on_frame(data)

    def error_received(self, exc: Exception) -> None:
        # A connected UDP socket reports the ICMP port unreachable of a dead port this way.
        self.link.on_error("refused" if isinstance(exc, ConnectionRefusedError) else str(exc))


class _Stream(asyncio.Protocol):
    def __init__(self, link: _Link) -> None:
        self.link = link
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while True:
            try:
                size = stun.stream_frame_length(buf)
            except stun.StunError:
                self.link.on_error("the server sent something that is neither STUN nor TURN")
                return
            if size is None or len(buf) < size:
                return
            frame = bytes(buf[:size])
            del buf[:size]
            self.link.on_frame(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.on_error("closed")


@dataclass
class TurnClient:
    """A TURN client over UDP, TCP, TLS or DTLS: one request at a time is all a probe needs.

    `bytes_sent`/`bytes_received` count wire bytes of STUN messages and ChannelData (without
    stream padding), as the server's listener counters do. The certificate of a TLS or DTLS
    server is checked against `server_name` (default: the server's address); over DTLS,
    `timeout` bounds the handshake too, and `connect` raises DtlsHandshakeError.
    """

    server: Addr
    transport: str = "udp"  # "udp" | "tcp" | "tls" | "dtls"
    timeout: float = 3.0
    ssl_context: ssl.SSLContext | None = None
    dtls_context: SSL.Context | None = None  # default: verifying with the system's CAs
    server_name: str = ""
    username: str = ""
    realm: str = ""
    nonce: str = ""
    key: bytes = b""
    # RFC 8489 only: refuse a challenge without SHA-256 (a bid-down), pick PASSWORD-ALGORITHM
    # SHA-256, sign with MESSAGE-INTEGRITY-SHA256 alone, check the answers' signatures; with
    # use_userhash, send USERHASH instead of USERNAME where the server offers it
    sha256_only: bool = False
    use_userhash: bool = False
    password_algorithms: bytes = b""  # the challenge's PASSWORD-ALGORITHMS, echoed
    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    channel_data: asyncio.Queue[tuple[int, bytes]] = field(default_factory=asyncio.Queue)
    _pending: dict[bytes, asyncio.Future[stun.Message]] = field(default_factory=dict)
    _transport: asyncio.BaseTransport | None = None
    _dtls: DtlsClient | None = None
    _error: str = ""

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        link = _Link(self._on_frame, self._on_error)
        if self.transport == "udp":
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(link), remote_addr=self.server
            )
        elif self.transport == "dtls":
            dtls = DtlsClient(
                self.dtls_context or client_context(),
                self.server,
                server_name=self.server_name,
                on_data=self._on_frame,
                on_error=self._on_error,
            )
            await dtls.open()
            try:
                await dtls.handshake(self.timeout)
            except BaseException:
                dtls.close()
                raise
            self._dtls, self._transport = dtls, dtls.transport
        else:
            context = self.ssl_context if self.transport == "tls" else None
            if self.transport == "tls" and context is None:
                context = ssl.create_default_context()
            self._transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Stream(link),
                    self.server[0],
                    self.server[1],
                    ssl=context,
                    server_hostname=(self.server_name or self.server[0]) if context else None,
                ),
                self.timeout,
            )

    def close(self) -> None:
        if self._dtls is not None:  # with a close_notify
            self._dtls.close()
            self._dtls = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> TurnClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def dtls(self) -> DtlsClient | None:
        """The DTLS association once connected over DTLS."""
        return self._dtls

    @property
    def local_address(self) -> Addr:
        assert self._transport is not None
        name = self._transport.get_extra_info("sockname")
        return str(name[0]), int(name[1])

    # -- frames -------------------------------------------------------------------------------

    def _on_frame(self, data: bytes) -> None:
        self.packets_received += 1
        if stun.is_channel_data(data):
            try:
                number, payload = stun.parse_channel_data(data)
            except stun.StunError:
                return
            self.bytes_received += 4 + len(payload)
            self.channel_data.put_nowait((number, payload))
            return
        self.bytes_received += len(data)
        try:
            msg = stun.parse_message(data)
        except stun.StunError:
            return
        fut = self._pending.get(msg.transaction_id)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _on_error(self, error: str) -> None:
        self._error = error
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(TurnError(error, error))

    def send_raw(self, data: bytes) -> None:
        if self._transport is None:
            raise TurnError("closed", "not connected")
        self.packets_sent += 1
        if self._dtls is not None:
            try:
                self._dtls.send(data)
            except ConnectionError as exc:
                raise TurnError("closed", str(exc)) from None
        elif self.transport == "udp":  # (UDP transports need not subclass DatagramTransport)
            cast(asyncio.DatagramTransport, self._transport).sendto(data)
        else:
            stream = cast(asyncio.WriteTransport, self._transport)
            stream.write(data)
            if stun.is_channel_data(data) and len(data) & 3:
                stream.write(b"\0" * (4 - (len(data) & 3)))

    # -- requests -----------------------------------------------------------------------------

    async def request(
        self,
        method: int,
        attrs: Attrs | Callable[[bytes], Attrs] = (),
        *,
        auth: bool = True,
    ) -> stun.Message:
        """Send a request (signed with the long-term key once `login` ran, unless auth=False)
        and return the response, success or error. `attrs` may be a function of the
        transaction id (for XOR-PEER-ADDRESS). UDP requests are retransmitted until
        `timeout` (over DTLS too). Raises TurnError for a timeout or a transport failure only."""
        tid = os.urandom(12)
        body = list(attrs(tid) if callable(attrs) else attrs)
        key = key256 = None
        signed = auth and bool(self.key)
        if signed and self.sha256_only:
            body += [
                self._identity(),
                (stun.ATTR_REALM, stun.encode_text(self.realm)),
                (stun.ATTR_NONCE, stun.encode_text(self.nonce)),
                (stun.ATTR_PASSWORD_ALGORITHMS, self.password_algorithms),
                (
                    stun.ATTR_PASSWORD_ALGORITHM,
                    stun.encode_password_algorithm(stun.PASSWORD_ALGORITHM_SHA256),
                ),
            ]
            key256 = self.key
        elif signed:
            body += [
                (stun.ATTR_USERNAME, stun.encode_text(self.username)),
                (stun.ATTR_REALM, stun.encode_text(self.realm)),
                (stun.ATTR_NONCE, stun.encode_text(self.nonce)),
            ]
            key = self.key
        data = stun.encode_message(
            method,
            stun.CLASS_REQUEST,
            tid,
            body,
            integrity_key=key,
            integrity_sha256_key=key256,
            fingerprint=True,
        )
        fut: asyncio.Future[stun.Message] = asyncio.get_running_loop().create_future()
        self._pending[tid] = fut
        deadline = time.monotonic() + self.timeout
        rto = RTO
        try:
            while True:
                if self._error:
                    raise TurnError(self._error, self._error)
                self.send_raw(data)
                self.bytes_sent += len(data)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TurnError("timeout", f"no answer within {self.timeout:g} s")
                wait = min(rto, left) if self.transport in ("udp", "dtls") else left
                try:
                    resp = await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise TurnError("timeout", f"no answer within {self.timeout:g} s") from None
                    rto *= 2
                    continue
                signed_answer = resp.cls == stun.CLASS_SUCCESS
                if key256 is not None and signed_answer and not resp.check_integrity_sha256(key256):
                    raise TurnError("integrity", "answer not signed with SHA-256", resp)
                return resp
        finally:
            self._pending.pop(tid, None)

    def _identity(self) -> tuple[int, bytes]:
        features = stun.nonce_features(self.nonce) or 0
        if self.use_userhash and features & stun.SECURITY_FEATURE_USERNAME_ANONYMITY:
            return stun.ATTR_USERHASH, userhash(self.username, self.realm)
        return stun.ATTR_USERNAME, stun.encode_text(self.username)

    def accept_challenge(self, resp: stun.Message) -> None:
        """Take a 401/438's NONCE (and, RFC 8489 only, its PASSWORD-ALGORITHMS). A SHA-256-only
        client refuses a challenge that hides or drops SHA-256 (9.2.5: a bid-down attempt)."""
        self.nonce = text(resp, stun.ATTR_NONCE)
        if not self.sha256_only:
            return
        features = stun.nonce_features(self.nonce)
        offer = resp.get(stun.ATTR_PASSWORD_ALGORITHMS)
        if features is None or not features & stun.SECURITY_FEATURE_PASSWORD_ALGORITHMS:
            raise TurnError("downgrade", "no RFC 8489 nonce cookie: SHA-256 not offered", resp)
        if offer is None:
            raise TurnError("downgrade", "nonce cookie without PASSWORD-ALGORITHMS", resp)
        algorithms = [alg for alg, _ in stun.decode_password_algorithms(offer)]
        if stun.PASSWORD_ALGORITHM_SHA256 not in algorithms:
            raise TurnError("downgrade", "PASSWORD-ALGORITHMS lacks SHA-256", resp)
        self.password_algorithms = bytes(offer)

    def login(self, username: str, password: str, realm: str, nonce: str) -> None:
        self.username, self.realm, self.nonce = username, realm, nonce
        sha256 = self.sha256_only
        algorithm = stun.PASSWORD_ALGORITHM_SHA256 if sha256 else stun.PASSWORD_ALGORITHM_MD5
        self.key = long_term_key(username, realm, password, algorithm)

    async def binding(self) -> Addr:
        resp = await self.request(stun.METHOD_BINDING, auth=False)
        check(resp, "Binding")
        return mapped_address(resp)

    async def challenge(self) -> stun.Message:
        """An Allocate without credentials: the server's 401 with REALM and NONCE."""
        return await self.request(stun.METHOD_ALLOCATE, udp_transport(), auth=False)

    async def allocate(self, username: str, password: str) -> stun.Message:
        """Challenge, then an authenticated Allocate (retried once on 438 Stale Nonce). The
        final response is returned, success or error."""
        resp = await self.challenge()
        if error_code(resp)[0] != 401:
            return resp
        self.accept_challenge(resp)
        self.login(username, password, text(resp, stun.ATTR_REALM), self.nonce)
        for _ in range(2):
            resp = await self.request(stun.METHOD_ALLOCATE, udp_transport())
            if error_code(resp)[0] != 438:
                break
            self.accept_challenge(resp)
        return resp

    async def create_permission(self, peer: Addr) -> stun.Message:
        return await self.request(stun.METHOD_CREATE_PERMISSION, lambda tid: [peer_attr(peer, tid)])

    async def channel_bind(self, peer: Addr, channel: int = CHANNEL) -> stun.Message:
        return await self.request(
            stun.METHOD_CHANNEL_BIND,
            lambda tid: [
                (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(channel)),
                peer_attr(peer, tid),
            ],
        )

    async def refresh(self, lifetime: int = 600) -> stun.Message:
        return await self.request(
            stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, stun.encode_u32(lifetime))]
        )

    def send_channel_data(self, payload: bytes, channel: int = CHANNEL) -> None:
        data = stun.encode_channel_data(channel, payload)
        self.send_raw(data)
        self.bytes_sent += len(data)

    async def receive_channel_data(self, timeout: float | None = None) -> tuple[int, bytes]:
        return await asyncio.wait_for(self.channel_data.get(), timeout or self.timeout)


def check(resp: stun.Message, what: str) -> None:
    if resp.cls != stun.CLASS_SUCCESS:
        code, reason = error_code(resp)
        raise TurnError("error", f"{what} failed: {code} {reason}", resp)


def text(msg: stun.Message, attr: int) -> str:
    value = msg.get(attr)
    return stun.decode_text(value) if value is not None else ""


def mapped_address(msg: stun.Message) -> Addr:
    value = msg.get(stun.ATTR_XOR_MAPPED_ADDRESS)
    if value is not None:
        return stun.decode_xor_address(value, msg.transaction_id)
    value = msg.get(stun.ATTR_MAPPED_ADDRESS)
    return stun.decode_address(value) if value is not None else ("", 0)


def relayed_address(msg: stun.Message) -> Addr:
    value = msg.get(stun.ATTR_XOR_RELAYED_ADDRESS)
    return stun.decode_xor_address(value, msg.transaction_id) if value else ("", 0)


def udp_transport() -> list[tuple[int, bytes]]:
    return [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(stun.TRANSPORT_UDP))]


def peer_attr(peer: Addr, tid: bytes) -> tuple[int, bytes]:
    return stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)
