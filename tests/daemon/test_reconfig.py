"""Live reconfiguration from a watched config file (`stunnerd -c FILE -w`), and SIGHUP."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest
from aioice import stun as aiostun
from helpers.ops import (
    Stunnerd,
    allocate_fails,
    base_config,
    error_code,
    http_get,
    listener,
    ports,
    turn_client,
    wait_http,
    window,
    write_config,
)

from stunner_dp.testing import udp_echo_peer

STREAM = 400  # packets relayed across the reconfiguration, 10 ms apart


def _names(body: object) -> list[str]:
    assert isinstance(body, dict)
    return [lis["name"] for lis in body["listeners"]]


async def test_watched_file_reconfigures_without_losing_a_packet(tmp_path: Path) -> None:
    p_a, p_old, p_new, health = ports(4)
    win = window()
    base = f"http://127.0.0.1:{health}"
    async with (
        udp_echo_peer("127.0.0.1") as echo_keep,
        udp_echo_peer("127.0.0.2") as echo_drop,
    ):
        keep = {"name": "keep", "type": "STATIC", "endpoints": ["127.0.0.1"]}
        drop = {"name": "drop", "type": "STATIC", "endpoints": ["127.0.0.2"]}
        first = base_config(
            health_port=health,
            listeners=[
                listener("udp-a", p_a, ["keep", "drop"], win),
                listener("udp-old", p_old, ["keep"], win),
            ],
            clusters=[keep, drop],
        )
        path = tmp_path / "stunnerd.yaml"
        write_config(path, first)
        daemon = Stunnerd(["-c", str(path), "-w"], tmp_path / "stunnerd.log")
        try:
            await wait_http(base + "/ready", lambda s, b: s == 200, what="ready")
            server_a = ("127.0.0.1", p_a)
            async with (
                turn_client(server_a, "user-a", "pass-a") as c1,
                turn_client(("127.0.0.1", p_old), "user-a", "pass-a") as c_old,
            ):
                assert await c1.round_trips(echo_keep, 5) == 5
                assert await c1.round_trips(echo_drop, 5) == 5  # allowed before
                assert await c_old.round_trips(echo_keep, 5) == 5
                status, body = await http_get(base + "/status")
                assert body["allocationCount"] == 2

                async def stream() -> None:
                    for i in range(STREAM):
                        await c1.send(b"stream-%06d" % i, echo_keep)
                        await asyncio.sleep(0.01)

                c1.drain()
                sender = asyncio.create_task(stream())
                await asyncio.sleep(0.5)
                # new credentials, cluster "drop" removed, udp-old removed, udp-new added
                second = base_config(
                    health_port=health,
                    listeners=[
                        listener("udp-a", p_a, ["keep"], win),
                        listener("udp-new", p_new, ["keep"], win),
                    ],
                    clusters=[keep],
                    username="user-b",
                    password="pass-b",
                )
                write_config(path, second)
                await wait_http(
                    base + "/status",
                    lambda s, b: s == 200 and _names(b) == ["udp-a", "udp-new"],
                    what="the new config in /status",
                )
                assert not sender.done(), "the reconfiguration must happen mid-stream"
                await sender
                assert await c1.collect(STREAM, echo_keep) == STREAM  # zero loss

                status, body = await http_get(base + "/status")
                assert body["auth"] == {"type": "static", "realm": "ops.test", "username": "user-b"}
                assert body["allocationCount"] == 1  # udp-old's allocation went with it
                assert [lis["state"] for lis in body["listeners"]] == ["running", "running"]
                assert await c1.round_trips(echo_keep, 20) == 20  # still relaying

                # old credentials: refused for new allocations; new ones work, on both listeners
                assert await allocate_fails(server_a, "user-a", "pass-a") == 401
                async with turn_client(server_a, "user-b", "pass-b") as c2:
                    assert await c2.round_trips(echo_keep, 5) == 5
                    # the removed cluster's peer: no new permission
                    with pytest.raises(aiostun.TransactionFailed) as denied:
                        await c2.bind(echo_drop)
                    assert error_code(denied.value) == 403
                    await c2.delete()
                async with turn_client(("127.0.0.1", p_new), "user-b", "pass-b") as c3:
                    assert await c3.round_trips(echo_keep, 5) == 5
                    await c3.delete()
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind(("127.0.0.1", p_old))  # udp-old's socket is closed

                # a file that does not parse, then one that does not validate: both ignored
                write_config(path, "version: v1\nlisteners: [\n")
                await daemon.wait_log("config file is not valid")
                broken = base_config(
                    health_port=health,
                    listeners=[listener("udp-a", 70000, ["keep"], win)],
                    clusters=[keep],
                    username="user-c",
                    password="pass-c",
                )
                write_config(path, broken)
                await daemon.wait_log("listeners[0].port")
                assert daemon.log().count("config file is not valid") == 2
                status, body = await http_get(base + "/ready")
                assert status == 200
                status, body = await http_get(base + "/status")
                assert _names(body) == ["udp-a", "udp-new"]
                assert body["auth"]["username"] == "user-b"
                assert await c1.round_trips(echo_keep, 20) == 20
                async with turn_client(server_a, "user-b", "pass-b") as c4:
                    assert await c4.round_trips(echo_keep, 5) == 5
                    await c4.delete()
                await c1.delete()
            log = daemon.log()
            assert "config applied" in log
            assert "allocation created" in log and "allocation deleted" in log
            assert "pass-a" not in log and "pass-b" not in log
        finally:
            daemon.stop()


async def test_sighup_rereads_the_file_without_watch(tmp_path: Path) -> None:
    p_a, health = ports(2)
    win = window()
    base = f"http://127.0.0.1:{health}"
    peers = {"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1"]}
    config = base_config(
        health_port=health, listeners=[listener("udp-a", p_a, ["peers"], win)], clusters=[peers]
    )
    path = tmp_path / "stunnerd.yaml"
    write_config(path, config)
    daemon = Stunnerd(["-c", str(path)], tmp_path / "stunnerd.log")
    try:
        await wait_http(base + "/ready", lambda s, b: s == 200, what="ready")
        changed = base_config(
            health_port=health,
            listeners=[listener("udp-a", p_a, ["peers"], win)],
            clusters=[peers],
            username="user-z",
            password="pass-z",
        )
        write_config(path, changed, atomic=False)
        await asyncio.sleep(1.5)  # not watched: nothing happens on its own
        _status, body = await http_get(base + "/status")
        assert body["auth"]["username"] == "user-a"
        daemon.signal(signal.SIGHUP)
        await wait_http(
            base + "/status",
            lambda s, b: s == 200 and b["auth"]["username"] == "user-z",
            what="the SIGHUP reload",
        )
        async with (
            udp_echo_peer("127.0.0.1") as echo,
            turn_client(("127.0.0.1", p_a), "user-z", "pass-z") as client,
        ):
            assert await client.round_trips(echo, 5) == 5
            await client.delete()
        assert "SIGHUP: re-reading the config" in daemon.log()
    finally:
        daemon.stop()
