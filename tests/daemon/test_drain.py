"""Graceful drain (SIGTERM), the second SIGTERM, SIGINT and the grace period, on `stunnerd`."""

from __future__ import annotations

import signal
import time
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

from stunner_dp import stun
from stunner_dp.testing import udp_echo_peer


def _start(tmp_path: Path, *flags: str) -> tuple[Stunnerd, int, str]:
    port, health = ports(2)
    config = base_config(
        health_port=health,
        listeners=[listener("udp", port, ["peers"], window())],
        clusters=[{"name": "peers", "type": "STATIC", "endpoints": ["127.0.0.1"]}],
    )
    path = tmp_path / "stunnerd.yaml"
    write_config(path, config)
    daemon = Stunnerd(["-c", str(path), *flags], tmp_path / "stunnerd.log")
    return daemon, port, f"http://127.0.0.1:{health}"


async def test_drain_keeps_relaying_and_exits_when_the_last_allocation_is_deleted(
    tmp_path: Path,
) -> None:
    daemon, port, base = _start(tmp_path)
    try:
        await wait_http(base + "/ready", lambda s, b: s == 200, what="ready")
        server = ("127.0.0.1", port)
        async with udp_echo_peer() as echo, turn_client(server, "user-a", "pass-a") as client:
            assert await client.round_trips(echo, 10) == 10
            daemon.signal(signal.SIGTERM)
            _status, body = await wait_http(base + "/ready", lambda s, b: s == 503, what="503")
            assert body == {"status": 503, "message": "stunnerd not ready"}
            assert await http_get(base + "/live") == (200, {})
            _, body = await http_get(base + "/status")
            assert (body["status"], body["allocationCount"]) == ("TERMINATING", 1)

            assert await client.round_trips(echo, 50) == 50  # keeps relaying
            assert await client.refresh(600) == 600  # and refreshing
            # new Allocates are still served (no alternate server), as stunnerd does
            assert await allocate_fails(server, "user-a", "pass-a") is None
            assert await client.round_trips(echo, 10) == 10
            assert daemon.proc.poll() is None

            await client.delete()  # Refresh LIFETIME 0: the last allocation is gone
            assert await daemon.wait_exit() == 0
        log = daemon.log()
        assert "draining" in log and "drain finished" in log and "no allocation left" in log
        for line in ("allocation created", "allocation refreshed", "allocation deleted"):
            assert line in log
    finally:
        daemon.stop()


async def test_alternate_server_force_ready_and_a_second_sigterm(tmp_path: Path) -> None:
    daemon, port, base = _start(
        tmp_path, "--alternate-server", "127.0.0.1:3479", "--force-ready-status"
    )
    try:
        await wait_http(base + "/ready", lambda s, b: s == 200, what="ready")
        server = ("127.0.0.1", port)
        async with udp_echo_peer() as echo, turn_client(server, "user-a", "pass-a") as client:
            daemon.signal(signal.SIGTERM)
            await wait_http(
                base + "/status", lambda s, b: b["status"] == "TERMINATING", what="TERMINATING"
            )
            assert await http_get(base + "/ready") == (200, {"status": 200, "message": "READY"})
            with pytest.raises(aiostun.TransactionFailed) as moved:
                async with turn_client(server, "user-a", "pass-a"):
                    pass
            assert error_code(moved.value) == 300
            raw = moved.value.raw_datagrams  # type: ignore[attr-defined]
            answer = stun.parse_message(raw[-1])
            alternate = answer.get(stun.ATTR_ALTERNATE_SERVER)
            assert alternate is not None
            assert stun.decode_address(alternate) == ("127.0.0.1", 3479)
            assert await client.round_trips(echo, 20) == 20  # the old one keeps going

            started = time.monotonic()
            daemon.signal(signal.SIGTERM)  # the second one: at once, allocation or not
            assert await daemon.wait_exit() == 0
            assert time.monotonic() - started < 5
        assert "second SIGTERM: exiting now" in daemon.log()
    finally:
        daemon.stop()


async def test_grace_period_ends_the_drain(tmp_path: Path) -> None:
    daemon, port, base = _start(tmp_path, "--grace-period", "1")
    try:
        await wait_http(base + "/ready", lambda s, b: s == 200, what="ready")
        async with turn_client(("127.0.0.1", port), "user-a", "pass-a"):
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait_exit() == 0
        assert "grace period over" in daemon.log()
    finally:
        daemon.stop()


async def test_sigint_exits_at_once(tmp_path: Path) -> None:
    daemon, port, base = _start(tmp_path)
    try:
        await wait_http(base + "/ready", lambda s, b: s == 200, what="ready")
        async with turn_client(("127.0.0.1", port), "user-a", "pass-a"):
            daemon.signal(signal.SIGINT)
            assert await daemon.wait_exit(5) == 0
        assert "SIGINT: exiting now" in daemon.log()
    finally:
        daemon.stop()
