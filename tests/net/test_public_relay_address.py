"""Relay address discovery: XOR-RELAYED-ADDRESS carries the configured public address while
the relay socket binds a local one, and peers reach the relay on the local address.

- `listeners[].public_relay_address` (our extension): advertised; the relay binds `address`;
- `listeners[].address` that is not on this host (what STUNner's operator renders per node
  when the CDS watch names the node): advertised; the relay binds the wildcard. Checked end to
  end: stunnerd asks a CDS server with `node=...` and gets that node's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers.stunnerd_proc import stop, stunnerd_command, wait_ready
from helpers.turnclient import RawTurnClient, error_code

from stunner_dp import stun
from stunner_dp.config import ConfigError, parse_config
from stunner_dp.testing import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    free_port,
    make_config,
    relay_window,
    start_turn_server,
    udp_echo_peer,
)

PUBLIC = "198.18.0.7"  # a node's public address: not on this host (benchmark range)
TIMEOUT = 5.0


async def relay_through(client: RawTurnClient, peer: tuple[str, int], channel: int) -> bytes:
    """Bind `channel` to `peer`, send one ChannelData, return the echoed payload."""
    assert error_code(await client.create_permission(peer)) == 0
    assert error_code(await client.channel_bind(channel, peer)) == 0
    client.send_channel_data(channel, b"through the relay")
    data = await client.next_unsolicited(TIMEOUT)
    number, payload = stun.parse_channel_data(data)
    assert number == channel
    return bytes(payload)


async def test_public_relay_address_is_advertised_and_the_local_one_bound() -> None:
    async with start_turn_server(protocols=("TURN-UDP",)) as ts, udp_echo_peer() as peer:
        config = dict(ts.config)
        config["listeners"] = [dict(ts.config["listeners"][0], public_relay_address=PUBLIC)]
        await ts.server.apply(parse_config(config))  # live: no listener restart
        async with RawTurnClient(ts.address) as client:
            relayed = await client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
            assert relayed[0] == PUBLIC
            allocations = ts.server.turn.allocations["udp-listener"]
            (alloc,) = allocations.values()
            bound = alloc.relay._sock.getsockname()  # type: ignore[attr-defined]
            assert bound == ("127.0.0.1", relayed[1])  # the listener's address, not 0.0.0.0
            assert await relay_through(client, peer, 0x4000) == b"through the relay"


@pytest.mark.parametrize(
    ("value", "address"),
    [("not-an-ip", "127.0.0.1"), ("2001:db8::7", "127.0.0.1"), ("0.0.0.0", "127.0.0.1")],
)
def test_a_bad_public_relay_address_is_named(value: str, address: str) -> None:
    config = make_config(port=3479, host=address)
    config["listeners"][0]["public_relay_address"] = value
    with pytest.raises(ConfigError) as refused:
        parse_config(config)
    assert refused.value.field == "listeners[0].public_relay_address"


def test_public_relay_address_takes_env_and_round_trips() -> None:
    config = make_config(port=3479)
    config["listeners"][0]["public_relay_address"] = "$NODE_PUBLIC_IP"
    parsed = parse_config(config, env={"NODE_PUBLIC_IP": PUBLIC})
    assert parsed.listeners[0].public_relay_address == PUBLIC
    again = parse_config(parsed.to_dict())
    assert again.listeners[0].public_relay_address == PUBLIC
    assert (
        "public_relay_address" not in parse_config(make_config(port=3479)).to_dict()["listeners"][0]
    )


@contextlib.asynccontextmanager
async def per_node_cds(config: dict[str, Any], addresses: dict[str, str]) -> AsyncIterator[str]:
    """A CDS server that renders `config` per node, as STUNner's operator's patcher does: the
    listeners' `address` is the address of the node the watch names (`node=...`)."""
    asked: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        node = request.query.get("node", "")
        asked.append(node)
        rendered = dict(config)
        rendered["listeners"] = [
            dict(lis, address=addresses.get(node, lis["address"])) for lis in config["listeners"]
        ]
        if request.query.get("watch") != "true":
            return web.json_response(rendered)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps(rendered))
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/configs/{ns}/{name}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_port(udp=False)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        assert asked and set(asked) <= set(addresses), asked
        await runner.cleanup()


async def test_the_operators_per_node_address_is_advertised(tmp_path: Path) -> None:
    """stunnerd on node-b watches CDS with node=node-b and gets node-b's public address as the
    listener address: it is XOR-RELAYED-ADDRESS, and the relay (on the wildcard) relays."""
    port = free_port()
    low, high = relay_window(50)
    config = make_config(
        port=port, protocols=("TURN-UDP",), min_relay_port=low, max_relay_port=high, name="ns/gw"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUNNER_", "CDS_"))}
    env.update(STUNNER_NAMESPACE="ns", STUNNER_NAME="gw", STUNNER_NODENAME="node-b")
    addresses = {"node-a": "198.18.0.6", "node-b": PUBLIC}
    async with per_node_cds(config, addresses) as cds, udp_echo_peer() as peer:
        log = tmp_path / "stunnerd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*stunnerd_command(), "-c", cds, "-w", "-l", "all:INFO"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            ready = await asyncio.to_thread(wait_ready, proc, port, False)
            assert ready, log.read_text(errors="replace")
            async with RawTurnClient(("127.0.0.1", port)) as client:
                relayed = await client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
                assert relayed[0] == PUBLIC
                assert low <= relayed[1] <= high
                assert await relay_through(client, peer, 0x4001) == b"through the relay"
        finally:
            assert await asyncio.to_thread(stop, proc) == 0, log.read_text(errors="replace")
