"""Hostile and big configs against a relaying daemon (issue 13, items 7 and 8): each hostile
file is refused with a named error and the old config keeps serving; a big valid file is
applied while every packet keeps being relayed; the CDS watcher survives a deeply nested
message and a server that goes away."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.cds_server import CdsServer
from helpers.ops import base_config, http_get, listener, ports, turn_client, until, window

from stunner_dp.config.limits import MAX_CONFIG_BYTES
from stunner_dp.daemon.origin.cds import CdsOrigin
from stunner_dp.daemon.origin.file import FileOrigin
from stunner_dp.daemon.stunnerd import Daemon, DaemonOptions
from stunner_dp.testing import udp_echo_peer

CONFIG_ID = "stunner/udp-gateway"


def _config(port: int, health: int, user: str = "user-a", **extra: Any) -> dict[str, Any]:
    return base_config(
        health_port=health,
        listeners=[listener("udp", port, ["peers"], window())],
        clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1"]}],
        username=user,
        password=user.replace("user", "pass"),
        **extra,
    )


def _alias_bomb(config: dict[str, Any]) -> str:
    lines = ["  a: &a [" + ",".join(["lol"] * 10) + "]"]
    for i, name in enumerate("bcdefg"):
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{'abcdefg'[i]}"] * 10) + "]")
    return yaml.safe_dump(config) + "bomb:\n" + "\n".join(lines) + "\n"


def _deep(config: dict[str, Any]) -> str:
    return json.dumps(config)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"


def _oversized(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config) + "# " + "x" * MAX_CONFIG_BYTES + "\n"


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (_alias_bomb, "values (YAML aliases included"),
        (_deep, "nested more than 32 levels deep"),
        (_oversized, f"larger than {MAX_CONFIG_BYTES} bytes"),
    ],
    ids=["alias-bomb", "deep-nesting", "oversized"],
)
async def test_a_hostile_file_is_refused_and_the_old_config_serves(
    tmp_path: Path, make: Any, named: str
) -> None:
    turn_port, health = ports(2)
    path = tmp_path / "stunnerd.yaml"
    path.write_text(yaml.safe_dump(_config(turn_port, health)))
    daemon = Daemon(DaemonOptions(origin=str(path), watch=False))
    await daemon.start()
    origin = daemon.origin
    assert isinstance(origin, FileOrigin)
    try:
        async with (
            udp_echo_peer() as echo,
            turn_client(("127.0.0.1", turn_port), "user-a", "pass-a") as client,
        ):
            assert await client.round_trips(echo, 10) == 10
            path.write_text(make(_config(turn_port, health, "user-b")))
            origin.reload()  # what SIGHUP does
            await until(lambda: origin.refused == 1, 60.0, "the refusal")
            assert named in origin.last_error and origin.last_error.startswith("config:")
            assert daemon.config is not None and daemon.config.auth.username == "user-a"
            assert await client.round_trips(echo, 10) == 10
            _, status = await http_get(f"http://127.0.0.1:{health}/status")
            assert named in status["config_origin"]["last_error"]
    finally:
        await daemon.stop()


async def test_relaying_goes_on_while_a_big_valid_file_is_applied(tmp_path: Path) -> None:
    turn_port, health = ports(2)
    path = tmp_path / "stunnerd.yaml"
    path.write_text(yaml.safe_dump(_config(turn_port, health)))
    daemon = Daemon(DaemonOptions(origin=str(path), watch=False))
    await daemon.start()
    origin = daemon.origin
    assert isinstance(origin, FileOrigin)
    big = _config(turn_port, health, "user-b")
    big["clusters"].append(
        {"name": "many", "endpoints": [f"10.{i // 250}.{i % 250}.7/32" for i in range(40_000)]}
    )
    try:
        async with (
            udp_echo_peer() as echo,
            turn_client(("127.0.0.1", turn_port), "user-a", "pass-a") as client,
        ):
            path.write_text(json.dumps(big, indent=2))  # about 1.3 MB, parsed in a child
            origin.reload()
            relayed = await client.round_trips(echo, 300, gap=0.005)
            await until(lambda: daemon.configs_applied == 2, 60.0, "the big config")
            assert relayed == 300
            assert daemon.config is not None and len(daemon.config.clusters[1].endpoints) == 40_000
    finally:
        await daemon.stop()


async def test_cds_deeply_nested_message_then_a_good_config_is_applied() -> None:
    turn_port, health = ports(2)
    async with CdsServer() as cds:
        cds.config = _config(turn_port, health)
        daemon = Daemon(DaemonOptions(origin=cds.url, watch=True, config_id=CONFIG_ID))
        await daemon.start()
        origin = daemon.origin
        assert isinstance(origin, CdsOrigin)
        try:
            await until(lambda: daemon.configs_applied == 1, what="the first config")
            await cds.push(_deep(_config(turn_port, health, "user-x")))
            await until(lambda: origin.skipped == 1, 30.0, "the skipped message")
            assert "nested more than" in origin.last_error
            await cds.push(_config(turn_port, health, "user-b"))
            await until(
                lambda: daemon.config is not None and daemon.config.auth.username == "user-b",
                30.0,
                "the good config after the bad one",
            )
            assert cds.connects == 1  # the connection stayed up
            assert origin.state()["connected"] is True
        finally:
            await daemon.stop()


async def test_cds_watcher_reconnects_when_the_server_comes_back() -> None:
    turn_port, health = ports(2)
    base = f"http://127.0.0.1:{health}"
    cds = await CdsServer().start()
    port = cds.port
    cds.config = _config(turn_port, health)
    daemon = Daemon(DaemonOptions(origin=cds.url, watch=True, config_id=CONFIG_ID))
    daemon.options.boot_health_endpoint = base
    origin_ref: list[CdsOrigin] = []
    try:
        await daemon.start()
        origin = daemon.origin
        assert isinstance(origin, CdsOrigin)
        origin_ref.append(origin)
        origin.retry_interval = 0.1
        await until(lambda: daemon.configs_applied == 1, what="the first config")
        await cds.stop()  # the operator restarts: the CDS port is closed for a while
        await until(lambda: not origin.state()["connected"], 10.0, "the disconnect")
        await asyncio.sleep(0.5)  # a few refused reconnects
        _, status = await http_get(base + "/status")
        assert status["config_origin"]["connected"] is False
        assert status["config_origin"]["last_error"]
        # the dataplane still serves its config: ready (see origin/cds.py on readiness)
        assert (await http_get(base + "/ready"))[0] == 200
        cds = CdsServer(port=port)
        cds.config = _config(turn_port, health, "user-b")
        await cds.start()
        await until(
            lambda: daemon.config is not None and daemon.config.auth.username == "user-b",
            30.0,
            "the config from the server that came back",
        )
        assert origin.state()["connected"] is True
    finally:
        await daemon.stop()
        await cds.stop()
