"""Shared by the compiled-forwarder tests: the CI gate, a server whose UDP media path runs in
the forwarder thread, and a client relaying through it. The proof that the thread (not Python)
relayed, and the relaying itself, are helpers.fast_path's (shared with the offload tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from helpers.fast_path import CH
from helpers.gates import require_forwarder
from helpers.hostile_kit import UdpTurn, code, open_peer, relayed

from stunner_dp.testing import TurnServerHandle, start_turn_server


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
