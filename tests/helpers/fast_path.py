"""Shared by the tests of the two fast paths, the kernel offload (tests/offload) and the compiled
forwarder (tests/forwarder): a channel's relaying both ways, the proof that the fast path (not
Python) relayed, the ways a channel ends, and the real clients (aioice, coturn's uclient).

Proof that the fast path relayed: a channel's own counters are bumped by the Python hot paths
only, until `Server.stats()` folds the fast path's per-entry counts in. So with every packet
delivered and those counters still 0 before the first `stats()`, no packet went through Python.

A relay setup `s` is the dict both sides' `relay_setup()` yield: "ts" (the server), "c" (a
client with an allocation and channel CH bound to the peer), "peer" and "relay" (its address)."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint

from helpers.hostile_kit import PeerSocket, UdpTurn, code
from helpers.uclient import Summary, assert_no_loss, parse_summary
from helpers.waits import until
from stunner_dp import stun
from stunner_dp.config import parse_config
from stunner_dp.observe.stats import StatsSnapshot
from stunner_dp.testing import TurnServerHandle, free_port
from stunner_dp.turn import allocation as allocation_module
from stunner_dp.turn.allocation import Allocation, Channel

CH = 0x4000

# -- the proof ------------------------------------------------------------------------------


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


def check_wire_counts(before: StatsSnapshot, after: StatsSnapshot, n: int, payload: int) -> None:
    """n packets (`payload` bytes) each way: the listener's delta in wire bytes (payload + the
    4-byte ChannelData header), the cluster's in payload."""
    lis, lis0 = after.listeners["udp-listener"], before.listeners["udp-listener"]
    assert (lis.rx_packets - lis0.rx_packets, lis.tx_packets - lis0.tx_packets) == (n, n)
    assert lis.rx_bytes - lis0.rx_bytes == payload + 4 * n
    assert lis.tx_bytes - lis0.tx_bytes == payload + 4 * n
    cl = after.clusters["peers"]
    assert (cl.tx_packets, cl.rx_packets, cl.tx_bytes, cl.rx_bytes) == (n, n, payload, payload)


# -- relaying on a setup's channel ----------------------------------------------------------


async def settle(c: UdpTurn) -> None:
    """A Binding answered after what was sent before it: the server (its fast path, then
    Python, in arrival order) handled those; a short pause lets lo deliver what they sent on."""
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
    await until(lambda: tagged(peer, tag) >= n)  # bounded: 3 s
    for i in range(n):
        peer.sendto(tag + b"-%d" % i, relay)
    got = await c.received(0.3)
    back = [g for g in got if g[4:].startswith(tag) and g[:2] == CH.to_bytes(2, "big")]
    return tagged(peer, tag), len(back)


async def nothing_moves(s: dict[str, Any], tag: bytes) -> None:
    """After the channel ended, nothing of `tag` moves either way: no datagram reaches the peer,
    no ChannelData the client (the caller checks the fast path's entry is gone)."""
    c, peer, relay = s["c"], s["peer"], s["relay"]
    peer.got.clear()
    c.send(stun.encode_channel_data(CH, tag))
    peer.sendto(tag, relay)
    await settle(c)
    got = await c.received(0.2)
    assert not any(d == tag for d, _ in peer.got), peer.got
    assert not any(g[:2] == CH.to_bytes(2, "big") for g in got), got


# -- the ways a channel ends (each after the caller relayed on it) --------------------------


def expire_permission(s: dict[str, Any]) -> None:
    s["ts"].server.tick(time.time() + allocation_module.PERMISSION_LIFETIME + 1)


def expire_channel(s: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The channel's lifetime cut to 60 s before the setup; a tick past it while the
    permission (300 s) lives on."""
    assert allocation_module.CHANNEL_LIFETIME == 60.0, "monkeypatch it before the setup"
    s["ts"].server.tick(time.time() + 61)
    turn = s["ts"].server.turn
    assert turn is not None and CH in next(iter(turn.all_allocations())).held


async def revoke_peer(s: dict[str, Any]) -> None:
    """A live config whose cluster no longer holds the peer."""
    ts = s["ts"]
    config = dict(ts.config)
    config["clusters"] = [{**config["clusters"][0], "endpoints": ["127.0.0.2"]}]
    await ts.server.apply(parse_config(config))


async def delete_allocation(s: dict[str, Any]) -> None:
    refresh = await s["c"].ask(stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, stun.encode_u32(0))])
    assert code(refresh) == 0


# -- real clients -----------------------------------------------------------------------------

MESSAGES = 300  # aioice datagrams each way
BURST = 20  # aioice datagrams sent before waiting for their echoes
TIMEOUT = 5.0


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, Any]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))


@asynccontextmanager
async def aioice_echoed(ts: TurnServerHandle, peer: tuple[str, int]) -> AsyncIterator[list[bytes]]:
    """An aioice TURN endpoint on `ts` sends MESSAGES datagrams to the echo `peer`, BURST at a
    time, and gets every one back from it (zero loss, both ways); yields what it sent, with the
    allocation still open (closed at the end)."""
    relay, receiver = await asyncio.wait_for(
        create_turn_endpoint(Receiver, ts.address, ts.username, ts.password), TIMEOUT
    )
    try:
        sent = [b"aioice-%d" % i for i in range(MESSAGES)]
        got: list[bytes] = []
        for start in range(0, MESSAGES, BURST):
            for payload in sent[start : start + BURST]:
                relay.sendto(payload, peer)
            for _ in sent[start : start + BURST]:
                data, source = await asyncio.wait_for(receiver.queue.get(), TIMEOUT)
                assert source == peer
                got.append(data)
        assert sorted(got) == sorted(sent)  # zero loss, both ways
        yield sent
    finally:
        relay.close()


@asynccontextmanager
async def turnutils_peer() -> AsyncIterator[int]:
    """coturn's UDP echo server on 127.0.0.1, stopped by its PID."""
    if shutil.which("turnutils_peer") is None or shutil.which("turnutils_uclient") is None:
        pytest.skip("coturn's turnutils_uclient/turnutils_peer are not installed (apt-get coturn)")
    port = free_port(tcp=False)
    proc = await asyncio.create_subprocess_exec(
        "turnutils_peer", "-L", "127.0.0.1", "-p", str(port),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.sleep(0.3)
        assert proc.returncode is None, "turnutils_peer exited at once"
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def run_uclient(args: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        "turnutils_uclient", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace")


async def uclient_without_loss(
    ts: TurnServerHandle, peer_port: int, clients: int, messages: int
) -> Summary:
    """turnutils_uclient's `clients` relay `messages` each to the peer and back through `ts`
    over channels, with zero loss; its summary (`.output`: the tail of what it printed)."""
    # no -s: ChannelBind and ChannelData; -c: no extra RTCP allocation
    args = ["-c", "-u", ts.username, "-w", ts.password, "-p", str(ts.port)]
    args += ["-e", "127.0.0.1", "-r", str(peer_port), "-m", str(clients)]
    args += ["-n", str(messages), "-l", "160", "-z", "5", "127.0.0.1"]
    out = await run_uclient(args)
    summary = parse_summary(out, out[-3000:])
    assert_no_loss(summary, clients * messages)
    return summary


# -- the end-to-end peer-rule tests, again ----------------------------------------------------


def access_e2e_tests(module_name: str) -> dict[str, Any]:
    """The test functions of tests/hostile/test_access_e2e.py, from a fresh copy of the module
    named `module_name`, for a test module to run again under its own fixtures."""
    path = Path(__file__).resolve().parents[1] / "hostile" / "test_access_e2e.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: getattr(module, name) for name in dir(module) if name.startswith("test_")}
