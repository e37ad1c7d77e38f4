"""A flood of RFC 6062 half-work leaves nothing behind in a stunnerd process: Connects to closed
ports (447), Connects whose peer connection is never bound, peers that connect to the relay
and are never bound, and data connections that never send ConnectionBind. The unbound peer
connections close after the bind timeout (30 s by RFC 6062 5.3; STUNNER_DP_TCP_BIND_TIMEOUT=1
here), the silent data connections after admin.connection_idle_timeout (1 s here); once the
control connection closes, the process holds the descriptors it held before."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from helpers.stunnerd_proc import Stunnerd, start_stunnerd, stop
from helpers.tcp_relay_client import (
    TcpRelayClient,
    bind_data_connection,
    connection_id,
    tcp_echo_peer,
)
from helpers.turnclient import error_code

from stunner_dp import stun
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, free_port

CLOSED_PORTS = 40
UNBOUND_CONNECTS = 10
UNBOUND_ACCEPTS = 10
SILENT_DATA = 20
WAIT = 15.0  # the timeouts are 1 s, the sweep runs each second
SETTLE = 30.0  # the most a descriptor count may take to settle (a loaded CI machine)
STEADY = 2.0  # settled: unchanged this long, past the 1 s timeouts and the 1 s sweep
POLL = 0.1


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    """What the process's descriptors are (for a failure's message)."""
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:  # closed meanwhile
            continue
    return sorted(found)


async def settled_fd_count(pid: int, target: int | None = None) -> int:
    """The process's descriptor count once it has held for STEADY seconds (at `target`, when
    given); the last count when it has not within SETTLE seconds. A count sampled once can
    catch a descriptor on its way in or out (a connection the sweep closes a second later)."""
    last, since = fd_count(pid), time.monotonic()
    deadline = since + SETTLE
    for _ in range(int(SETTLE / POLL)):
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL)
        now = fd_count(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= STEADY and (target is None or now == target):
            return now
    return last


def closed_ports(count: int) -> list[int]:
    """`count` distinct TCP ports of 127.0.0.1 that nothing listens on. Taken while all are
    held, so none repeats (two Connects to one peer: the second is a 446, not a 447, and 40
    ports picked one by one from the ephemeral range repeat one in about 35 runs)."""
    held = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in held:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the other end closes (EOF or reset) within WAIT."""
    try:
        for _ in range(1000):
            if not await asyncio.wait_for(reader.read(65536), WAIT):
                return True
    except ConnectionResetError:  # closed with a reset: closed too
        return True
    except TimeoutError:
        return False
    return False


@pytest.fixture
def stunnerd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stunnerd:
    monkeypatch.setenv("STUNNER_DP_TCP_BIND_TIMEOUT", "1")
    admin = {
        "name": "rfc6062-flood",
        "loglevel": "all:WARN",
        "metrics_endpoint": "",
        "healthcheck_endpoint": "",
        "connection_idle_timeout": 1,
    }
    proc = start_stunnerd(tmp_path, "flood", endpoints=["127.0.0.1"], admin=admin)
    yield proc  # type: ignore[misc]
    stop(proc.proc)


async def test_a_flood_of_half_open_work_leaves_nothing_behind(stunnerd: Stunnerd) -> None:
    pid, server = stunnerd.proc.pid, ("127.0.0.1", stunnerd.port)
    before = await settled_fd_count(pid)
    before_targets = fd_targets(pid)
    async with AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(tcp_echo_peer()) for _ in range(UNBOUND_CONNECTS)]
        control = await stack.enter_async_context(TcpRelayClient(server))
        relay = await control.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        assert error_code(await control.create_permission(("127.0.0.1", 1))) == 0  # the IP

        closed = closed_ports(CLOSED_PORTS)
        answers = await asyncio.gather(*(control.connect_peer(("127.0.0.1", p)) for p in closed))
        assert [error_code(a) for a in answers] == [447] * CLOSED_PORTS

        # Connects that succeed, never bound: the server closes them after the bind timeout
        for peer in peers:
            connection_id(await control.connect_peer(peer.address))
        # peers that connect to the relay, announced, never bound
        accepted = [await asyncio.open_connection(*relay) for _ in range(UNBOUND_ACCEPTS)]
        attempts = [await control.next_attempt(WAIT) for _ in range(UNBOUND_ACCEPTS)]
        assert len({cid for cid, _ in attempts}) == UNBOUND_ACCEPTS
        # data connections that never send ConnectionBind, and one with a made-up id (its
        # nonce is the control connection's, bound to that address: 438 here)
        silent = [await asyncio.open_connection(*server) for _ in range(SILENT_DATA)]
        bogus_reader, bogus_writer = await asyncio.open_connection(*server)
        request, _ = control.connection_bind_request(0x12345678)
        bogus_writer.write(request)
        header = await asyncio.wait_for(bogus_reader.readexactly(stun.HEADER_SIZE), WAIT)
        body = await bogus_reader.readexactly(int.from_bytes(header[2:4], "big"))
        assert error_code(stun.parse_message(header + body)) in (400, 438)

        for reader, _ in [*accepted, *silent, (bogus_reader, bogus_writer)]:
            assert await closed_by_server(reader)
        for peer in peers:  # the Connect side: each echo peer saw its connection end
            for _ in range(int(WAIT / 0.1)):
                if all(w.is_closing() for w in peer.writers):
                    break
                await asyncio.sleep(0.1)
            assert len(peer.writers) == 1 and peer.writers[0].is_closing()
        # the allocation lives on while all that was closed around it
        assert error_code(await control.create_permission(("127.0.0.1", 1))) == 0
        for _, writer in [*accepted, *silent, (bogus_reader, bogus_writer)]:
            writer.close()
    # the control connection is closed: the allocation and its listening relay socket go
    after = await settled_fd_count(pid, target=before)
    assert after == before, (before, after, before_targets, fd_targets(pid))


def test_the_bind_timeout_hook_takes_positive_numbers_only() -> None:
    from stunner_dp.net.tcp_relay import bind_timeout_from_env

    assert bind_timeout_from_env(30.0, {}) == 30.0
    assert bind_timeout_from_env(30.0, {"STUNNER_DP_TCP_BIND_TIMEOUT": "1.5"}) == 1.5
    for bad in ("0", "-1", "soon"):
        assert bind_timeout_from_env(30.0, {"STUNNER_DP_TCP_BIND_TIMEOUT": bad}) == 30.0


async def test_status_and_metrics_count_a_tcp_allocation_and_its_bytes(
    tmp_path: Path,
) -> None:
    from helpers.ops import http_get

    health, metrics = free_port(udp=False), free_port(udp=False)
    admin = {
        "name": "rfc6062-status",
        "loglevel": "all:WARN",
        "metrics_endpoint": f"http://127.0.0.1:{metrics}/metrics",
        "healthcheck_endpoint": f"http://127.0.0.1:{health}",
    }
    daemon = start_stunnerd(tmp_path, "status", endpoints=["127.0.0.1"], admin=admin)
    try:
        server = ("127.0.0.1", daemon.port)
        async with tcp_echo_peer() as peer, TcpRelayClient(server) as control:
            await control.allocate_tcp(DEFAULT_USERNAME, DEFAULT_PASSWORD)
            _, status = await http_get(f"http://127.0.0.1:{health}/status")
            assert status["allocationCount"] == 1
            assert error_code(await control.create_permission(peer.address)) == 0
            cid = connection_id(await control.connect_peer(peer.address))
            data, resp = await bind_data_connection(control, cid)
            assert error_code(resp) == 0
            payload = os.urandom(30_000)
            data.writer.write(payload)
            assert await data.read_exactly(len(payload)) == payload
            _, text = await http_get(f"http://127.0.0.1:{metrics}/metrics")
            lines = [ln for ln in str(text).splitlines() if ln.startswith("stunner_cluster_")]
            wanted = [ln for ln in lines if "bytes" in ln and 'name="peers"' in ln]
            assert {float(ln.rsplit(" ", 1)[1]) for ln in wanted} == {30_000.0}, lines
            data.close()
    finally:
        stop(daemon.proc)
