"""Shared by the compiled-forwarder tests: the CI gate, a server whose UDP media path runs in
the forwarder thread, and the proof that the thread (not Python) relayed.

Proof that the thread relayed: a channel's own counters are bumped by the Python hot paths
only, until `Server.stats()` folds the thread's per-entry counts in (as the kernel fast
path's are). So with every packet delivered and those counters still 0 before the first
`stats()`, no packet went through Python."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers.hostile_kit import PeerSocket, UdpTurn, code, open_peer, relayed

from stunner_dp import stun
from stunner_dp.forwarder import forwarder_unavailable_reason
from stunner_dp.testing import TurnServerHandle, start_turn_server
from stunner_dp.turn.allocation import Allocation, Channel

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CH = 0x4000


def require_forwarder() -> None:
    """Skip where the shared object cannot load; in CI that is a failure, not a skip."""
    reason = forwarder_unavailable_reason()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"the compiled forwarder must be testable in CI: {reason}")
    pytest.skip(f"compiled forwarder unavailable here: {reason}")


def admin(**extra: Any) -> dict[str, Any]:
    return {
        "name": "forwarder-test",
        "loglevel": "all:INFO",
        "metrics_endpoint": "",
        "healthcheck_endpoint": "",
        **extra,
    }


@asynccontextmanager
async def compiled_server(
    host: str = "127.0.0.1", forwarder: str = "compiled", **overrides: Any
) -> AsyncIterator[TurnServerHandle]:
    """TURN-UDP on `host` with the compiled forwarder checked to be running (or, with
    forwarder="python", checked to be off: the reference the compiled path must match)."""
    if forwarder != "python":
        require_forwarder()
    overrides.setdefault("protocols", ("TURN-UDP",))
    overrides.setdefault("admin", admin())
    async with start_turn_server(host=host, forwarder=forwarder, **overrides) as ts:
        if forwarder == "python":
            assert ts.server.forwarder is None
        else:
            assert ts.server.forwarder is not None, "forwarder='compiled' but none runs"
            assert ts.server.forwarder.forwarder.running
        yield ts


def allocations(ts: TurnServerHandle) -> list[Allocation]:
    turn = ts.server.turn
    assert turn is not None
    return list(turn.all_allocations())


def channels(ts: TurnServerHandle) -> list[Channel]:
    return [ch for alloc in allocations(ts) for ch in alloc.bindings.values()]


def python_relayed(ts: TurnServerHandle) -> tuple[int, int]:
    """(to peers, to clients) counted by the Python hot paths (before any stats() fold)."""
    chans = channels(ts)
    return sum(c.out_packets for c in chans), sum(c.in_packets for c in chans)


@asynccontextmanager
async def relay_setup(
    host: str = "127.0.0.1", forwarder: str = "compiled", **overrides: Any
) -> AsyncIterator[dict[str, Any]]:
    """A compiled-forwarder server whose cluster allows one peer (its port only), a client with
    an allocation and channel CH bound to that peer, the entry installed."""
    peer = await open_peer(host)
    try:
        port = peer.address[1]
        endpoints = [f"[{host}]:<{port}-{port}>" if ":" in host else f"{host}:<{port}-{port}>"]
        async with (
            compiled_server(host, forwarder, endpoints=endpoints, **overrides) as ts,
            UdpTurn(ts.address, (host, 0)) as c,
        ):
            relay = relayed(await c.allocate())
            assert code(await c.bind(CH, peer.address)) == 0
            assert ts.server.stats().forwarder.entries == (forwarder != "python")
            yield {"ts": ts, "c": c, "peer": peer, "relay": relay}
    finally:
        if peer.transport is not None:
            peer.transport.close()


async def settle(c: UdpTurn) -> None:
    """A Binding answered after what was sent before it: the server (its thread, then Python,
    in arrival order) handled those; a short pause lets lo deliver what they sent on."""
    assert (await c.ask(stun.METHOD_BINDING, auth=False)).cls == stun.CLASS_SUCCESS
    await asyncio.sleep(0.05)


def tagged(peer: PeerSocket, tag: bytes) -> int:
    return sum(d.startswith(tag) for d, _ in peer.got)


async def both_ways(s: dict[str, Any], n: int, tag: bytes) -> tuple[int, int]:
    """Send n each way; (datagrams the peer got, ChannelData on CH the client got) with `tag`."""
    c, peer, relay = s["c"], s["peer"], s["relay"]
    peer.got.clear()
    for i in range(n):
        c.send(stun.encode_channel_data(CH, tag + b"-%d" % i))
    for _ in range(300):  # bounded: 3 s
        if tagged(peer, tag) >= n:
            break
        await asyncio.sleep(0.01)
    for i in range(n):
        peer.sendto(tag + b"-%d" % i, relay)
    got = await c.received(0.3)
    back = [g for g in got if g[4:].startswith(tag) and g[:2] == CH.to_bytes(2, "big")]
    return tagged(peer, tag), len(back)
