"""Bursts from a peer leave the relay as GSO batches: every datagram must still reach the
client whole, alone and in order, whatever the mix of sizes and of channel/indication traffic."""

from __future__ import annotations

import asyncio
import socket

from turnclient import RawTurnClient

from stunner_dp import stun
from stunner_dp.net import gso
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
