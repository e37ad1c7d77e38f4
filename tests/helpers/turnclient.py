"""A small TURN client for tests: stunner_dp.stun encodes and decodes, real UDP sockets carry.

It does what a test needs to provoke each response code: the 401 challenge, authenticated
requests with any username/key/nonce, raw datagrams, and a queue of what arrives unasked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from stunner_dp import stun
from stunner_dp.turn.auth import long_term_key

Attr = tuple[int, bytes] | Callable[[bytes], tuple[int, bytes]]
TIMEOUT = 2.0  # seconds to wait for one response; loopback answers in microseconds


class _Proto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.pending: dict[bytes, asyncio.Future[stun.Message]] = {}
        self.unsolicited: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, Any]) -> None:
        if stun.is_stun(data):
            try:
                msg = stun.parse_message(data)
            except stun.StunError:
                return
            fut = self.pending.pop(msg.transaction_id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
                return
        self.unsolicited.put_nowait(data)


class RawTurnClient:
    """One UDP client socket talking to one TURN server."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.proto = _Proto()
        # long-term credential state once authenticated
        self.username = ""
        self.realm = ""
        self.nonce = ""
        self.key = b""

    async def __aenter__(self) -> RawTurnClient:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self.proto, remote_addr=self.server
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def send_raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def transact(self, data: bytes, tid: bytes, timeout: float = TIMEOUT) -> stun.Message:
        fut: asyncio.Future[stun.Message] = asyncio.get_running_loop().create_future()
        self.proto.pending[tid] = fut
        self.send_raw(data)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.proto.pending.pop(tid, None)

    async def request(
        self,
        method: int,
        attrs: list[Attr] | None = None,
        *,
        auth: bool = True,
        username: str | None = None,
        nonce: str | None = None,
        key: bytes | None = None,
    ) -> stun.Message:
        """Send one request (with the credential attributes unless auth=False); the answer."""
        tid = os.urandom(12)
        body = [a(tid) if callable(a) else a for a in attrs or []]
        integrity = None
        if auth:
            body += [
                (stun.ATTR_USERNAME, stun.encode_text(username or self.username)),
                (stun.ATTR_REALM, stun.encode_text(self.realm)),
                (stun.ATTR_NONCE, stun.encode_text(self.nonce if nonce is None else nonce)),
            ]
            integrity = key if key is not None else self.key
        data = stun.encode_message(
            method, stun.CLASS_REQUEST, tid, body, integrity_key=integrity, fingerprint=True
        )
        return await self.transact(data, tid)

    async def challenge(self) -> stun.Message:
        """An unauthenticated Allocate: the 401 that carries REALM and NONCE."""
        resp = await self.request(method=stun.METHOD_ALLOCATE, attrs=udp_transport(), auth=False)
        assert error_code(resp) == 401, error_code(resp)
        self.realm = stun.decode_text(resp.get(stun.ATTR_REALM) or b"")
        self.nonce = stun.decode_text(resp.get(stun.ATTR_NONCE) or b"")
        return resp

    def login(self, username: str, password: str) -> None:
        self.username = username
        self.key = long_term_key(username, self.realm, password)

    async def allocate(self, username: str, password: str) -> tuple[str, int]:
        """Challenge, then Allocate a UDP relay; the relayed address."""
        await self.challenge()
        self.login(username, password)
        resp = await self.request(stun.METHOD_ALLOCATE, udp_transport())
        assert resp.cls == stun.CLASS_SUCCESS, error_code(resp)
        assert resp.check_integrity(self.key)
        value = resp.get(stun.ATTR_XOR_RELAYED_ADDRESS)
        assert value is not None
        return stun.decode_xor_address(value, resp.transaction_id)

    async def create_permission(self, peer: tuple[str, int]) -> stun.Message:
        return await self.request(stun.METHOD_CREATE_PERMISSION, [peer_attr(peer)])

    async def channel_bind(self, channel: int, peer: tuple[str, int]) -> stun.Message:
        attrs = [(stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(channel)), peer_attr(peer)]
        return await self.request(stun.METHOD_CHANNEL_BIND, attrs)

    def send_channel_data(self, channel: int, payload: bytes) -> None:
        self.send_raw(stun.encode_channel_data(channel, payload))

    async def next_unsolicited(self, timeout: float = TIMEOUT) -> bytes:
        return await asyncio.wait_for(self.proto.unsolicited.get(), timeout)


def udp_transport() -> list[Attr]:
    return [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(stun.TRANSPORT_UDP))]


def peer_attr(peer: tuple[str, int]) -> Attr:
    """XOR-PEER-ADDRESS: XORed with the transaction id, so built once the request has one."""
    return lambda tid: (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid))


def error_code(msg: stun.Message) -> int:
    """The ERROR-CODE of a response, 0 for a success."""
    if msg.cls == stun.CLASS_SUCCESS:
        return 0
    value = msg.get(stun.ATTR_ERROR_CODE)
    assert value is not None, "error response without ERROR-CODE"
    return stun.decode_error_code(value)[0]
