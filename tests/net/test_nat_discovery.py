"""RFC 5780 NAT behaviour discovery on real sockets (127.0.0.1 with the alternate 127.0.0.2),
checked with coturn's turnutils_natdiscovery; and DONT-FRAGMENT on a real relay socket.

turnutils_natdiscovery -m -f prints, among the responses it got, one verdict per test:
    NAT with Endpoint Independent Mapping!
    NAT with Endpoint Independent Filtering!
(on loopback there is no NAT, so both are endpoint independent).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from stunner_dp import stun
from stunner_dp.client.turn import TurnClient, error_code, text, udp_transport
from stunner_dp.net.discovery import NatDiscoveryListener
from stunner_dp.net.relay import RelaySocket
from stunner_dp.net.runtime import Server
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, free_port, make_config

PRIMARY, ALTERNATE = "127.0.0.1", "127.0.0.2"
NATDISCOVERY = shutil.which("turnutils_natdiscovery")
RUN_TIMEOUT = 30.0
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2  # <linux/in.h>


def _free_on_both() -> int:
    for _ in range(20):
        port = free_port(PRIMARY, tcp=False)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((ALTERNATE, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no UDP port free on both 127.0.0.1 and 127.0.0.2")


def discovery_config(port: int, alt_port: int | None) -> dict[str, Any]:
    config = make_config(port=port, protocols=("TURN-UDP",))
    if alt_port is not None:
        config["listeners"][0]["nat_discovery"] = {
            "alternate_address": ALTERNATE,
            "alternate_port": alt_port,
        }
    return config


@asynccontextmanager
async def discovery_server(enabled: bool = True) -> AsyncIterator[tuple[Server, int, int]]:
    """A TURN-UDP listener on 127.0.0.1 (with NAT discovery: 127.0.0.2 and a second port)."""
    for attempt in range(5):
        port, alt_port = _free_on_both(), _free_on_both()
        if port == alt_port:
            continue
        server = Server(discovery_config(port, alt_port if enabled else None), bind_host=PRIMARY)
        await server.start()
        if server.failed_listeners:  # a port taken in between: pick others
            await server.stop()
            if attempt == 4:
                pytest.fail(f"listener did not start: {server.failed_listeners}")
            continue
        try:
            yield server, port, alt_port
        finally:
            await server.stop()
        return


async def binding_from(
    port: int, change: bytes | None
) -> tuple[stun.Message, tuple[str, int], tuple[str, int]]:
    """One Binding request to 127.0.0.1:port: (answer, where it came from, our address)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((PRIMARY, 0))
        sock.setblocking(False)
        attrs = [] if change is None else [(stun.ATTR_CHANGE_REQUEST, change)]
        request = stun.encode_message(
            stun.METHOD_BINDING, stun.CLASS_REQUEST, os.urandom(12), attrs
        )
        for _ in range(5):  # UDP: retransmit a few times, each bounded
            sock.sendto(request, (PRIMARY, port))
            try:
                data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 1.0)
            except TimeoutError:
                continue
            return stun.parse_message(data), source, sock.getsockname()
    pytest.fail("no Binding answer")


def decoded(msg: stun.Message, attr: int) -> tuple[str, int]:
    raw = msg.get(attr)
    assert raw is not None, f"no attribute {attr:#06x} in the answer"
    return stun.decode_address(raw)


@pytest.mark.parametrize(
    ("change_ip", "change_port"), [(False, False), (False, True), (True, False), (True, True)]
)
async def test_change_request_answer_leaves_from_the_socket_asked(
    change_ip: bool, change_port: bool
) -> None:
    async with discovery_server() as (server, port, alt_port):
        listener = server.listeners["udp-listener"]
        assert isinstance(listener, NatDiscoveryListener)
        change = stun.encode_change_request(change_ip=change_ip, change_port=change_port)
        msg, source, _ = await binding_from(port, change)
        expected = (ALTERNATE if change_ip else PRIMARY, alt_port if change_port else port)
        assert msg.cls == stun.CLASS_SUCCESS
        assert source == expected
        assert decoded(msg, stun.ATTR_RESPONSE_ORIGIN) == expected
        assert decoded(msg, stun.ATTR_OTHER_ADDRESS) == (ALTERNATE, alt_port)


async def test_without_nat_discovery_change_request_gets_420() -> None:
    async with discovery_server(enabled=False) as (_, port, _alt):
        msg, source, _ = await binding_from(port, stun.encode_change_request(change_ip=True))
        assert source == (PRIMARY, port)
        assert error_code(msg)[0] == 420
        raw = msg.get(stun.ATTR_UNKNOWN_ATTRIBUTES)
        assert raw is not None
        assert stun.decode_unknown_attributes(raw) == [stun.ATTR_CHANGE_REQUEST]
        plain, _, _ = await binding_from(port, None)
        assert plain.cls == stun.CLASS_SUCCESS and plain.get(stun.ATTR_RESPONSE_ORIGIN) is None


async def test_stopping_the_listener_closes_the_alternate_sockets() -> None:
    async with discovery_server() as (server, port, alt_port):
        listener = server.listeners["udp-listener"]
        assert isinstance(listener, NatDiscoveryListener)
        bound = listener.alternate_sockets
        assert sorted(bound) == sorted(
            [(PRIMARY, alt_port), (ALTERNATE, port), (ALTERNATE, alt_port)]
        )
    for address in bound:  # free again
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(address)


@pytest.mark.skipif(NATDISCOVERY is None, reason="coturn's turnutils_natdiscovery not installed")
async def test_turnutils_natdiscovery_reports_mapping_and_filtering() -> None:
    assert NATDISCOVERY is not None
    async with discovery_server() as (_, port, _alt):
        proc = await asyncio.create_subprocess_exec(
            NATDISCOVERY,
            "-m",
            "-f",
            "-p",
            str(port),
            PRIMARY,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail("turnutils_natdiscovery did not finish")
    output = out.decode(errors="replace")
    assert proc.returncode == 0, output
    assert "NAT with Endpoint Independent Mapping!" in output, output
    assert "NAT with Endpoint Independent Filtering!" in output, output
    assert "error" not in output.lower(), output
    # it saw answers from all the addresses it tried: the primary and the alternate IP
    assert f"Response origin: : {PRIMARY}:{port}" in output, output
    assert f"Response origin: : {ALTERNATE}:" in output, output


# -- DONT-FRAGMENT (RFC 8656 7.2) -------------------------------------------------------------


async def _allocate(server_port: int, dont_fragment: bool) -> tuple[TurnClient, stun.Message]:
    client = TurnClient((PRIMARY, server_port))
    await client.connect()
    challenge = await client.challenge()
    client.accept_challenge(challenge)
    client.login(DEFAULT_USERNAME, DEFAULT_PASSWORD, text(challenge, stun.ATTR_REALM), client.nonce)
    attrs = udp_transport() + ([(stun.ATTR_DONT_FRAGMENT, b"")] if dont_fragment else [])
    return client, await client.request(stun.METHOD_ALLOCATE, attrs)


def _relay_mtu_discover(server: Server, client: TurnClient) -> int:
    turn = server.turn
    assert turn is not None
    alloc = turn.allocations["udp-listener"][client.local_address]
    relay = alloc.relay
    assert isinstance(relay, RelaySocket)
    sock: socket.socket = relay._sock  # the real socket is what is checked
    return sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER)


async def test_dont_fragment_sets_pmtudisc_do_on_the_relay_socket() -> None:
    async with discovery_server(enabled=False) as (server, port, _alt):
        with_df, resp = await _allocate(port, dont_fragment=True)
        without_df, plain = await _allocate(port, dont_fragment=False)
        try:
            assert resp.cls == stun.CLASS_SUCCESS, error_code(resp)
            assert plain.cls == stun.CLASS_SUCCESS, error_code(plain)
            assert _relay_mtu_discover(server, with_df) == IP_PMTUDISC_DO
            assert _relay_mtu_discover(server, without_df) != IP_PMTUDISC_DO
        finally:
            with_df.close()
            without_df.close()
