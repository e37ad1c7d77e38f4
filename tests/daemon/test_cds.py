"""The CDS client against a CDS server written here: watch, updates, reconnects, bad configs,
keepalive, the one-shot GET; in-process (Daemon) and as `stunnerd -c http://...` processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.cds_server import CdsServer
from helpers.ops import (
    Stunnerd,
    allocate_fails,
    base_config,
    http_get,
    listener,
    ports,
    turn_client,
    until,
    wait_http,
    window,
)

from stunner_dp.config import ConfigError, StunnerConfig
from stunner_dp.daemon.origin.cds import CdsOrigin, cds_urls
from stunner_dp.daemon.stunnerd import Daemon, DaemonOptions
from stunner_dp.testing import udp_echo_peer

CONFIG_ID = "stunner/udp-gateway"


def test_cds_urls() -> None:
    urls = cds_urls(":13478", "ns/gw", "node-1")
    assert urls.get == "http://127.0.0.1:13478/api/v1/configs/ns/gw"
    assert urls.watch == "ws://127.0.0.1:13478/api/v1/configs/ns/gw?watch=true&node=node-1"
    assert urls.origin == "http://127.0.0.1:13478"
    urls = cds_urls("https://cds.example:443/ignored", "ns/gw")
    assert urls.watch == "wss://cds.example:443/api/v1/configs/ns/gw?watch=true"
    assert cds_urls("ws://[::1]:9000", "a/b").get == "http://[::1]:9000/api/v1/configs/a/b"
    for bad_id in ("", "gw", "ns/", "/gw", "a/b/c"):
        with pytest.raises(ConfigError):
            cds_urls(":13478", bad_id)
    with pytest.raises(ConfigError):
        cds_urls("ftp://x:1", "a/b")


def _config(port: int, health: int, user: str = "user-a", **extra: Any) -> dict[str, Any]:
    return base_config(
        health_port=health,
        listeners=[listener("udp", port, ["peers"], window())],
        clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1"]}],
        username=user,
        password=user.replace("user", "pass"),
        **extra,
    )


async def test_daemon_watches_cds_updates_reconnects_and_skips_bad_configs() -> None:
    turn_port, health = ports(2)
    base = f"http://127.0.0.1:{health}"
    async with CdsServer() as cds, udp_echo_peer() as echo:
        daemon = Daemon(
            DaemonOptions(
                origin=cds.url,
                watch=True,
                config_id=CONFIG_ID,
                node="node-7",
                boot_health_endpoint=base,
            )
        )
        await daemon.start()
        origin = daemon.origin
        assert isinstance(origin, CdsOrigin)
        try:
            # no config yet: live, not ready
            await until(lambda: cds.watchers == 1, what="the watch connection")
            assert await http_get(base + "/live") == (200, {})
            assert await http_get(base + "/ready") == (
                503,
                {"status": 503, "message": "stunnerd not ready"},
            )
            _, body = await http_get(base + "/status")
            assert body["status"] == "NOT-READY"
            assert cds.ids == [CONFIG_ID]
            assert cds.queries[0] == {"watch": "true", "node": "node-7"}
            assert cds.headers[0]["Origin"] == cds.url

            # the first config
            await cds.push(_config(turn_port, health))
            await wait_http(base + "/ready", lambda s, b: s == 200, what="ready")
            server = ("127.0.0.1", turn_port)
            async with turn_client(server, "user-a", "pass-a") as client:
                assert await client.round_trips(echo, 10) == 10

                # an update: new credentials, the allocation keeps relaying
                await cds.push(_config(turn_port, health, "user-b"))
                await until(
                    lambda: daemon.config is not None and daemon.config.auth.username == "user-b"
                )
                assert await client.round_trips(echo, 10) == 10
                assert await allocate_fails(server, "user-a", "pass-a") == 401
                assert await allocate_fails(server, "user-b", "pass-b") is None

                # the server drops the connection: the client reconnects and gets the config again
                messages = origin.messages
                await cds.drop()
                await until(lambda: cds.connects == 2 and origin.messages == messages + 1, 5.0)
                assert daemon.config.auth.username == "user-b"  # type: ignore[union-attr]
                assert cds.watchers == 1

                # invalid configs are skipped: bad JSON, a bad field, and the "deleted" marker
                applied = daemon.configs_applied
                await cds.push("{not json")
                await cds.push(_config(70000, health, "user-c"))
                deleted = _config(turn_port, health, "dummy-username")
                deleted["listeners"] = []
                await cds.push(deleted)
                await until(lambda: origin.messages == messages + 4, what="three more messages")
                assert daemon.configs_applied == applied
                assert daemon.config.auth.username == "user-b"  # type: ignore[union-attr]
                assert await http_get(base + "/ready") == (200, {"status": 200, "message": "READY"})
                assert await client.round_trips(echo, 10) == 10

                # and a good config after them is taken again
                await cds.push(_config(turn_port, health, "user-d"))
                await until(lambda: daemon.config.auth.username == "user-d")  # type: ignore[union-attr]
                assert await allocate_fails(server, "user-d", "pass-d") is None

                # SIGHUP (reload) on a watch: reconnect, which brings the config again
                connects = cds.connects
                origin.reload()
                await until(lambda: cds.connects == connects + 1, 5.0, "the reconnect")
                await client.delete()
        finally:
            await daemon.stop()


async def test_keepalive_drops_a_connection_without_pongs() -> None:
    got: list[StunnerConfig] = []

    async def apply(config: StunnerConfig) -> bool:
        got.append(config)
        return True

    turn_port, health = ports(2)
    async with CdsServer(answer_pings=False) as silent, CdsServer() as healthy:
        for srv in (silent, healthy):
            srv.config = _config(turn_port, health)
        clients = [
            CdsOrigin(
                srv.url, CONFIG_ID, apply, ping_interval=0.1, pong_timeout=0.4, retry_interval=0.1
            )
            for srv in (silent, healthy)
        ]
        for client in clients:
            await client.start()
        try:
            await until(lambda: silent.connects >= 3, 10.0, "reconnects after lost pongs")
            assert silent.pings >= 3
            assert healthy.connects == 1  # pongs keep it up
            assert healthy.pings >= 5
            # every (re)connect brings the config: the third reconnect is counted when it
            # opens, its config arrives just after
            await until(lambda: len(got) >= 4, 10.0, "a config per (re)connect")
        finally:
            for client in clients:
                await client.stop()


async def test_one_shot_get_retries_until_the_config_is_there() -> None:
    got: list[StunnerConfig] = []

    async def apply(config: StunnerConfig) -> bool:
        got.append(config)
        return True

    turn_port, health = ports(2)
    async with CdsServer() as cds:
        cds.config = _config(turn_port, health)
        cds.fail_gets = 3
        client = CdsOrigin(cds.url, CONFIG_ID, apply, watch=False, retry_interval=0.05)
        await client.start()
        try:
            await until(lambda: len(got) == 1, what="the config")
            await asyncio.sleep(0.3)
            assert cds.gets == 4 and len(got) == 1  # no more requests once it arrived
            assert got[0].auth.username == "user-a"
            assert cds.connects == 0
        finally:
            await client.stop()


async def test_stunnerd_process_watches_cds(tmp_path: Path) -> None:
    turn_port, health, boot = ports(3)
    base = f"http://127.0.0.1:{health}"
    async with CdsServer() as cds, udp_echo_peer() as echo:
        env = {
            "STUNNER_NODENAME": "node-3",
            "STUNNER_DP_HEALTHCHECK_ENDPOINT": f"http://127.0.0.1:{boot}",
        }
        daemon = Stunnerd(["-c", cds.url, "-w", "-i", "ns/gw"], tmp_path / "stunnerd.log", env)
        try:
            await wait_http(f"http://127.0.0.1:{boot}/ready", lambda s, b: s == 503, what="503")
            await until(lambda: cds.watchers == 1, what="the watch connection")
            assert cds.queries[-1] == {"watch": "true", "node": "node-3"}
            await cds.push(_config(turn_port, health))
            await wait_http(base + "/ready", lambda s, b: s == 200, what="ready")
            server = ("127.0.0.1", turn_port)
            async with turn_client(server, "user-a", "pass-a") as client:
                # the channel is bound now: requests under the old credentials fail after a
                # credential change, relaying over a bound channel does not
                assert await client.round_trips(echo, 5) == 5
                await cds.drop()
                await until(lambda: cds.connects == 2, 5.0, "the reconnect")
                await cds.push(_config(turn_port, health, "user-b"))
                await wait_http(
                    base + "/status",
                    lambda s, b: s == 200 and b["auth"].get("username") == "user-b",
                    what="the update",
                )
                assert await client.round_trips(echo, 20) == 20
                assert await allocate_fails(server, "user-b", "pass-b") is None
                await client.delete()
            log = daemon.log()
            assert "CDS connected" in log and "CDS disconnected" in log
        finally:
            daemon.stop()


async def test_stunnerd_process_one_shot_from_the_environment(tmp_path: Path) -> None:
    turn_port, health, boot = ports(3)
    async with CdsServer() as cds:
        env = {
            "STUNNER_CONFIG_ORIGIN": cds.url,
            "STUNNER_NAMESPACE": "ns",
            "STUNNER_NAME": "gw",
            "STUNNER_DP_HEALTHCHECK_ENDPOINT": f"http://127.0.0.1:{boot}",
        }
        daemon = Stunnerd([], tmp_path / "stunnerd.log", env)
        try:
            await until(lambda: cds.gets >= 2, what="retried GETs")
            assert await http_get(f"http://127.0.0.1:{boot}/ready") == (
                503,
                {"status": 503, "message": "stunnerd not ready"},
            )
            cds.config = _config(turn_port, health)
            await wait_http(f"http://127.0.0.1:{health}/ready", lambda s, b: s == 200, what="ready")
            assert cds.ids[-1] == "ns/gw" and cds.connects == 0
            assert await allocate_fails(("127.0.0.1", turn_port), "user-a", "pass-a") is None
            # a config runs and nothing is allocated: the drain ends at once
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait_exit() == 0
        finally:
            daemon.stop()


async def test_sigterm_before_the_first_config_exits_at_once(tmp_path: Path) -> None:
    (boot,) = ports(1)
    async with CdsServer() as cds:
        daemon = Stunnerd(
            ["-c", cds.url, "-w", "-i", "ns/gw"],
            tmp_path / "stunnerd.log",
            {"STUNNER_DP_HEALTHCHECK_ENDPOINT": f"http://127.0.0.1:{boot}"},
        )
        try:
            await until(lambda: cds.watchers == 1, what="the watch connection")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait_exit(5) == 0
        finally:
            daemon.stop()


def test_missing_config_id_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUNNER_")}
    done = subprocess.run(
        [sys.executable, "-m", "stunner_dp.cli", "-c", "http://127.0.0.1:1", "-w"],
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert b"NAMESPACE/NAME" in done.stderr + done.stdout
