"""Limits and config mistakes seen from outside, through the `stunnerd` command: the open-file
limit is detected at start and running out of descriptors is a 508, not a crash; a listener
whose port is taken is reported by name while the others serve."""

from __future__ import annotations

import asyncio
import re
import resource
import socket
from pathlib import Path

from helpers.daemon_kit import run_stunnerd
from helpers.hostile_kit import UdpTurn, code

from stunner_dp import stun
from stunner_dp.testing import free_port, make_config, relay_window


def _limit_nofile(soft: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_fd_limit_warned_at_start_and_exhaustion_is_508(tmp_path: Path) -> None:
    port = free_port()
    low, high = relay_window(200)
    config = make_config(
        port=port, protocols=("TURN-UDP",), min_relay_port=low, max_relay_port=high
    )
    soft = 96
    async with run_stunnerd(config, tmp_path, preexec=lambda: _limit_nofile(soft)) as d:
        assert await d.wait_for_log("stunner-dp ready"), d.log
        assert "open-file limit allows fewer allocations than configured" in d.log
        found = re.search(r"allocations=(\d+)", d.log)
        assert found is not None, d.log
        allows = int(found.group(1))
        assert 0 < allows < soft
        assert f"nofile={soft}" in d.log and "relay_ports=200" in d.log
        # use them all up: the server answers 508 and keeps running
        results: list[int] = []
        clients: list[UdpTurn] = []
        try:
            for _ in range(soft + 10):
                c = UdpTurn(("127.0.0.1", port))
                await c.__aenter__()
                clients.append(c)
                results.append(code(await c.allocate()))
                if results[-1] == 508:
                    break
            assert results[-1] == 508 and results[:-1].count(0) == len(results) - 1
            assert len(results) - 1 >= allows  # the estimate is conservative
            async with UdpTurn(("127.0.0.1", port)) as late:
                resp = await late.ask(stun.METHOD_BINDING, auth=False)
                assert resp.cls == stun.CLASS_SUCCESS
            # a freed descriptor is usable again
            await clients[0].ask(stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, stun.encode_u32(0))])
            assert code(await clients[-1].ask(stun.METHOD_ALLOCATE, _udp())) == 0
        finally:
            for c in clients:
                await c.__aexit__()
        assert d.proc.poll() is None, d.log


def _udp() -> list[tuple[int, bytes]]:
    return [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(stun.TRANSPORT_UDP))]


async def test_listener_port_in_use_is_named_and_the_others_serve(tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("0.0.0.0", 0))
    busy = taken.getsockname()[1]
    good = free_port()
    low, high = relay_window()
    config = make_config(
        protocols=("TURN-UDP", "TURN-TCP"), min_relay_port=low, max_relay_port=high
    )
    config["listeners"][0]["port"] = busy  # udp-listener: taken
    config["listeners"][1]["port"] = good  # tcp-listener: free
    try:
        async with run_stunnerd(config, tmp_path) as d:
            assert await d.wait_for_log("stunner-dp ready"), d.log
            assert f"listener 'udp-listener' (TURN-UDP port {busy}) could not start" in d.log
            reader, writer = await asyncio.open_connection("127.0.0.1", good)
            try:
                tid = b"\x07" * 12
                writer.write(stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, tid, []))
                header = await asyncio.wait_for(reader.readexactly(20), 5)
                body = await reader.readexactly(int.from_bytes(header[2:4], "big"))
                answer = stun.parse_message(header + body)
                assert answer.cls == stun.CLASS_SUCCESS and answer.transaction_id == tid
            finally:
                writer.close()
            assert d.proc.poll() is None
    finally:
        taken.close()


async def test_every_listener_taken_is_a_clean_exit(tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("0.0.0.0", 0))
    busy = taken.getsockname()[1]
    low, high = relay_window()
    config = make_config(
        port=busy, protocols=("TURN-UDP",), min_relay_port=low, max_relay_port=high
    )
    try:
        async with run_stunnerd(config, tmp_path) as d:
            for _ in range(200):
                if d.proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            assert d.proc.returncode == 1, d.log
            assert "no listener could start" in d.log and "udp-listener" in d.log
            assert "Traceback" not in d.log
    finally:
        taken.close()
