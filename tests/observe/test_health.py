"""/live, /ready and /status of an in-process Daemon: bodies, secrets, failed listeners,
an endpoint moved or disabled by a reconfiguration, a path shared with another endpoint."""

from __future__ import annotations

import json
import socket
from typing import Any

from aiohttp import web
from helpers.ops import base_config, http_get, listener, ports, window

from stunner_dp.config import parse_config
from stunner_dp.daemon.stunnerd import Daemon, DaemonOptions
from stunner_dp.net.runtime import Server


def _config(health: int | str, *listeners_: dict[str, Any], **auth: Any) -> dict[str, Any]:
    config = base_config(
        health_port=0,
        listeners=list(listeners_),
        clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1"]}],
    )
    config["admin"]["healthcheck_endpoint"] = (
        health if isinstance(health, str) else f"http://127.0.0.1:{health}"
    )
    if auth:
        config["auth"] = auth
    return config


async def test_status_has_no_secret_and_names_a_failed_listener() -> None:
    good, busy, health = ports(3)
    win = window()
    config = _config(
        health,
        listener("good", good, ["peers"], win),
        listener("busy", busy, ["peers"], win),
        type="ephemeral",
        realm="ops.test",
        credentials={"secret": "very-secret-value"},
    )
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("0.0.0.0", busy))
    daemon = Daemon(DaemonOptions(), config=parse_config(config))
    try:
        await daemon.start()
        base = f"http://127.0.0.1:{health}"
        assert await http_get(base + "/ready") == (200, {"status": 200, "message": "READY"})
        status, body = await http_get(base + "/status")
        assert status == 200
        assert "very-secret-value" not in json.dumps(body)
        assert body["auth"] == {"type": "ephemeral", "realm": "ops.test"}
        assert body["status"] == "READY"
        assert body["allocationCount"] == 0
        assert body["version"]
        assert body["admin"]["name"] == "ops-test"
        assert body["clusters"] == [
            {"name": "peers", "type": "STATIC", "protocol": "UDP", "endpoints": ["127.0.0.1"]}
        ]
        by_name = {lis["name"]: lis for lis in body["listeners"]}
        assert by_name["good"]["state"] == "running"
        assert by_name["good"]["bound_port"] == good
        assert by_name["busy"]["state"] == "failed"
        assert "could not start" in by_name["busy"]["error"]
        assert "bound_port" not in by_name["busy"]
    finally:
        await daemon.stop()
        blocker.close()


async def test_endpoint_moves_and_turns_off_with_the_config() -> None:
    turn, first, second = ports(3)
    win = window()
    lis = listener("udp", turn, ["peers"], win)
    daemon = Daemon(DaemonOptions(), config=parse_config(_config(first, lis)))
    try:
        await daemon.start()
        assert (await http_get(f"http://127.0.0.1:{first}/live"))[0] == 200
        assert await daemon.apply(parse_config(_config(second, lis)))
        assert (await http_get(f"http://127.0.0.1:{second}/live"))[0] == 200
        assert (await http_get(f"http://127.0.0.1:{first}/live"))[0] == 0  # closed
        assert await daemon.apply(parse_config(_config("", lis)))
        assert (await http_get(f"http://127.0.0.1:{second}/live"))[0] == 0
        assert daemon.http.mounted() == {}
    finally:
        await daemon.stop()


async def test_another_endpoint_shares_the_health_port() -> None:
    turn, health = ports(2)
    daemon = Daemon(
        DaemonOptions(),
        config=parse_config(_config(health, listener("udp", turn, ["peers"], window()))),
    )

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(text="stunner_allocations_active 0\n")

    try:
        await daemon.start()
        await daemon.http.mount("127.0.0.1", health, "/metrics", metrics)
        base = f"http://127.0.0.1:{health}"
        assert await http_get(base + "/metrics") == (200, "stunner_allocations_active 0\n")
        assert await http_get(base + "/live") == (200, {})
    finally:
        await daemon.stop()


async def test_ready_follows_drain_and_force_ready() -> None:
    turn, health = ports(2)
    config = parse_config(_config(health, listener("udp", turn, ["peers"], window())))
    for force, expected in ((False, 503), (True, 200)):
        daemon = Daemon(DaemonOptions(force_ready=force, grace_period=0), config=config)
        try:
            await daemon.start()
            base = f"http://127.0.0.1:{health}"
            assert (await http_get(base + "/ready"))[0] == 200
            daemon.begin_drain()
            assert (await http_get(base + "/ready"))[0] == expected
            assert (await http_get(base + "/status"))[1]["status"] == "TERMINATING"
            server = daemon.dataplane.server  # type: ignore[attr-defined]
            assert isinstance(server, Server) and server.turn is not None
            assert server.turn.draining
            assert await daemon.drain() == "no allocation left"
        finally:
            await daemon.stop()


async def test_a_config_that_cannot_start_leaves_the_daemon_not_ready() -> None:
    busy, health = ports(2)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("0.0.0.0", busy))
    config = parse_config(_config(health, listener("udp", busy, ["peers"], window())))
    daemon = Daemon(
        DaemonOptions(watch=True, boot_health_endpoint=f"http://127.0.0.1:{health}"),
        config=config,
    )
    try:
        await daemon.start()  # with -w the daemon waits for a better config
        base = f"http://127.0.0.1:{health}"
        assert (await http_get(base + "/ready"))[0] == 503
        assert (await http_get(base + "/status"))[1]["status"] == "NOT-READY"
        assert daemon.configs_rejected == 1
    finally:
        await daemon.stop()
        blocker.close()


async def test_the_health_endpoint_binds_the_address_it_names() -> None:
    """admin.healthcheck_endpoint http://127.0.0.2:<port> listens there only (an operator
    points it at the pod IP so /status is not on every interface); [::1] works too."""
    udp, health = ports(2)
    config = _config(f"http://127.0.0.2:{health}", listener("udp", udp, ["peers"], window()))
    daemon = Daemon(DaemonOptions(), config=parse_config(config))
    try:
        await daemon.start()
        status, _ = await http_get(f"http://127.0.0.2:{health}/live")
        assert status == 200
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", health)) != 0  # not on the other addresses
        six = dict(
            config, admin=dict(config["admin"], healthcheck_endpoint=f"http://[::1]:{health}")
        )
        assert await daemon.apply(parse_config(six))
        status, _ = await http_get(f"http://[::1]:{health}/live")
        assert status == 200
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.2", health)) != 0
    finally:
        await daemon.stop()
