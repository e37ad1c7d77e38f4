"""The server with `admin.offload_engine: TC` on lo: ChannelData relayed by the kernel, kept
true to the state machine (every way a channel ends removes its entry at once), counted in the
same metrics, and turned on and off live without dropping an allocation.

Proof that the kernel relayed: the channel's own counters are bumped only by the Python hot
paths until `Server.stats()` folds the kernel's counts in; they stay 0 while the peer and the
client get every packet, and after `stats()` the listener, cluster and offload figures hold
them all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers.fast_path import (
    CH,
    both_ways,
    check_wire_counts,
    delete_allocation,
    expire_channel,
    expire_permission,
    nothing_moves,
    revoke_peer,
    settle,
)
from helpers.gates import require_offload
from helpers.hostile_kit import UdpTurn, code, open_peer, relayed
from helpers.waits import until

from stunner_dp import stun
from stunner_dp.config import parse_config
from stunner_dp.testing import TurnServerHandle, start_turn_server
from stunner_dp.turn import allocation as allocation_module
from stunner_dp.turn.allocation import Channel

N = 200
OFFLOAD = {"offload_engine": "TC", "offload_interfaces": ["lo"]}


def admin(**extra: Any) -> dict[str, Any]:
    return {
        "name": "offload-test",
        "loglevel": "all:INFO",
        "metrics_endpoint": "",
        "healthcheck_endpoint": "",
        **extra,
    }


@asynccontextmanager
async def relay_setup(offload: bool = True) -> AsyncIterator[dict[str, Any]]:
    if offload:
        require_offload()
    peer = await open_peer("127.0.0.1")
    try:
        endpoints = [f"127.0.0.1:<{peer.address[1]}-{peer.address[1]}>"]
        async with (
            start_turn_server(
                protocols=("TURN-UDP",),
                endpoints=endpoints,
                admin=admin(**(OFFLOAD if offload else {})),
                forwarder="python",  # the kernel with Python's own read loops behind it
            ) as ts,
            UdpTurn(ts.address) as c,
        ):
            assert (ts.server.offload.controller is not None) is offload, ts.server.offload.reason
            relay = relayed(await c.allocate())
            assert code(await c.bind(CH, peer.address)) == 0
            yield {"ts": ts, "c": c, "peer": peer, "relay": relay}
    finally:
        if peer.transport is not None:
            peer.transport.close()


def channel(ts: TurnServerHandle, number: int = CH) -> Channel:
    turn = ts.server.turn
    assert turn is not None
    [alloc] = list(turn.all_allocations())
    return alloc.bindings[number]


async def test_the_kernel_relays_every_packet_and_the_metrics_count_them() -> None:
    async with relay_setup() as s:
        ts = s["ts"]
        before = ts.server.stats()
        sent, back = await both_ways(s, N, b"k")
        assert (sent, back) == (N, N)  # zero loss both ways
        chan = channel(ts)
        # the Python hot paths saw none of them (stats() has not folded the kernel's yet)
        assert (chan.out_packets, chan.in_packets) == (0, 0)
        after = ts.server.stats()
        assert chan.out_packets == N and chan.in_packets == N
        off = after.offload
        assert (off.active, off.entries) == (1, 1)
        assert (off.tx_packets, off.rx_packets) == (N, N)
        payload = sum(len(b"k-%d" % i) for i in range(N))
        assert (off.tx_bytes, off.rx_bytes) == (payload, payload)
        check_wire_counts(before, after, N, payload)


async def _stopped(s: dict[str, Any], tag: bytes) -> None:
    """After the channel ended, nothing of `tag` moves either way, in the kernel or in Python."""
    await nothing_moves(s, tag)
    assert s["ts"].server.stats().offload.entries == 0


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


async def test_a_config_that_revokes_the_peer_stops_forwarding_at_once() -> None:
    async with relay_setup() as s:
        assert await both_ways(s, 3, b"a") == (3, 3)
        await revoke_peer(s)
        assert s["ts"].server.offload.controller is not None  # still on, entry gone
        await _stopped(s, b"after-config")


async def test_deleting_the_allocation_stops_forwarding_at_once() -> None:
    async with relay_setup() as s:
        assert await both_ways(s, 3, b"a") == (3, 3)
        totals = s["ts"].server.stats().clusters["peers"]
        await delete_allocation(s)
        await _stopped(s, b"after-delete")
        # the deleted allocation's kernel counts were folded in before it went
        assert s["ts"].server.stats().clusters["peers"].tx_packets == totals.tx_packets == 3


async def test_frames_the_kernel_does_not_take_get_pythons_answers() -> None:
    async with relay_setup() as s:
        ts, c, peer = s["ts"], s["c"], s["peer"]
        controller = ts.server.offload.controller
        assert controller is not None
        reasons0 = controller.engine.pass_reasons()
        peer.got.clear()
        # padded as on TCP (length 3, 4 bytes follow): Python relays the 3 bytes
        c.send(stun.encode_channel_data(CH, b"pad") + b"\0")
        # oversized for the program (> 9216 bytes): Python relays it
        big = b"B" * 10000
        c.send(stun.encode_channel_data(CH, big))
        # a length beyond the datagram: malformed, Python drops it
        c.send(CH.to_bytes(2, "big") + (100).to_bytes(2, "big") + b"short")
        # an unbound channel: Python drops it
        c.send(stun.encode_channel_data(0x4005, b"unbound"))
        await settle(c)
        assert await until(lambda: len(peer.got) >= 2)
        await asyncio.sleep(0.1)
        assert sorted(d for d, _ in peer.got) == sorted([b"pad", big])
        reasons = controller.engine.pass_reasons()
        assert reasons["length"] - reasons0["length"] >= 2  # padded and short
        assert reasons["too_big"] - reasons0["too_big"] >= 1
        assert reasons["no_entry"] - reasons0["no_entry"] >= 1
        chan = channel(ts)
        assert chan.out_packets == 2  # the two Python relayed, counted by Python
        stats = ts.server.stats()
        assert stats.listeners["udp-listener"].dropped >= 2
        assert stats.offload.passed["too_big"].packets >= 1


async def test_live_reconfiguration_turns_it_on_and_off_keeping_the_allocation() -> None:
    async with relay_setup(offload=False) as s:
        require_offload()
        ts = s["ts"]
        assert await both_ways(s, 5, b"py") == (5, 5)
        assert channel(ts).out_packets == 5  # Python relayed
        on = dict(ts.config, admin=admin(**OFFLOAD))
        await ts.server.apply(parse_config(on))
        assert ts.server.offload.controller is not None
        assert ts.server.stats().offload.entries == 1  # the existing channel installed
        assert await both_ways(s, 5, b"kern") == (5, 5)
        assert channel(ts).out_packets == 5  # not Python
        assert ts.server.stats().offload.tx_packets == 5
        await ts.server.apply(parse_config(dict(ts.config, admin=admin())))
        assert ts.server.offload.controller is None
        assert channel(ts).out_packets == 10  # the kernel's folded in at removal
        assert await both_ways(s, 5, b"back-to-py") == (5, 5)
        assert channel(ts).out_packets == 15
        assert ts.server.allocation_count == 1


async def test_xdp_is_served_as_tc_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    require_offload()
    config = dict(admin=admin(offload_engine="XDP", offload_interfaces=["lo"]))
    async with start_turn_server(protocols=("TURN-UDP",), **config) as ts:
        assert ts.server.offload.controller is not None
    out = capsys.readouterr().out
    assert out.count("XDP offload is not supported, using TC") == 1, out


async def test_a_server_stops_with_its_program_detached() -> None:
    require_offload()
    async with start_turn_server(protocols=("TURN-UDP",), admin=admin(**OFFLOAD)) as ts:
        controller = ts.server.offload.controller
        assert controller is not None and controller.engine.attachments
    assert controller.engine.closed and ts.server.offload.controller is None
