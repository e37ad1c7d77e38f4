"""A server with forwarder="compiled": ChannelData relayed by the C thread both ways, counted
in the same metrics once `stats()` folds the thread's counts in, kept true to the state machine
(every way a channel ends removes its entry at once, both directions), and every frame the
thread does not take answered by Python as without it. The model is
tests/offload/test_server_offload.py: the compiled path must meet the kernel path's checks."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from helpers.fast_path import (
    CH,
    both_ways,
    channels,
    check_wire_counts,
    delete_allocation,
    expire_channel,
    expire_permission,
    nothing_moves,
    python_relayed,
    revoke_peer,
    settle,
)
from helpers.hostile_kit import UdpTurn, code, open_peer, relayed
from helpers.waits import until

from forwarder.kit import relay_setup
from stunner_dp import stun
from stunner_dp.turn import allocation as allocation_module

N = 200


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
async def test_the_thread_relays_every_packet_and_the_metrics_count_them(host: str) -> None:
    async with relay_setup(host) as s:
        ts = s["ts"]
        before = ts.server.stats()
        handed0 = before.forwarder.handed_off
        assert await both_ways(s, N, b"f") == (N, N)  # zero loss both ways
        # the Python hot paths saw none of them (stats() has not folded the thread's yet)
        assert python_relayed(ts) == (0, 0)
        after = ts.server.stats()
        assert python_relayed(ts) == (N, N)
        fwd = after.forwarder
        assert (fwd.active, fwd.entries, fwd.installs, fwd.install_failures) == (1, 1, 1, 0)
        assert (fwd.tx_packets, fwd.rx_packets) == (N, N)
        payload = sum(len(b"f-%d" % i) for i in range(N))
        assert (fwd.tx_bytes, fwd.rx_bytes) == (payload, payload)
        assert fwd.handed_off == handed0  # not one of the 2N went to Python
        assert fwd.handoff_dropped == 0
        check_wire_counts(before, after, N, payload)
        assert ts.server.stats().forwarder.tx_packets == N  # a second fold adds nothing


async def _stopped(s: dict[str, Any], tag: bytes) -> None:
    """After the channel ended, nothing of `tag` moves either way, in the thread or in Python,
    and the entry is gone."""
    ts = s["ts"]
    tx0 = ts.server.stats().forwarder.tx_packets
    await nothing_moves(s, tag)
    fwd = ts.server.stats().forwarder
    assert (fwd.entries, fwd.tx_packets) == (0, tx0)


async def test_an_expired_permission_stops_forwarding_at_once() -> None:
    async with relay_setup() as s:
        assert await both_ways(s, 3, b"a") == (3, 3)
        expire_permission(s)
        await _stopped(s, b"after-permission")


async def test_an_expired_channel_stops_forwarding_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocation_module, "CHANNEL_LIFETIME", 60.0)
    async with relay_setup() as s:
        assert await both_ways(s, 3, b"a") == (3, 3)
        expire_channel(s, monkeypatch)
        await _stopped(s, b"after-channel")
        # the permission lives: the peer's datagrams come as Data indications now
        s["peer"].sendto(b"as-indication", s["relay"])
        got = await s["c"].received(0.3)
        assert any(stun.is_stun(g) and b"as-indication" in g for g in got), got


async def test_a_config_that_revokes_the_peer_stops_forwarding_at_once() -> None:
    async with relay_setup() as s:
        assert await both_ways(s, 3, b"a") == (3, 3)
        await revoke_peer(s)
        assert s["ts"].server.forwarder is not None  # still on, the entry gone
        await _stopped(s, b"after-config")


async def test_deleting_the_allocation_stops_forwarding_at_once() -> None:
    async with relay_setup() as s:
        ts = s["ts"]
        assert await both_ways(s, 3, b"a") == (3, 3)
        await delete_allocation(s)
        assert ts.server.allocation_count == 0
        await _stopped(s, b"after-delete")
        # the deleted allocation's thread counts were folded in before its entry went
        assert ts.server.stats().clusters["peers"].tx_packets == 3
        assert ts.server.stats().forwarder.tx_packets == 3


@pytest.mark.parametrize("forwarder", ["python", "compiled"])
async def test_frames_the_thread_does_not_take_get_pythons_answers(forwarder: str) -> None:
    """Short, overlong, unbound, STUN and Send: the same answers with the thread as without it
    (each handed to Python), and the thread goes on relaying for this client and another."""
    compiled = forwarder == "compiled"
    async with relay_setup(forwarder=forwarder) as s:
        ts, c, peer, relay = s["ts"], s["c"], s["peer"], s["relay"]
        async with UdpTurn(ts.address) as other:
            other_relay = relayed(await other.allocate())
            assert code(await other.bind(CH, peer.address)) == 0
            stats0 = ts.server.stats()
            peer.got.clear()
            c.send(CH.to_bytes(2, "big") + b"\x00")  # not even a header: the STUN path drops it
            c.send(CH.to_bytes(2, "big") + (100).to_bytes(2, "big") + b"short")  # past the end
            c.send(CH.to_bytes(2, "big") + (9).to_bytes(2, "big") + b"one-long")  # by one byte
            c.send(stun.encode_channel_data(0x4005, b"unbound"))  # nobody bound it: dropped
            c.send_indication(peer.address, b"via-send")  # permitted: Python relays it
            binding = await c.ask(stun.METHOD_BINDING, auth=False)  # answered by Python
            assert binding.cls == stun.CLASS_SUCCESS
            assert binding.get(stun.ATTR_XOR_MAPPED_ADDRESS) is not None
            # a length shorter than the datagram: `length` bytes are relayed (UDP, no padding)
            c.send(stun.encode_channel_data(CH, b"pad") + b"\0")
            c.send(stun.encode_channel_data(CH, b"canary"))
            other.send(stun.encode_channel_data(CH, b"other-canary"))
            await settle(c)
            await settle(other)
            assert await until(lambda: len(peer.got) >= 4)
            await asyncio.sleep(0.1)
            got = sorted(d for d, _ in peer.got)
            assert got == sorted([b"via-send", b"pad", b"canary", b"other-canary"]), got
            # what the peers send back comes as ChannelData (through the thread when it runs)
            peer.sendto(b"back-c", relay)
            peer.sendto(b"back-other", other_relay)
            back_c = await c.received(0.3)
            assert back_c == [stun.encode_channel_data(CH, b"back-c")], back_c
            back = await other.received(0.3)
            assert back == [stun.encode_channel_data(CH, b"back-other")], back
            if compiled:  # the thread carried these three: nothing yet in the channels
                assert python_relayed(ts) == (0, 0)
            stats = ts.server.stats()
            lis, lis0 = stats.listeners["udp-listener"], stats0.listeners["udp-listener"]
            assert lis.dropped - lis0.dropped == 3  # past the end (twice) and unbound
            assert python_relayed(ts) == (3, 2)  # pad, canary, other-canary; both backs
            fwd, fwd0 = stats.forwarder, stats0.forwarder
            if compiled:
                # short, past the end twice, unbound, Send, Binding, the settles' Bindings
                assert fwd.handed_off - fwd0.handed_off == 8
                assert fwd.tx_packets - fwd0.tx_packets == 3
                assert fwd.rx_packets - fwd0.rx_packets == 2
                assert fwd.entries == 2
            else:
                assert (fwd.active, fwd.handed_off, fwd.tx_packets) == (0, 0, 0)


async def test_a_stun_binding_from_a_stranger_is_answered() -> None:
    """Someone without an allocation on the listener the thread reads: Python answers."""
    async with relay_setup() as s:
        async with UdpTurn(s["ts"].address) as stranger:
            answer = await stranger.ask(stun.METHOD_BINDING, auth=False)
            assert answer.cls == stun.CLASS_SUCCESS
            bogus = os.urandom(64)  # neither STUN nor ChannelData: dropped, nothing breaks
            bogus = b"\x90" + bogus[1:]
            stranger.send(bogus)
            assert (await stranger.ask(stun.METHOD_BINDING, auth=False)).cls == stun.CLASS_SUCCESS
        assert await both_ways(s, 5, b"still") == (5, 5)
        assert channels(s["ts"])[0].out_packets == 0  # before stats(): the thread did it


async def test_a_peer_without_permission_is_handed_to_python_and_dropped() -> None:
    async with relay_setup() as s:
        ts, c, relay = s["ts"], s["c"], s["relay"]
        stranger = await open_peer("127.0.0.1")
        try:
            stranger.sendto(b"stranger", relay)
            s["peer"].sendto(b"good", relay)
            got = await c.received(0.3)
            assert got == [stun.encode_channel_data(CH, b"good")], got
            assert ts.server.stats().forwarder.handed_off >= 1
        finally:
            if stranger.transport is not None:
                stranger.transport.close()
