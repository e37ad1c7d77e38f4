"""RFC 8489 SHA-256 against a real server on loopback: a client of our own that speaks only
SHA-256 (PASSWORD-ALGORITHM SHA-256, MESSAGE-INTEGRITY-SHA256, USERHASH) authenticates and
relays; a man in the middle who edits the 401 to bid it down to MD5 gets nowhere (9.2.4)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import cast

import pytest

from stunner_dp import stun
from stunner_dp.client.turn import TurnClient, TurnError, check, error_code, text
from stunner_dp.stun import Message
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, start_turn_server, udp_echo_peer
from stunner_dp.turn.auth import long_term_key

Addr = tuple[str, int]


async def relay_round_trip(client: TurnClient, peer: Addr) -> bytes:
    check(await client.create_permission(peer), "CreatePermission")
    check(await client.channel_bind(peer), "ChannelBind")
    client.send_channel_data(b"sha-256 media")
    _, payload = await client.receive_channel_data(5.0)
    return payload


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("use_userhash", [False, True], ids=["username", "userhash"])
async def test_sha256_only_client_authenticates_and_relays(
    transport: str, use_userhash: bool
) -> None:
    async with start_turn_server() as ts, udp_echo_peer() as peer:
        client = TurnClient(ts.address, transport, timeout=5.0, sha256_only=True)
        client.use_userhash = use_userhash
        async with client:
            resp = await client.allocate(ts.username, ts.password)
            assert error_code(resp) == (0, ""), error_code(resp)
            # the answer came signed with SHA-256 only (the client checked the MAC)
            assert resp.integrity_sha256_offset > 0 and resp.integrity_offset < 0
            assert await relay_round_trip(client, peer) == b"sha-256 media"
            check(await client.refresh(300), "Refresh")


async def test_md5_client_still_works_next_to_it() -> None:
    async with (
        start_turn_server() as ts,
        udp_echo_peer() as peer,
        TurnClient(ts.address, "udp", timeout=5.0) as client,
    ):
        resp = await client.allocate(ts.username, ts.password)
        assert error_code(resp) == (0, "")
        assert resp.integrity_offset > 0 and resp.integrity_sha256_offset < 0
        assert resp.check_integrity(long_term_key(DEFAULT_USERNAME, ts.realm, ts.password))
        assert await relay_round_trip(client, peer) == b"sha-256 media"


# -- a man in the middle --------------------------------------------------------------------

Rewrite = Callable[[Message], list[tuple[int, bytes]]]


class _Mitm(asyncio.DatagramProtocol):
    """A UDP relay between one client and the server that rewrites the server's 401/438
    challenges (unsigned answers, so a man in the middle can) with `rewrite`."""

    def __init__(self, server: Addr, rewrite: Rewrite) -> None:
        self.server, self.rewrite = server, rewrite
        self.client: Addr | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.rewritten = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # need not subclass it

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        assert self.transport is not None
        if addr != self.server:
            self.client = addr
            self.transport.sendto(data, self.server)
            return
        if self.client is None:
            return
        msg = stun.parse_message(data)
        if msg.cls == stun.CLASS_ERROR and error_code(msg)[0] in (401, 438):
            attrs = self.rewrite(msg)
            data = stun.encode_message(
                msg.method, msg.cls, msg.transaction_id, attrs, fingerprint=True
            )
            self.rewritten += 1
        self.transport.sendto(data, self.client)


def _attrs(msg: Message) -> list[tuple[int, bytes]]:
    return [(t, v) for t, v in msg.attributes if t != stun.ATTR_FINGERPRINT]


def sha256_removed(msg: Message) -> list[tuple[int, bytes]]:
    md5_only = stun.encode_password_algorithms([(stun.PASSWORD_ALGORITHM_MD5, b"")])
    return [(t, md5_only if t == stun.ATTR_PASSWORD_ALGORITHMS else v) for t, v in _attrs(msg)]


def list_removed(msg: Message) -> list[tuple[int, bytes]]:
    return [(t, v) for t, v in _attrs(msg) if t != stun.ATTR_PASSWORD_ALGORITHMS]


def bits_stripped(msg: Message) -> list[tuple[int, bytes]]:
    out = list_removed(msg)
    return [(t, b"obMatJos2AAAA" + v[13:] if t == stun.ATTR_NONCE else v) for t, v in out]


async def through_mitm(ts_address: Addr, rewrite: Rewrite) -> tuple[_Mitm, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    transport, mitm = await loop.create_datagram_endpoint(
        lambda: _Mitm(ts_address, rewrite), local_addr=("127.0.0.1", 0)
    )
    return mitm, transport


@pytest.mark.parametrize("rewrite", [sha256_removed, list_removed, bits_stripped])
async def test_sha256_only_client_refuses_a_bid_down(rewrite: Rewrite) -> None:
    async with start_turn_server() as ts:
        mitm, transport = await through_mitm(ts.address, rewrite)
        try:
            addr = transport.get_extra_info("sockname")
            async with TurnClient((addr[0], addr[1]), "udp", timeout=5.0, sha256_only=True) as c:
                with pytest.raises(TurnError) as caught:
                    await c.allocate(ts.username, ts.password)
                assert caught.value.kind == "downgrade"
            assert mitm.rewritten == 1
            assert ts.server.allocation_count == 0
        finally:
            transport.close()


async def raw_request(client: TurnClient, attrs: list[tuple[int, bytes]], key: bytes) -> Message:
    """An Allocate built by hand, signed with MESSAGE-INTEGRITY (an RFC 8489 client that took
    MD5 from a doctored offer), through the client's socket."""
    tid = os.urandom(12)
    data = stun.encode_message(
        stun.METHOD_ALLOCATE, stun.CLASS_REQUEST, tid, attrs, integrity_key=key, fingerprint=True
    )
    fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    client._pending[tid] = fut
    client.send_raw(data)
    return await asyncio.wait_for(fut, 5.0)


async def test_server_refuses_an_echoed_doctored_offer_and_stripped_bits() -> None:
    """The server's side of 9.2.4 on a real server: a client that believed a doctored 401 and
    echoes its MD5-only PASSWORD-ALGORITHMS gets 400; one that echoes a nonce whose feature
    bits were stripped gets 438. Neither allocates."""
    async with start_turn_server() as ts, TurnClient(ts.address, "udp", timeout=5.0) as client:
        challenge = await client.challenge()
        nonce = text(challenge, stun.ATTR_NONCE)
        key = long_term_key(DEFAULT_USERNAME, ts.realm, DEFAULT_PASSWORD)
        base = [
            (stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(17)),
            (stun.ATTR_USERNAME, DEFAULT_USERNAME.encode()),
            (stun.ATTR_REALM, ts.realm.encode()),
        ]
        md5 = stun.PASSWORD_ALGORITHM_MD5
        doctored = [
            *base,
            (stun.ATTR_NONCE, nonce.encode()),
            (stun.ATTR_PASSWORD_ALGORITHMS, stun.encode_password_algorithms([(md5, b"")])),
            (stun.ATTR_PASSWORD_ALGORITHM, stun.encode_password_algorithm(md5)),
        ]
        assert error_code(await raw_request(client, doctored, key))[0] == 400
        stripped = [*base, (stun.ATTR_NONCE, ("obMatJos2AAAA" + nonce[13:]).encode())]
        assert error_code(await raw_request(client, stripped, key))[0] == 438
        # the honest MD5 request (no PASSWORD-ALGORITHM(S)) under the real nonce succeeds
        honest = [*base, (stun.ATTR_NONCE, nonce.encode())]
        assert error_code(await raw_request(client, honest, key)) == (0, "")
