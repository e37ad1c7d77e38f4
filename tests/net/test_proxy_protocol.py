"""PROXY protocol on TURN-TCP and TURN-TLS listeners (issue 12, behind cloud load balancers):
the header's client is who the server sees (XOR-MAPPED-ADDRESS, allocations, per-IP caps); a
connection without a header, with a malformed or late one, or from an untrusted source is
closed and counted; TLS starts after the header."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers.proxy_client import ProxiedClient, insecure_tls
from helpers.tls_helpers import CertPair

from stunner_dp import stun
from stunner_dp.config import ConfigError, parse_config
from stunner_dp.net import tcp
from stunner_dp.net.proxy_protocol import encode_v1, encode_v2
from stunner_dp.net.runtime import Server
from stunner_dp.observe.stats import ListenerStats
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, free_port, make_config

CLIENT = ("198.18.0.7", 40001)  # the address the header names (TEST-NET, never routed here)
LB_SIDE = ("127.0.0.1", 3479)
ENCODERS = {"v1": encode_v1, "v2": encode_v2}


def proxy_config(cert: CertPair, trusted: list[str] | None = None, **admin: Any) -> dict[str, Any]:
    config = make_config(port=free_port(), protocols=("TURN-TCP", "TURN-TLS"))
    tcp_lis, tls_lis = config["listeners"]
    tls_lis.update(port=free_port(udp=False), cert=cert.cert_b64, key=cert.key_b64)
    for lis in (tcp_lis, tls_lis):
        lis.update(proxy_protocol=True, proxy_protocol_trusted=trusted or ["127.0.0.0/8"])
    config["admin"].update(admin)
    return config


@asynccontextmanager
async def proxied_server(config: dict[str, Any]) -> AsyncIterator[Server]:
    server = Server(config, bind_host="127.0.0.1")
    try:
        await server.start()
        assert not server.failed_listeners, server.failed_listeners
        yield server
    finally:
        await server.stop()


def stats(server: Server, name: str) -> ListenerStats:
    return server.stats().listeners[name]


def address(server: Server, name: str) -> tuple[str, int]:
    return "127.0.0.1", server.port(name)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("listener", ["tcp-listener", "tls-listener"])
async def test_the_header_names_the_client(cert: CertPair, version: str, listener: str) -> None:
    async with proxied_server(proxy_config(cert)) as server:
        header = ENCODERS[version](CLIENT, LB_SIDE)
        tls = insecure_tls() if listener == "tls-listener" else None
        async with ProxiedClient(address(server, listener), prefix=header, tls=tls) as client:
            assert await client.mapped_address() == CLIENT
            # an allocation belongs to the header's client
            await client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
            assert CLIENT in server.turn.allocations[listener]
        counted = stats(server, listener)
        assert (counted.proxy_malformed, counted.proxy_untrusted) == (0, 0)


async def test_header_and_first_request_in_one_write(cert: CertPair) -> None:
    async with (
        proxied_server(proxy_config(cert)) as server,
        ProxiedClient(address(server, "tcp-listener")) as client,
    ):
        tid = b"0123456789ab"
        binding = stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, tid, [])
        resp = await client.transact(encode_v2(CLIENT, LB_SIDE) + binding, tid)
        value = resp.get(stun.ATTR_XOR_MAPPED_ADDRESS)
        assert value is not None and stun.decode_xor_address(value, tid) == CLIENT


@pytest.mark.parametrize("listener", ["tcp-listener", "tls-listener"])
async def test_no_header_is_closed_and_counted(cert: CertPair, listener: str) -> None:
    async with proxied_server(proxy_config(cert)) as server:
        if listener == "tcp-listener":  # STUN straight away
            async with ProxiedClient(address(server, listener)) as client:
                client.send_raw(stun.encode_message(stun.METHOD_BINDING, 0, b"x" * 12, []))
                assert await client.closed_by_server()
        else:  # a ClientHello straight away: the handshake never completes
            with pytest.raises((ConnectionError, OSError)):
                async with ProxiedClient(address(server, listener), tls=insecure_tls()):
                    pass
        assert stats(server, listener).proxy_malformed == 1
        assert server.stats().listeners[listener].connections == 0


async def test_malformed_header_is_closed_and_counted(cert: CertPair) -> None:
    async with proxied_server(proxy_config(cert)) as server:
        bad = b"PROXY TCP4 198.18.0.7 127.0.0.1 40001 99999\r\n"
        async with ProxiedClient(address(server, "tcp-listener"), prefix=bad) as client:
            assert await client.closed_by_server()
        assert stats(server, "tcp-listener").proxy_malformed == 1
        # the listener still serves the next client
        good = encode_v1(CLIENT, LB_SIDE)
        async with ProxiedClient(address(server, "tcp-listener"), prefix=good) as client:
            assert await client.mapped_address() == CLIENT


async def test_late_header_is_closed_and_counted(
    cert: CertPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp, "PROXY_HEADER_TIMEOUT", 0.5)
    async with proxied_server(proxy_config(cert)) as server:
        part = encode_v2(CLIENT, LB_SIDE)[:10]  # a header that never ends
        async with ProxiedClient(address(server, "tls-listener"), prefix=part) as client:
            assert await client.closed_by_server()
        assert stats(server, "tls-listener").proxy_malformed == 1


async def test_untrusted_source_is_closed_and_counted(cert: CertPair) -> None:
    # only 127.0.0.2 may speak for clients; we connect from 127.0.0.1
    async with proxied_server(proxy_config(cert, trusted=["127.0.0.2/32", "::1"])) as server:
        header = encode_v2(CLIENT, LB_SIDE)
        async with ProxiedClient(address(server, "tcp-listener"), prefix=header) as client:
            assert await client.closed_by_server()
        counted = stats(server, "tcp-listener")
        assert (counted.proxy_untrusted, counted.proxy_malformed) == (1, 0)
        async with ProxiedClient(
            address(server, "tcp-listener"), source="127.0.0.2", prefix=header
        ) as client:
            assert await client.mapped_address() == CLIENT


@pytest.mark.parametrize("header", [encode_v2(None, None), encode_v1(None, None)])
async def test_lb_health_check_is_served_as_the_lb(cert: CertPair, header: bytes) -> None:
    """v2 LOCAL and v1 UNKNOWN: the LB's own connection, served with the LB's address."""
    async with (
        proxied_server(proxy_config(cert)) as server,
        ProxiedClient(address(server, "tcp-listener"), prefix=header) as client,
    ):
        assert await client.mapped_address() == client.local_address


async def test_per_ip_cap_counts_the_real_client(cert: CertPair) -> None:
    """All through one LB address: the cap trips for the client with too many connections
    only; before its header a connection counts against the LB's address."""
    async with proxied_server(proxy_config(cert, max_connections_per_ip=2)) as server:
        lb = address(server, "tcp-listener")
        first = ("198.18.0.1", 5000)
        held = [
            ProxiedClient(lb, prefix=encode_v2((first[0], first[1] + i), LB_SIDE)) for i in range(2)
        ]
        for c in held:
            await c.__aenter__()
            await c.mapped_address()
        try:
            async with ProxiedClient(lb, prefix=encode_v2((first[0], 6000), LB_SIDE)) as third:
                assert await third.closed_by_server()
            other = encode_v2(("198.18.0.2", 5000), LB_SIDE)
            async with ProxiedClient(lb, prefix=other) as client:
                assert await client.mapped_address() == ("198.18.0.2", 5000)
            # two connections still awaiting their header hold the LB's address to its cap
            silent = [ProxiedClient(lb) for _ in range(2)]
            for c in silent:
                await c.__aenter__()
            await asyncio.sleep(0.2)  # accepted (the server accepts before it reads)
            async with ProxiedClient(lb, prefix=other) as late:
                assert await late.closed_by_server()
            for c in silent:
                c.close()
        finally:
            for c in held:
                c.close()
        assert stats(server, "tcp-listener").proxy_malformed == 0


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"protocol": "TURN-UDP"}, "listeners[0].proxy_protocol"),
        ({"proxy_protocol_trusted": []}, "listeners[0].proxy_protocol_trusted"),
        ({"proxy_protocol_trusted": ["10.0.0.0/33"]}, "listeners[0].proxy_protocol_trusted[0]"),
        ({"proxy_protocol_trusted": ["lb.example"]}, "listeners[0].proxy_protocol_trusted[0]"),
        ({"proxy_protocol": "yes"}, "listeners[0].proxy_protocol"),
        ({"proxy_protocol": False}, "listeners[0].proxy_protocol_trusted"),
    ],
)
def test_bad_keys_name_the_field(edit: dict[str, Any], field: str) -> None:
    config = make_config(port=free_port(), protocols=("TURN-TCP",))
    config["listeners"][0].update(proxy_protocol=True, proxy_protocol_trusted=["10.0.0.0/8"])
    config["listeners"][0].update(edit)
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    assert err.value.field == field, err.value


def test_keys_parse_and_round_trip() -> None:
    config = make_config(port=free_port(), protocols=("TURN-TCP",))
    config["listeners"][0].update(
        proxy_protocol="true", proxy_protocol_trusted=["10.1.2.3/8", "fd00::1"]
    )
    lis = parse_config(config).listeners[0]
    assert lis.proxy_protocol and lis.proxy_protocol_trusted == ("10.0.0.0/8", "fd00::1/128")
    assert parse_config(parse_config(config).to_dict()).listeners[0] == lis
    plain = parse_config(make_config(port=free_port(), protocols=("TURN-TCP",))).listeners[0]
    assert not plain.proxy_protocol and "proxy_protocol" not in plain.to_dict()
