"""Bursts from a peer leave the relay as GSO batches: every datagram must still reach the
client whole, alone and in order, whatever the mix of sizes and of channel/indication traffic."""

from __future__ import annotations

import asyncio
import socket

import pytest
from helpers.turnclient import RawTurnClient

from stunner_dp import stun
from stunner_dp.net import gso
from stunner_dp.net.relay import RelaySocket
from stunner_dp.testing import TurnServerHandle

CHANNEL = 0x4001


def burst_sizes() -> list[int]:
    # equal runs, a shorter frame ending a run, a longer one starting the next, and a run
    # longer than the kernel's 64 segments; small enough in all for the sockets' default
    # receive buffers, which hold the whole burst before the server reads it
    return [100] * 10 + [50] + [200] * 5 + [300] * 4 + [120] * 70 + [1000] * 3


async def test_peer_burst_reaches_client_whole_and_in_order(turn_server: TurnServerHandle) -> None:
    assert (
        turn_server.server.relays is not None
        and turn_server.server.relays.gso == gso.gso_supported()
    )
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # permitted, no channel
    peer.bind(("127.0.0.1", 0))
    other.bind(("127.0.0.1", 0))
    try:
        async with RawTurnClient(turn_server.address) as client:
            relay = await client.allocate(turn_server.username, turn_server.password)
            assert (
                await client.channel_bind(CHANNEL, peer.getsockname())
            ).cls == stun.CLASS_SUCCESS
            assert (await client.create_permission(other.getsockname())).cls == stun.CLASS_SUCCESS
            sizes = burst_sizes()
            expected: list[tuple[str, bytes]] = []
            # Sent without yielding to the loop: the whole burst waits in the relay socket and
            # is read in one wake-up, which is what makes batches.
            for i, size in enumerate(sizes):
                payload = i.to_bytes(4, "big") + bytes([i % 251]) * (size - 4)
                peer.sendto(payload, relay)
                expected.append(("channel", payload))
                if i in (12, 60):  # a Data indication in the middle of a run
                    note = b"indication-%d" % i
                    other.sendto(note, relay)
                    expected.append(("data", note))
            received: list[tuple[str, bytes]] = []
            for _ in expected:
                frame = await client.next_unsolicited()
                if stun.is_channel_data(frame):
                    number, payload = stun.parse_channel_data(frame)
                    assert number == CHANNEL
                    assert len(frame) == 4 + len(payload)  # one frame per datagram
                    received.append(("channel", payload))
                else:
                    msg = stun.parse_message(frame)
                    assert msg.method == stun.METHOD_DATA
                    received.append(("data", msg.get(stun.ATTR_DATA) or b""))
            channel_in = [p for kind, p in received if kind == "channel"]
            assert channel_in == [p for kind, p in expected if kind == "channel"]
            assert sorted(p for kind, p in received if kind == "data") == sorted(
                p for kind, p in expected if kind == "data"
            )
            await asyncio.sleep(0.05)
            assert client.proto.unsolicited.empty()
    finally:
        peer.close()
        other.close()


async def test_a_batch_the_kernel_refuses_goes_one_by_one(turn_server: TurnServerHandle) -> None:
    # 129 segments is more than any kernel's UDP_MAX_SEGMENTS (64, 128 in newer ones): the
    # kernel answers EINVAL. The relay must fall back, not drop.
    pool = turn_server.server.relays
    assert pool is not None
    if not pool.gso:
        pytest.skip("this kernel has no UDP GSO")
    async with RawTurnClient(turn_server.address) as client:
        await client.allocate(turn_server.username, turn_server.password)
        turn = turn_server.server.turn
        assert turn is not None
        [alloc] = turn.all_allocations()
        relay = alloc.relay
        assert isinstance(relay, RelaySocket)
        frames = b"".join(
            stun.encode_channel_data(CHANNEL, bytes([i % 256]) * 16) for i in range(129)
        )
        relay._send_batch(alloc, memoryview(frames), 20, 129)
        got = [await client.next_unsolicited() for _ in range(129)]
        assert got == [stun.encode_channel_data(CHANNEL, bytes([i % 256]) * 16) for i in range(129)]
        assert pool.gso is True  # EINVAL was this batch's shape, not the device's


async def test_long_frames_after_a_short_one_are_not_batched_past_64k(
    turn_server: TurnServerHandle,
) -> None:
    # A longer frame starts a new batch; two 40,000-byte frames in one batch would be one
    # 80 KB sendmsg, more than a UDP datagram can be before segmentation: the kernel refuses
    # it and both frames would be lost. Each must reach the client.
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    try:
        async with RawTurnClient(turn_server.address) as client:
            assert client.transport is not None
            client.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20
            )
            relay = await client.allocate(turn_server.username, turn_server.password)
            assert (
                await client.channel_bind(CHANNEL, peer.getsockname())
            ).cls == stun.CLASS_SUCCESS
            sizes = [100, 40000, 40000]
            payloads = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
            for payload in payloads:  # without yielding: read in one wake-up
                peer.sendto(payload, relay)
            got = []
            for _ in payloads:
                number, payload = stun.parse_channel_data(await client.next_unsolicited())
                assert number == CHANNEL
                got.append(payload)
            assert got == payloads
    finally:
        peer.close()
