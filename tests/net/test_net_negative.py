"""Check 5: error responses over real sockets, from a raw client built on stunner_dp.stun."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from helpers.turnclient import RawTurnClient, error_code, peer_attr, udp_transport

from stunner_dp import stun
from stunner_dp.testing import ephemeral_credentials, start_turn_server, udp_echo_peer
from stunner_dp.turn.auth import Nonces, long_term_key, nonce_binding

SECRET = "negative-test-secret"


async def test_wrong_password_gets_401() -> None:
    async with start_turn_server() as ts, RawTurnClient(ts.address) as client:
        await client.challenge()
        client.login(ts.username, ts.password + "-wrong")
        resp = await client.request(stun.METHOD_ALLOCATE, udp_transport())
        assert error_code(resp) == 401
        assert ts.server.allocation_count == 0
        # the right password on the same socket then works: the 401 came from the password
        client.login(ts.username, ts.password)
        resp = await client.request(stun.METHOD_ALLOCATE, udp_transport())
        assert error_code(resp) == 0
        assert ts.server.allocation_count == 1


async def test_unknown_user_gets_401() -> None:
    async with start_turn_server() as ts, RawTurnClient(ts.address) as client:
        await client.challenge()
        client.login("somebody-else", ts.password)
        resp = await client.request(stun.METHOD_ALLOCATE, udp_transport())
        assert error_code(resp) == 401


async def test_expired_ephemeral_username_gets_401() -> None:
    async with (
        start_turn_server(auth_type="ephemeral", secret=SECRET) as ts,
        RawTurnClient(ts.address) as client,
    ):
        await client.challenge()
        # a password that is right for the username, but the username expired a minute ago
        client.login(*ephemeral_credentials(SECRET, "late", ttl=-60))
        resp = await client.request(stun.METHOD_ALLOCATE, udp_transport())
        assert error_code(resp) == 401
        assert ts.server.allocation_count == 0
        async with RawTurnClient(ts.address) as client:
            # control: fresh credentials from the same secret allocate
            await client.allocate(*ephemeral_credentials(SECRET, "early", ttl=600))
            assert ts.server.allocation_count == 1


async def test_ephemeral_password_from_another_secret_gets_401() -> None:
    async with (
        start_turn_server(auth_type="ephemeral", secret=SECRET) as ts,
        RawTurnClient(ts.address) as client,
    ):
        await client.challenge()
        client.login(*ephemeral_credentials("not-the-secret", "mallory"))
        resp = await client.request(stun.METHOD_ALLOCATE, udp_transport())
        assert error_code(resp) == 401


@pytest.mark.parametrize(
    "peer", [("10.1.2.3", 5000), ("192.168.1.1", 5000), ("8.8.8.8", 53), ("169.254.169.254", 80)]
)
async def test_peer_outside_every_cluster_gets_403(peer: tuple[str, int]) -> None:
    # the default test cluster allows 127.0.0.0/8 and ::1 only
    async with start_turn_server() as ts, RawTurnClient(ts.address) as client:
        await client.allocate(ts.username, ts.password)
        resp = await client.create_permission(peer)
        assert error_code(resp) == 403
        resp = await client.channel_bind(0x4000, peer)
        assert error_code(resp) == 403
        # control: a loopback peer is inside the cluster
        resp = await client.create_permission(("127.0.0.1", 5000))
        assert error_code(resp) == 0


@pytest.mark.parametrize("peer_ip", ["::ffff:127.0.0.1", "127.0.0.1", "::ffff:10.0.0.1"])
async def test_special_peers_against_public_only_cluster_get_403(peer_ip: str) -> None:
    async with (
        start_turn_server(endpoints=["0.0.0.0/0", "::/0"]) as ts,
        RawTurnClient(ts.address) as client,
    ):
        await client.allocate(ts.username, ts.password)
        resp = await client.create_permission((peer_ip, 5000))
        assert error_code(resp) == 403
        # control: a global address is allowed by the same config
        resp = await client.create_permission(("8.8.8.8", 53))
        assert error_code(resp) == 0


async def test_stale_nonce_gets_438() -> None:
    nonce_secret = os.urandom(32)
    async with (
        start_turn_server(nonce_secret=nonce_secret) as ts,
        RawTurnClient(ts.address) as client,
    ):
        await client.challenge()
        client.login(ts.username, ts.password)
        mine = nonce_binding("udp", client.local_address)
        stale = Nonces(nonce_secret).issue(time.time() - 700, mine)
        resp = await client.request(stun.METHOD_ALLOCATE, udp_transport(), nonce=stale)
        assert error_code(resp) == 438
        # the 438 carries a fresh nonce, which then works
        fresh = stun.decode_text(resp.get(stun.ATTR_NONCE) or b"")
        assert fresh and fresh != stale
        resp = await client.request(stun.METHOD_ALLOCATE, udp_transport(), nonce=fresh)
        assert error_code(resp) == 0


async def test_nonce_from_another_server_is_rejected() -> None:
    async with start_turn_server() as ts, RawTurnClient(ts.address) as client:
        await client.challenge()
        client.login(ts.username, ts.password)
        forged = Nonces(b"some other secret").issue(
            time.time(), nonce_binding("udp", client.local_address)
        )
        resp = await client.request(stun.METHOD_ALLOCATE, udp_transport(), nonce=forged)
        assert error_code(resp) in (401, 438)
        assert ts.server.allocation_count == 0


MALFORMED = [
    b"",
    b"\x00",
    b"\x00\x01\x00\x00",  # a header cut short
    b"\x00\x01\x00\x00\x21\x12\xa4\x43" + bytes(12),  # bad magic cookie
    b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12),  # length beyond the datagram
    b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x80\x28\x00\x04\xde\xad\xbe\xef",
    b"\x40\x00\x00\x10abc",  # ChannelData without an allocation, too short
    os.urandom(200),
]


async def test_malformed_datagrams_then_good_request_is_answered() -> None:
    # another client's allocation, with a channel to the echo peer
    async with (
        start_turn_server() as ts,
        udp_echo_peer() as peer,
        RawTurnClient(ts.address) as other,
        RawTurnClient(ts.address) as client,
    ):
        await other.allocate(ts.username, ts.password)
        assert error_code(await other.channel_bind(0x4001, peer)) == 0

        for junk in MALFORMED:
            client.send_raw(junk)
        # the same client, right after the junk: a Binding and an Allocate are answered
        tid = os.urandom(12)
        binding = stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, tid)
        resp = await client.transact(binding, tid)
        assert resp.cls == stun.CLASS_SUCCESS
        mapped = resp.get(stun.ATTR_XOR_MAPPED_ADDRESS)
        assert mapped is not None
        assert stun.decode_xor_address(mapped, tid) == client.local_address
        await client.allocate(ts.username, ts.password)

        # junk that looks like it comes from an allocated client changes nothing either
        for junk in MALFORMED:
            other.send_raw(junk)
        other.send_channel_data(0x4001, b"still relaying")
        data = await other.next_unsolicited()
        channel, payload = stun.parse_channel_data(data)
        assert (channel, payload) == (0x4001, b"still relaying")
        assert ts.server.allocation_count == 2


async def test_send_and_data_indications_reach_the_peer() -> None:
    """The relay path the negative tests rely on, by indications (no channel)."""
    async with (
        start_turn_server() as ts,
        udp_echo_peer() as peer,
        RawTurnClient(ts.address) as client,
    ):
        await client.allocate(ts.username, ts.password)
        assert error_code(await client.create_permission(peer)) == 0
        tid = os.urandom(12)
        send = stun.encode_message(
            stun.METHOD_SEND,
            stun.CLASS_INDICATION,
            tid,
            [peer_attr(peer)(tid), (stun.ATTR_DATA, b"hello peer")],
        )
        client.send_raw(send)
        data = await client.next_unsolicited()
        msg = stun.parse_message(data)
        assert (msg.method, msg.cls) == (stun.METHOD_DATA, stun.CLASS_INDICATION)
        assert msg.get(stun.ATTR_DATA) == b"hello peer"
        peer_value = msg.get(stun.ATTR_XOR_PEER_ADDRESS)
        assert peer_value is not None
        assert stun.decode_xor_address(peer_value, msg.transaction_id) == peer


async def test_peer_without_permission_is_not_relayed() -> None:
    async with start_turn_server() as ts, RawTurnClient(ts.address) as client:
        relayed = await client.allocate(ts.username, ts.password)
        loop = asyncio.get_running_loop()
        sender, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        try:
            sender.sendto(b"uninvited", relayed)
            with pytest.raises(TimeoutError):
                await client.next_unsolicited(timeout=0.5)
        finally:
            sender.close()


def test_long_term_key_matches_rfc() -> None:
    # RFC 5769 2.4 credentials, as a sanity check of what the raw client sends
    key = long_term_key("\u30de\u30c8\u30ea\u30c3\u30af\u30b9", "example.org", "TheMatrIX")
    assert len(key) == 16


async def test_mapped_loopback_peer_is_judged_as_ipv4() -> None:
    """::ffff:127.0.0.1 is 127.0.0.1: allowed by a loopback cluster, and relayed over IPv4."""
    async with (
        start_turn_server() as ts,
        udp_echo_peer() as peer,
        RawTurnClient(ts.address) as client,
    ):
        await client.allocate(ts.username, ts.password)
        mapped_peer = (f"::ffff:{peer[0]}", peer[1])
        assert error_code(await client.channel_bind(0x4002, mapped_peer)) == 0
        client.send_channel_data(0x4002, b"via mapped address")
        channel, payload = stun.parse_channel_data(await client.next_unsolicited())
        assert (channel, payload) == (0x4002, b"via mapped address")
