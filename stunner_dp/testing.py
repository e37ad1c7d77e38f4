"""A pytest plugin and helpers for testing WebRTC code against a real stunner-dp TURN server.

Installing stunner-dp registers this module as a pytest plugin (entry point ``pytest11``), so
its fixtures are available in any test suite without imports. The fixtures are async: use
pytest-asyncio (``asyncio_mode = "auto"``, or mark the tests with ``@pytest.mark.asyncio``).

The ``turn_server`` fixture starts a server inside the test's event loop, on 127.0.0.1, with a
TURN-UDP and a TURN-TCP listener sharing one free port, static credentials, a relay port
window inside 30000-32767 that differs from test to test, and a cluster that lets clients
reach peers on 127.0.0.0/8 and ::1. It is stopped when the test ends::

    async def test_my_ice_agent(turn_server):
        ice_servers = [{
            "urls": [turn_server.turn_url("udp"), turn_server.turn_url("tcp")],
            "username": turn_server.username,
            "credential": turn_server.password,
        }]
        ...
        assert turn_server.server.allocation_count == 1

The object it yields has ``server`` (the running :class:`stunner_dp.net.runtime.Server`),
``host``, ``port``, ``username``, ``password``, ``realm``, ``config`` (the config dict it was
started with), ``address`` (``(host, port)``) and ``turn_url(transport)``.

To change the config, override the ``turn_server_overrides`` fixture; it returns keyword
arguments for :func:`make_config`::

    @pytest.fixture
    def turn_server_overrides():
        return {"auth_type": "ephemeral", "secret": "my-shared-secret"}

or start servers yourself with :func:`start_turn_server`, an async context manager taking the
same keyword arguments plus the ones of ``Server`` (e.g. ``nonce_secret=``)::

    async with start_turn_server(endpoints=["0.0.0.0/0"]) as ts:
        ...

Other helpers: :func:`free_port` (a port free for both UDP and TCP), :func:`udp_echo_peer` (an
async context manager running a UDP echo server, yielding its address), :func:`relay_window`
(a fresh relay port range) and :func:`ephemeral_credentials` (a TURN REST API username and
password for a shared secret).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import random
import socket
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pytest

from stunner_dp.net.runtime import Server

if TYPE_CHECKING:
    _async_fixture = pytest.fixture
else:
    try:  # works in pytest-asyncio's strict mode too; plain fixtures need auto mode
        from pytest_asyncio import fixture as _async_fixture
    except ImportError:  # stunner-dp installed without pytest-asyncio
        _async_fixture = pytest.fixture

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_REALM",
    "DEFAULT_USERNAME",
    "TurnServerHandle",
    "ephemeral_credentials",
    "free_port",
    "make_config",
    "relay_window",
    "start_turn_server",
    "turn_server",
    "turn_server_overrides",
    "udp_echo_peer",
]

DEFAULT_USERNAME = "test-user"
DEFAULT_PASSWORD = "test-pass"
DEFAULT_REALM = "stunner-dp.test"
LOOPBACK_PEERS = ("127.0.0.0/8", "::1")

RELAY_LOW, RELAY_HIGH = 30000, 32767
RELAY_WINDOW = 100
_START_ATTEMPTS = 5

# Successive windows walk the range from a random start, so two tests in one run never share
# a window, and two runs in parallel are unlikely to.
_WINDOW_SLOTS = (RELAY_HIGH - RELAY_LOW + 1) // RELAY_WINDOW
_window_counter = itertools.count(random.randrange(_WINDOW_SLOTS))


def relay_window(size: int = RELAY_WINDOW) -> tuple[int, int]:
    """A relay port range of `size` ports inside 30000-32767, a different one on each call."""
    slots = (RELAY_HIGH - RELAY_LOW + 1) // size
    low = RELAY_LOW + (next(_window_counter) % slots) * size
    return low, low + size - 1


def free_port(host: str = "127.0.0.1", *, udp: bool = True, tcp: bool = True) -> int:
    """A port on `host` that is free, at the time of asking, for UDP and for TCP (or for the
    one asked for). Another process may take it before you bind it: be ready to retry."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        kinds = [k for k, wanted in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)) if wanted]
        if not kinds:
            raise ValueError("free_port: ask for udp, tcp or both")
        first = socket.socket(family, kinds[0])
        try:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if len(kinds) == 1:
                return port
            second = socket.socket(family, kinds[1])
            try:
                second.bind((host, port))
            except OSError:
                continue
            finally:
                second.close()
            return port
        finally:
            first.close()
    raise RuntimeError(f"free_port: no port free for both UDP and TCP on {host}")


def ephemeral_credentials(secret: str, user: str = "user", ttl: float = 3600.0) -> tuple[str, str]:
    """TURN REST API credentials: username ``<expiry>:<user>`` and password
    ``base64(HMAC-SHA1(secret, username))``. A negative `ttl` gives expired ones."""
    username = f"{int(time.time() + ttl)}:{user}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


def make_config(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    protocols: Iterable[str] = ("TURN-UDP", "TURN-TCP"),
    auth_type: str = "static",
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    secret: str = "",
    realm: str = DEFAULT_REALM,
    min_relay_port: int | None = None,
    max_relay_port: int | None = None,
    endpoints: Iterable[str] = LOOPBACK_PEERS,
    name: str = "stunner-dp-test",
    **sections: Any,
) -> dict[str, Any]:
    """A STUNner v1 config dict for tests.

    One listener per protocol (named ``udp-listener``, ``tcp-listener``, ...), all on `port`
    (0: let :func:`start_turn_server` pick one) and advertising `host` as the relay address;
    all route to one cluster ``peers`` holding `endpoints`. The relay range defaults to a fresh
    :func:`relay_window`. `auth_type` is ``static`` (`username`, `password`) or ``ephemeral``
    (`secret`). Any other keyword (``admin=``, ``auth=``, ``listeners=``, ``clusters=``)
    replaces that top-level section as given.
    """
    if min_relay_port is None or max_relay_port is None:
        low, high = relay_window()
        min_relay_port = low if min_relay_port is None else min_relay_port
        max_relay_port = high if max_relay_port is None else max_relay_port
    if auth_type == "ephemeral":
        credentials = {"secret": secret}
    else:
        credentials = {"username": username, "password": password}
    listeners = []
    for protocol in protocols:
        transport = protocol.upper().removeprefix("TURN-").lower()
        listeners.append(
            {
                "name": f"{transport}-listener",
                "protocol": protocol,
                "address": host,
                "port": port,
                "min_relay_port": min_relay_port,
                "max_relay_port": max_relay_port,
                "routes": ["peers"],
            }
        )
    config: dict[str, Any] = {
        "version": "v1",
        "admin": {
            "name": name,
            "loglevel": "all:INFO",
            "metrics_endpoint": "",
            "healthcheck_endpoint": "",
        },
        "auth": {"type": auth_type, "realm": realm, "credentials": credentials},
        "listeners": listeners,
        "clusters": [{"name": "peers", "type": "STATIC", "endpoints": list(endpoints)}],
    }
    config.update(sections)
    return config


@dataclass
class TurnServerHandle:
    """What the `turn_server` fixture and :func:`start_turn_server` yield."""

    server: Server
    host: str
    port: int
    username: str
    password: str
    realm: str
    config: dict[str, Any] = field(repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def secret(self) -> str:
        """The shared secret when the server uses ephemeral auth, else ``""``."""
        return str(self.config["auth"]["credentials"].get("secret", ""))

    def turn_url(self, transport: str = "udp") -> str:
        """An ICE server URL, e.g. ``turn:127.0.0.1:40123?transport=udp``."""
        return f"turn:{self.host}:{self.port}?transport={transport}"

    def listener_port(self, name: str) -> int:
        return self.server.port(name)


@asynccontextmanager
async def start_turn_server(
    *,
    nonce_secret: bytes | None = None,
    software: str = "",
    forwarder: str | None = None,
    **config_overrides: Any,
) -> AsyncIterator[TurnServerHandle]:
    """Start a server from ``make_config(**config_overrides)`` in the running event loop; the
    sockets bind to the config's `host`; `forwarder` is Server's ("python": no compiled one).
    Without a `port`, a free one is picked, and picked again when another process takes it
    first."""
    host = str(config_overrides.get("host", "127.0.0.1"))
    fixed_port = int(config_overrides.pop("port", 0))
    for attempt in range(_START_ATTEMPTS):
        port = fixed_port or free_port(host)
        config = make_config(port=port, **config_overrides)
        server = Server(
            config,
            nonce_secret=nonce_secret,
            software=software,
            bind_host=host,
            forwarder=forwarder,
        )
        try:
            await server.start()
        except RuntimeError:
            await server.stop()
            if fixed_port or attempt == _START_ATTEMPTS - 1:
                raise
            continue
        if server.failed_listeners:
            await server.stop()
            if fixed_port or attempt == _START_ATTEMPTS - 1:
                raise RuntimeError(
                    "listeners failed: " + "; ".join(server.failed_listeners.values())
                )
            continue  # lost a race for the port: another one
        break
    auth = config["auth"]["credentials"]
    handle = TurnServerHandle(
        server=server,
        host=host,
        port=port,
        username=str(auth.get("username", "")),
        password=str(auth.get("password", "")),
        realm=str(config["auth"]["realm"]),
        config=config,
    )
    try:
        yield handle
    finally:
        await server.stop()


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        if self.transport is not None:
            self.transport.sendto(data, addr)


@asynccontextmanager
async def udp_echo_peer(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[tuple[str, int]]:
    """A UDP server on `host` that sends every datagram back to its sender; yields its
    ``(host, port)``."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(host, port))
    try:
        sockname = transport.get_extra_info("sockname")
        yield str(sockname[0]), int(sockname[1])
    finally:
        transport.close()


@pytest.fixture
def turn_server_overrides() -> dict[str, Any]:
    """Keyword arguments for :func:`make_config` used by `turn_server`; override it to change
    the server's config."""
    return {}


@_async_fixture
async def turn_server(turn_server_overrides: dict[str, Any]) -> AsyncIterator[TurnServerHandle]:
    """A stunner-dp server on 127.0.0.1 (TURN-UDP and TURN-TCP on one free port), stopped at
    the end of the test."""
    async with start_turn_server(**turn_server_overrides) as handle:
        yield handle
