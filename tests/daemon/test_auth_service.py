"""`stunner-dp auth-service`: the iceServers it hands out relay through a running stunner-dp
(aioice, UDP and TCP, static and ephemeral auth); expired ones are refused; a bad parameter is
400 naming it; the config follows the origin (a watched file, a CDS server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from helpers.cds_server import CdsServer

from stunner_dp.config import parse_config
from stunner_dp.config.uri import parse_turn_uri
from stunner_dp.daemon.auth_service import AuthService
from stunner_dp.daemon.origin import make_origin
from stunner_dp.testing import (
    DEFAULT_USERNAME,
    free_port,
    make_config,
    start_turn_server,
    udp_echo_peer,
)
from stunner_dp.turn.auth import ephemeral_password

SECRET = "auth-service-test-secret"
TIMEOUT = 5.0
MESSAGES = 10


class Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, Any]) -> None:
        self.queue.put_nowait((data, (str(addr[0]), int(addr[1]))))


@contextlib.asynccontextmanager
async def serving(
    config: dict[str, Any] | None, now: Callable[[], float] = time.time
) -> AsyncIterator[tuple[AuthService, str]]:
    """The auth service on a free loopback port, with `config` applied; yields it and its URL."""
    service = AuthService(now=now)
    if config is not None:
        await service.apply(parse_config(config))
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        for _ in range(5):
            port = free_port(udp=False)
            try:
                await web.TCPSite(runner, "127.0.0.1", port).start()
                break
            except OSError:
                continue
        else:
            raise RuntimeError("no free port for the auth service")
        yield service, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
        is_json = resp.content_type == "application/json"
        return resp.status, json.loads(text) if is_json else text


async def relay_round_trip(uri: str, username: str, password: str, peer: tuple[str, int]) -> None:
    """aioice allocates with these credentials and MESSAGES go to the echo peer and back."""
    parsed = parse_turn_uri(uri)
    relay, receiver = await asyncio.wait_for(
        create_turn_endpoint(
            Receiver, (parsed.host, parsed.port), username, password, transport=parsed.transport
        ),
        TIMEOUT,
    )
    try:
        sent = [f"{uri}-{i}".encode() for i in range(MESSAGES)]
        for payload in sent:
            relay.sendto(payload, peer)
        got = []
        for _ in sent:
            data, source = await asyncio.wait_for(receiver.queue.get(), TIMEOUT)
            assert source == peer
            got.append(data)
        assert sorted(got) == sorted(sent)
    finally:
        relay.close()


@pytest.mark.parametrize("auth_type", ["ephemeral", "static"])
async def test_ice_servers_relay_through_stunner_dp(auth_type: str) -> None:
    async with (
        start_turn_server(auth_type=auth_type, secret=SECRET) as ts,
        serving(ts.config) as (_, url),
        udp_echo_peer() as peer,
    ):
        status, body = await get(f"{url}/ice?service=turn&username=alice&ttl=600")
        assert status == 200, body
        assert body["iceTransportPolicy"] == "all"
        (server,) = body["iceServers"]
        assert sorted(server["urls"]) == sorted(
            f"turn:127.0.0.1:{ts.port}?transport={t}" for t in ("udp", "tcp")
        )
        if auth_type == "ephemeral":
            expiry, user = server["username"].split(":")
            assert user == "alice"
            assert 0 < int(expiry) - time.time() <= 600
        else:
            assert (server["username"], server["credential"]) == (ts.username, ts.password)
        for uri in server["urls"]:
            await relay_round_trip(uri, server["username"], server["credential"], peer)


async def test_turn_rest_token_relays() -> None:
    async with (
        start_turn_server(auth_type="ephemeral", secret=SECRET) as ts,
        serving(ts.config) as (_, url),
        udp_echo_peer() as peer,
    ):
        status, body = await get(f"{url}/?service=turn&username=bob&ttl=120")
        assert status == 200, body
        assert set(body) == {"username", "password", "ttl", "uris"}
        assert body["ttl"] == 120
        assert body["username"].endswith(":bob")
        await relay_round_trip(body["uris"][0], body["username"], body["password"], peer)


async def test_expired_credentials_are_refused() -> None:
    """Credentials minted by a clock two hours behind, valid for one: the server says 401."""
    async with (
        start_turn_server(auth_type="ephemeral", secret=SECRET, protocols=("TURN-UDP",)) as ts,
        serving(ts.config, now=lambda: time.time() - 7200) as (_, url),
        udp_echo_peer() as peer,
    ):
        status, body = await get(f"{url}/ice?service=turn&username=late&ttl=3600")
        assert status == 200, body
        (server,) = body["iceServers"]
        assert int(server["username"].split(":")[0]) < time.time()
        with pytest.raises(TransactionFailed) as failed:
            await relay_round_trip(
                server["urls"][0], server["username"], server["credential"], peer
            )
        assert failed.value.response.attributes["ERROR-CODE"][0] == 401
        assert ts.server.turn.allocations["udp-listener"] == {}


@pytest.mark.parametrize(
    ("path", "query", "name"),
    [
        ("/", "username=u", "service"),  # required on the TURN REST endpoint
        ("/", "service=stun", "service"),
        ("/ice", "service=turns", "service"),
        ("/ice", "service=turn&ttl=abc", "ttl"),
        ("/", "service=turn&ttl=0", "ttl"),
        ("/", "service=turn&ttl=-5", "ttl"),
        ("/ice", "service=turn&ttl=99999999999", "ttl"),
        ("/ice", "service=turn&iceTransportPolicy=none", "iceTransportPolicy"),
        ("/ice", "service=turn&gateway=gw", "gateway"),
        ("/ice", "service=turn&namespace=ns&listener=l", "listener"),
        ("/ice", "service=turn&public-ip=not%20a%20host", "public-ip"),
        ("/ice", "service=turn&username=a%0Ab", "username"),
        ("/", "service=turn&username=" + "x" * 600, "username"),
    ],
)
async def test_bad_parameter_is_400_naming_it(path: str, query: str, name: str) -> None:
    async with serving(make_config(port=3479, auth_type="ephemeral", secret=SECRET)) as (svc, url):
        status, body = await get(f"{url}{path}?{query}")
        assert status == 400
        assert f"invalid parameter {name!r}" in body
        # and the service goes on serving
        status, ok = await get(f"{url}/ice?service=turn")
        assert status == 200, ok
        assert svc.requests == 2


def operator_config() -> dict[str, Any]:
    """Listeners named as the operator names them, with public addresses, TLS and DTLS."""
    base = make_config(port=3478, auth_type="static")

    def listener(name: str, protocol: str, public: str, port: int) -> dict[str, Any]:
        return {
            "name": name,
            "protocol": protocol,
            "address": "10.0.0.5",
            "port": 3478,
            "public_address": public,
            "public_port": port,
            "routes": ["peers"],
        }

    base["listeners"] = [
        listener("ns1/gw/udp", "TURN-UDP", "34.1.1.1", 3478),
        listener("ns1/gw/tls", "TURN-TLS", "34.1.1.1", 443),
        listener("ns1/other/dtls", "TURN-DTLS", "2001:db8::7", 5349),
        listener("ns2/gw/tcp", "TURN-TCP", "", 0),
    ]
    for lis in base["listeners"]:
        if lis["protocol"] in ("TURN-TLS", "TURN-DTLS"):
            lis["cert"], lis["key"] = "Y2VydA==", "a2V5"
    return base


async def test_uris_filters_and_public_ip() -> None:
    async with serving(operator_config()) as (_, url):
        _, body = await get(f"{url}/ice?service=turn&iceTransportPolicy=relay")
        assert body["iceTransportPolicy"] == "relay"
        assert body["iceServers"][0]["urls"] == [
            "turn:34.1.1.1:3478?transport=udp",
            "turns:34.1.1.1:443?transport=tcp",
            "turns:[2001:db8::7]:5349?transport=udp",
            "turn:10.0.0.5:3478?transport=tcp",  # no public address: the listener's own
        ]
        _, body = await get(f"{url}/ice?service=turn&namespace=ns1&gateway=gw")
        assert body["iceServers"][0]["urls"] == [
            "turn:34.1.1.1:3478?transport=udp",
            "turns:34.1.1.1:443?transport=tcp",
        ]
        _, body = await get(f"{url}/?service=turn&namespace=ns1&gateway=gw&listener=tls")
        assert body["uris"] == ["turns:34.1.1.1:443?transport=tcp"]
        _, body = await get(f"{url}/?service=turn&namespace=ns2&public-ip=turn.example.com")
        assert body["uris"] == ["turn:turn.example.com:3478?transport=tcp"]
        status, text = await get(f"{url}/ice?service=turn&namespace=ns3")
        assert status == 404 and "no valid listener" in text


async def test_no_config_yet_is_500() -> None:
    async with serving(None) as (_, url):
        status, text = await get(f"{url}/ice?service=turn")
        assert status == 500 and "no STUNner configuration" in text


async def test_stun_only_config_gives_stun_uris() -> None:
    config = make_config(port=3478, host="192.0.2.10", protocols=("TURN-UDP", "TURN-TCP"))
    config["auth"] = {"type": "none"}
    async with serving(config) as (_, url):
        status, body = await get(f"{url}/ice")
        assert status == 200, body
        assert body["iceServers"] == [{"urls": ["stun:192.0.2.10:3478"]}]
        status, text = await get(f"{url}/?service=turn")
        assert status == 404 and "STUN only" in text


async def test_follows_a_cds_server() -> None:
    """Origin = the operator's CDS server: a new secret there is the secret of the next answer."""
    first = make_config(port=3478, auth_type="ephemeral", secret="one", name="ns/gw")
    second = make_config(port=3478, auth_type="ephemeral", secret="two", name="ns/gw")
    async with CdsServer() as cds, serving(None) as (service, url):
        origin = make_origin(cds.url, service.apply, watch=True, config_id="ns/gw")
        await origin.start()
        try:
            await cds.push(first)
            await wait_for(lambda: service.config is not None)
            assert service.config is not None and service.config.auth.secret == "one"
            await cds.push(second)
            await wait_for(
                lambda: service.config is not None and service.config.auth.secret == "two"
            )
            _, body = await get(f"{url}/?service=turn&username=u")
            assert body["password"] == ephemeral_password("two", body["username"])
        finally:
            await origin.stop()


async def wait_for(done: Callable[[], bool], rounds: int = 100) -> None:
    for _ in range(rounds):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met")


def test_cli_serves_a_watched_file(tmp_path: Path) -> None:
    """`stunner-dp auth-service -c FILE -w`: answers from the file, then from its new version."""
    path = tmp_path / "stunnerd.conf"
    path.write_text(json.dumps(make_config(port=3478, auth_type="static", password="p1")))
    port = free_port(udp=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUNNER_", "CDS_"))}
    exe = Path(sys.executable).with_name("stunner-dp")
    cmd = [str(exe), "auth-service", "-c", str(path), "-w", "-a", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = poll_json(f"http://127.0.0.1:{port}/ice?service=turn", lambda b: True)
        assert body["iceServers"][0]["credential"] == "p1"
        path.write_text(json.dumps(make_config(port=3478, auth_type="static", password="p2")))
        body = poll_json(
            f"http://127.0.0.1:{port}/ice?service=turn",
            lambda b: b["iceServers"][0]["credential"] == "p2",
        )
        assert body["iceServers"][0]["username"] == DEFAULT_USERNAME
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            assert proc.stderr is not None
            proc.stderr.close()


def poll_json(url: str, good: Callable[[Any], bool], rounds: int = 100) -> Any:
    """GET `url` until it answers 200 with JSON that `good` accepts (bounded)."""
    import urllib.error
    import urllib.request

    last: Any = None
    for _ in range(rounds):
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                last = json.loads(resp.read())
                if good(last):
                    return last
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never gave a good answer; last {last!r}")
