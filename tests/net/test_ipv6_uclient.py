"""coturn's turnutils_uclient asking for a relay of the other family: -x (an IPv6 relay for an
IPv4 client) to turnutils_peer on ::1, -X (an IPv4 relay explicitly) to one on 127.0.0.1, both
on a listener whose `additional_address` offers IPv6 relays beside its IPv4 `address`."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator

import pytest
from helpers.uclient import assert_no_loss, parse_summary

from stunner_dp.testing import free_port, relay_window, start_turn_server

UCLIENT = shutil.which("turnutils_uclient")
PEER = shutil.which("turnutils_peer")
pytestmark = pytest.mark.skipif(UCLIENT is None or PEER is None, reason="coturn not installed")
TIMEOUT = 60.0


async def _echoes(host: str, port: int) -> bool:
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        probe.sendto(b"ping", (host, port))
        try:
            return probe.recv(16) == b"ping"
        except OSError:
            return False


async def _peer(host: str) -> AsyncIterator[int]:
    assert PEER is not None
    port = free_port(host)
    proc = await asyncio.create_subprocess_exec(
        PEER, "-L", host, "-p", str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            if await _echoes(host, port):
                break
            await asyncio.sleep(0.05)
        yield port
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize(
    ("flag", "peer_host"), [("-x", "::1"), ("-X", "127.0.0.1")], ids=["ipv6-relay", "ipv4-relay"]
)
async def test_uclient_relay_family_flags(flag: str, peer_host: str) -> None:
    assert UCLIENT is not None
    port = free_port("127.0.0.1")
    low, high = relay_window()
    listener = {
        "name": "udp-listener",
        "protocol": "TURN-UDP",
        "address": "127.0.0.1",
        "additional_address": "::1",
        "port": port,
        "min_relay_port": low,
        "max_relay_port": high,
        "routes": ["peers"],
    }
    async with start_turn_server(
        port=port, listeners=[listener], endpoints=("127.0.0.1", "::1")
    ) as srv:
        async for peer_port in _peer(peer_host):
            cmd = [UCLIENT, flag, "-c", "-n", "20", "-e", peer_host, "-r", str(peer_port)]
            cmd += ["-p", str(port), "-u", srv.username, "-w", srv.password, "127.0.0.1"]
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            text = out.decode(errors="replace")
            context = f"{' '.join(cmd)} exited {proc.returncode}:\n{text[-3000:]}"
            assert proc.returncode == 0, context
            assert_no_loss(parse_summary(text, context), 20)
