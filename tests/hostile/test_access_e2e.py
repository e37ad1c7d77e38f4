"""Peer access end to end, over real sockets: what the server answers to CreatePermission and
ChannelBind for every special address form, against a wildcard cluster, explicit endpoints and
endpoints wider than a special range; and, per packet, that nothing flows to or from a peer
the rules do not allow, also after a live config change takes the route away.

tests/turn/test_access.py tests PeerAccess itself; this checks the server applies it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers.hostile_kit import PeerSocket, UdpTurn, code, open_peer, relayed

from stunner_dp import stun
from stunner_dp.config import parse_config
from stunner_dp.net.runtime import Server
from stunner_dp.testing import (
    free_port,
    make_config,
    relay_window,
    start_turn_server,
)

OK, DENIED, FAMILY = 0, 403, 443
IN_RANGE, OUT_OF_RANGE = 20005, 30

CLUSTERS = {
    "wild": ["0.0.0.0/0", "::/0"],
    "explicit": [
        f"127.0.0.1:<{IN_RANGE - 5}-{IN_RANGE + 5}>",
        "10.0.0.0/8",
        "169.254.169.254",
        "224.0.0.0/4",
        "0.0.0.0",
        "::1",
        "fe80::/10",
        "64:ff9b::/96",
        "2002::/16",
        "2001::/32",
        "::/96",
    ],
    # wider than the special ranges they contain: reach none of them
    "wide": ["10.0.0.0/7", "240.0.0.0/4", "0.0.0.0/1", "fc00::/6", "2000::/3", "::/8"],
}

# peer -> expected CreatePermission answer via (wild, explicit, wide)
V4_TABLE: dict[str, tuple[int, int, int]] = {
    "93.184.216.34": (OK, DENIED, OK),  # global ("wide" has 0.0.0.0/1)
    "192.0.32.10": (OK, DENIED, DENIED),  # global, above 0.0.0.0/1
    "127.0.0.1": (DENIED, OK, DENIED),
    "127.1.2.3": (DENIED, DENIED, DENIED),  # explicit names 127.0.0.1 only
    "0.0.0.0": (DENIED, OK, DENIED),
    "0.1.2.3": (DENIED, DENIED, DENIED),
    "169.254.169.254": (DENIED, OK, DENIED),
    "169.254.1.1": (DENIED, DENIED, DENIED),
    "10.1.2.3": (DENIED, OK, DENIED),
    "172.16.5.4": (DENIED, DENIED, DENIED),
    "172.31.255.255": (DENIED, DENIED, DENIED),
    "192.168.1.1": (DENIED, DENIED, DENIED),
    "100.64.0.1": (DENIED, DENIED, DENIED),
    "224.0.0.1": (DENIED, OK, DENIED),
    "239.255.255.250": (DENIED, OK, DENIED),
    "255.255.255.255": (DENIED, DENIED, DENIED),
    "240.0.0.1": (DENIED, DENIED, OK),  # 240.0.0.0/4 is exactly its special range
    # IPv4-mapped IPv6 is that IPv4 address, on an IPv4 relay
    "::ffff:127.0.0.1": (DENIED, OK, DENIED),
    "::ffff:169.254.169.254": (DENIED, OK, DENIED),
    "::ffff:8.8.8.8": (OK, DENIED, OK),
    # other IPv6 forms on an IPv4 relay: wrong family, whatever the rules
    "::1": (FAMILY, FAMILY, FAMILY),
    "64:ff9b::7f00:1": (FAMILY, FAMILY, FAMILY),
}
V6_TABLE: dict[str, tuple[int, int, int]] = {
    "2606:4700::1111": (OK, DENIED, OK),  # global
    "::1": (DENIED, OK, DENIED),
    "::": (DENIED, DENIED, DENIED),
    "::7f00:1": (DENIED, OK, DENIED),  # IPv4-compatible ::127.0.0.1 (explicit ::/96)
    "64:ff9b::7f00:1": (DENIED, OK, DENIED),  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe": (DENIED, OK, DENIED),  # NAT64 of 169.254.169.254
    "64:ff9b:1::1": (DENIED, DENIED, DENIED),  # NAT64 local-use
    "2002:7f00:1::1": (DENIED, OK, DENIED),  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1": (DENIED, OK, DENIED),
    "2001:0:7f00:1::1": (DENIED, OK, DENIED),  # Teredo
    "fe80::1": (DENIED, OK, DENIED),
    "fc00::1": (DENIED, DENIED, DENIED),
    "fd12:3456::1": (DENIED, DENIED, DENIED),
    "ff02::1": (DENIED, DENIED, DENIED),
    "ff05::1:3": (DENIED, DENIED, DENIED),
    # an IPv4 address in any form on an IPv6 relay: wrong family
    "::ffff:127.0.0.1": (FAMILY, FAMILY, FAMILY),
}
SCENARIOS = ("wild", "explicit", "wide")


@asynccontextmanager
async def three_ways(family: int) -> AsyncIterator[dict[str, tuple[str, int]]]:
    """One server, a listener per cluster (all IPv4 on 127.0.0.1 or all IPv6 on ::1); yields
    each scenario's listener address."""
    host = "::1" if family == 6 else "127.0.0.1"
    low, high = relay_window()
    ports = {name: free_port(host) for name in SCENARIOS}
    config = make_config(
        host=host, protocols=("TURN-UDP",), min_relay_port=low, max_relay_port=high
    )
    base = config["listeners"][0]
    config["listeners"] = [
        {**base, "name": name, "port": ports[name], "routes": [name]} for name in SCENARIOS
    ]
    config["clusters"] = [
        {"name": n, "type": "STATIC", "endpoints": e} for n, e in CLUSTERS.items()
    ]
    async with Server(config, bind_host=host) as srv:
        assert not srv.failed_listeners, srv.failed_listeners
        yield {name: (host, srv.port(name)) for name in SCENARIOS}


async def _answers(family: int, table: dict[str, tuple[int, int, int]]) -> list[str]:
    wrong: list[str] = []
    local = ("::1", 0) if family == 6 else ("127.0.0.1", 0)
    async with three_ways(family) as where:
        for i, scenario in enumerate(SCENARIOS):
            async with UdpTurn(where[scenario], local) as c:
                assert code(await c.allocate()) == 0
                for j, (peer, expected) in enumerate(table.items()):
                    want = expected[i]
                    got = code(await c.permit((peer, IN_RANGE)))
                    if got != want:
                        wrong.append(f"{scenario} CreatePermission {peer}: {got}, want {want}")
                    # a mapped form is the same peer as its IPv4 address: another port, or the
                    # bind is a 400 (peer already bound to another channel)
                    port = IN_RANGE + 1 if peer.startswith("::ffff:") else IN_RANGE
                    got = code(await c.bind(0x4000 + j, (peer, port)))
                    if got != want:
                        wrong.append(f"{scenario} ChannelBind {peer}:{port}: {got}, want {want}")
    return wrong


async def test_ipv4_relay_special_addresses() -> None:
    assert await _answers(4, V4_TABLE) == []


async def test_ipv6_relay_special_addresses() -> None:
    assert await _answers(6, V6_TABLE) == []


async def test_port_ranges_bind_channels_but_not_permissions() -> None:
    """An endpoint's port range limits which peer ports a channel may bind and which may send;
    a permission is per IP (RFC 8656), so CreatePermission itself succeeds."""
    async with three_ways(4) as where, UdpTurn(where["explicit"]) as c:
        assert code(await c.allocate()) == 0
        assert code(await c.permit(("127.0.0.1", OUT_OF_RANGE))) == OK
        assert code(await c.bind(0x4000, ("127.0.0.1", IN_RANGE))) == OK
        assert code(await c.bind(0x4001, ("127.0.0.1", OUT_OF_RANGE))) == DENIED
        assert code(await c.bind(0x4002, ("127.0.0.1", IN_RANGE + 6))) == DENIED
        assert code(await c.bind(0x4003, ("10.9.9.9", OUT_OF_RANGE))) == OK  # no range there


# -- per packet ------------------------------------------------------------------------------


@asynccontextmanager
async def per_packet_setup() -> AsyncIterator[dict[str, Any]]:
    """A server whose only cluster allows 127.0.0.1:<good port>; a client with an allocation,
    a channel and a permission for the good peer; a peer on 127.0.0.1 outside the port range
    and one on 127.0.0.2, which no rule allows."""
    good = await open_peer("127.0.0.1")
    off_port = await open_peer("127.0.0.1")
    stranger = await open_peer("127.0.0.2")
    try:
        endpoints = [f"127.0.0.1:<{good.address[1]}-{good.address[1]}>"]
        async with (
            start_turn_server(protocols=("TURN-UDP",), endpoints=endpoints) as ts,
            UdpTurn(ts.address) as c,
        ):
            relay = relayed(await c.allocate())
            assert code(await c.bind(0x4000, good.address)) == OK
            assert code(await c.permit(good.address)) == OK
            assert code(await c.permit(stranger.address)) == DENIED
            assert code(await c.bind(0x4001, off_port.address)) == DENIED
            yield {
                "ts": ts,
                "client": c,
                "relay": relay,
                "good": good,
                "off_port": off_port,
                "stranger": stranger,
            }
    finally:
        for p in (good, off_port, stranger):
            if p.transport is not None:
                p.transport.close()


async def wait_for(peer: PeerSocket, payload: bytes, timeout: float = 2.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if any(d == payload for d, _ in peer.got):
            return True
        await asyncio.sleep(0.01)
    return False


async def client_gets(c: UdpTurn, canary: bytes) -> list[bytes]:
    """Everything that reaches the client up to and including the canary (bounded)."""
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + 2.0
    while loop.time() < end and not any(canary in g for g in got):
        got.extend(await c.received(0.05))
    assert any(canary in g for g in got), "the canary never arrived: the test proves nothing"
    return got


async def test_nothing_from_peers_without_permission_reaches_the_client() -> None:
    async with per_packet_setup() as s:
        c, relay = s["client"], s["relay"]
        s["stranger"].sendto(b"from 127.0.0.2", relay)
        s["off_port"].sendto(b"from a port outside the range", relay)
        s["good"].sendto(b"canary", relay)
        got = await client_gets(c, b"canary")
        assert not any(b"127.0.0.2" in g or b"outside" in g for g in got), got


async def test_nothing_reaches_peers_outside_the_rules() -> None:
    async with per_packet_setup() as s:
        c = s["client"]
        c.send_indication(s["stranger"].address, b"send to 127.0.0.2")
        c.send_indication(s["off_port"].address, b"send off range")
        c.send(stun.encode_channel_data(0x4001, b"unbound channel"))
        c.send(stun.encode_channel_data(0x4000, b"canary"))
        assert await wait_for(s["good"], b"canary")
        assert s["stranger"].got == [] and s["off_port"].got == []
        assert [d for d, _ in s["good"].got] == [b"canary"]


async def test_a_config_change_that_removes_the_route_stops_the_relay() -> None:
    async with per_packet_setup() as s:
        c, ts, good, relay = s["client"], s["ts"], s["good"], s["relay"]
        c.send(stun.encode_channel_data(0x4000, b"before"))
        c.send_indication(good.address, b"before-send")
        assert await wait_for(good, b"before") and await wait_for(good, b"before-send")
        # the same config without the cluster (and without the route to it)
        config = dict(ts.config)
        config["listeners"] = [{**lis, "routes": []} for lis in config["listeners"]]
        config["clusters"] = []
        await ts.server.apply(parse_config(config))
        c.send(stun.encode_channel_data(0x4000, b"after-channel"))
        c.send_indication(good.address, b"after-send")
        good.sendto(b"peer-after", relay)
        # control: a Binding answered after all of the above means the server read them
        assert (await c.ask(stun.METHOD_BINDING, auth=False)).cls == stun.CLASS_SUCCESS
        await asyncio.sleep(0.2)
        assert not any(d.startswith(b"after") for d, _ in good.got), good.got
        assert not any(b"peer-after" in g for g in await c.received(0.2))
        assert code(await c.permit(good.address)) == DENIED
        assert code(await c.bind(0x4000, good.address)) == DENIED


async def test_narrowing_a_port_range_stops_the_channel() -> None:
    async with per_packet_setup() as s:
        c, ts, good = s["client"], s["ts"], s["good"]
        config = dict(ts.config)
        port = good.address[1]
        other = port + 1 if port < 65535 else port - 1
        config["clusters"] = [
            {**config["clusters"][0], "endpoints": [f"127.0.0.1:<{other}-{other}>"]}
        ]
        await ts.server.apply(parse_config(config))
        c.send(stun.encode_channel_data(0x4000, b"after-narrowing"))
        c.send_indication(good.address, b"after-narrowing-send")
        assert (await c.ask(stun.METHOD_BINDING, auth=False)).cls == stun.CLASS_SUCCESS
        await asyncio.sleep(0.2)
        assert good.got == []


@pytest.mark.parametrize("peer", ["127.0.0.1", "::ffff:127.0.0.1", "::ffff:7f00:1"])
async def test_wildcard_cannot_be_talked_into_loopback(peer: str) -> None:
    """Permission denied is the first line; the Send and ChannelData that follow anyway go
    nowhere."""
    target = await open_peer("127.0.0.1")
    try:
        async with (
            start_turn_server(protocols=("TURN-UDP",), endpoints=["0.0.0.0/0", "::/0"]) as ts,
            UdpTurn(ts.address) as c,
        ):
            assert code(await c.allocate()) == 0
            addr = (peer, target.address[1])
            assert code(await c.permit(addr)) == DENIED
            assert code(await c.bind(0x4000, addr)) == DENIED
            c.send_indication(addr, b"sneak")
            c.send(stun.encode_channel_data(0x4000, b"sneak"))
            assert (await c.ask(stun.METHOD_BINDING, auth=False)).cls == stun.CLASS_SUCCESS
            await asyncio.sleep(0.2)
            assert target.got == []
    finally:
        if target.transport is not None:
            target.transport.close()


# -- the server's own addresses (issue 13 item 10) --------------------------------------------


async def test_a_datagram_cannot_cross_two_allocations_nor_reach_a_listener() -> None:
    """A cluster that covers all of loopback covers this server's own sockets too: the relay
    ports of other allocations and the listener port. None of them is a peer: CreatePermission
    and ChannelBind are 403, and a Send indication towards them goes nowhere (a datagram once
    crossed five allocations this way)."""
    peer = await open_peer("127.0.0.1")
    try:
        async with (
            start_turn_server(protocols=("TURN-UDP",), endpoints=["127.0.0.0/8"]) as ts,
            UdpTurn(ts.address) as a,
            UdpTurn(ts.address) as b,
        ):
            relay_a, relay_b = relayed(await a.allocate()), relayed(await b.allocate())
            listener = ("127.0.0.1", ts.port)
            for own in (relay_b, listener, ("127.0.0.2", ts.port)):
                assert code(await a.permit(own)) == DENIED, own
                assert code(await a.bind(0x4001, own)) == DENIED, own
            assert code(await b.permit(relay_a)) == DENIED
            # a permission for the loopback address itself (any other port) is fine
            assert code(await a.permit(peer.address)) == OK
            assert code(await b.permit(peer.address)) == OK
            # a Binding request relayed to our own listener would come back as a Data
            # indication from it; a datagram to B's relay would reach B
            tid = b"own-listener"
            binding = stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, tid)
            a.send_indication(listener, binding)
            a.send_indication(relay_b, b"crossed into B")
            a.send_indication(peer.address, b"to the peer")  # control: Send works
            assert await wait_for(peer, b"to the peer")
            peer.sendto(b"canary-a", relay_a)
            peer.sendto(b"canary-b", relay_b)
            got_a = await client_gets(a, b"canary-a")
            got_b = await client_gets(b, b"canary-b")
            assert not any(tid in g for g in got_a), got_a
            assert not any(b"crossed" in g for g in got_b), got_b
            assert [d for d, _ in peer.got] == [b"to the peer"]
    finally:
        if peer.transport is not None:
            peer.transport.close()
