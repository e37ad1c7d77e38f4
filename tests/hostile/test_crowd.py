"""A crowd behind one address (a NAT, a load balancer that SNATs) is served with the default
config, while a sustained flood from one address gets at most the configured answer rate
plus its burst: 2,000 fresh UDP clients at once, with the retransmissions of a real client;
400 TURN-TCP clients, 20 at a time (a stream's answers are never dropped: its source finished
a handshake); a flood of unanswered challenges. The slowest challenge is printed (speed is
measured, not asserted)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from helpers.daemon_kit import run_stunnerd
from helpers.hostile_kit import UdpTurn, build

from stunner_dp import stun
from stunner_dp.client.turn import TurnClient, TurnError, error_code
from stunner_dp.testing import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    free_port,
    make_config,
    relay_window,
    start_turn_server,
)
from stunner_dp.turn.ratelimit import UnauthLimiter


def default_admin() -> dict[str, object]:
    # nothing about limits: the defaults are what is under test
    return {"name": "crowd", "metrics_endpoint": "", "healthcheck_endpoint": ""}


async def one_client(server: tuple[str, int], transport: str, timeout: float) -> tuple[bool, float]:
    """(allocated, seconds until the challenge came back) for one fresh client."""
    client = TurnClient(server, transport=transport, timeout=timeout)
    try:
        await client.connect()
        t0 = time.monotonic()
        challenge = await client.challenge()
        waited = time.monotonic() - t0
        if error_code(challenge)[0] != 401:
            return False, waited
        resp = await client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        return resp.cls == stun.CLASS_SUCCESS, waited
    except (TurnError, OSError):
        return False, timeout
    finally:
        client.close()


async def test_a_burst_of_2000_udp_clients_from_one_address_all_allocate(tmp_path: Path) -> None:
    clients = 2000
    port = free_port()
    low, high = relay_window(2200)
    config = make_config(
        port=port,
        protocols=("TURN-UDP",),
        min_relay_port=low,
        max_relay_port=high,
        admin=default_admin(),
    )
    async with run_stunnerd(config, tmp_path) as daemon:
        assert await daemon.wait_for_log("stunner-dp ready", 15.0), daemon.log
        # all at once, each retransmitting as a real client does (RFC 8489: 500 ms, doubling)
        results = await asyncio.gather(
            *(one_client(("127.0.0.1", port), "udp", 39.5) for _ in range(clients))
        )
    ok = sum(1 for allocated, _ in results if allocated)
    slowest = max(waited for _, waited in results)
    print(f"udp crowd: {ok}/{clients} allocated, slowest challenge {slowest:.2f} s")
    assert ok == clients


async def test_400_turn_tcp_clients_from_one_address_all_allocate(tmp_path: Path) -> None:
    clients, at_once = 400, 20
    port = free_port()
    low, high = relay_window(500)
    config = make_config(
        port=port,
        protocols=("TURN-TCP",),
        min_relay_port=low,
        max_relay_port=high,
        admin=default_admin(),
    )
    async with run_stunnerd(config, tmp_path) as daemon:
        assert await daemon.wait_for_log("stunner-dp ready", 15.0), daemon.log
        results: list[tuple[bool, float]] = []
        for _ in range(clients // at_once):
            results += await asyncio.gather(
                *(one_client(("127.0.0.1", port), "tcp", 10.0) for _ in range(at_once))
            )
    ok = sum(1 for allocated, _ in results if allocated)
    slowest = max(waited for _, waited in results)
    print(f"tcp crowd: {ok}/{clients} allocated, slowest challenge {slowest:.2f} s")
    assert ok == clients


async def test_a_sustained_flood_gets_at_most_the_rate_plus_the_burst() -> None:
    rate = 20
    burst = UnauthLimiter.BURST * rate
    admin = {**default_admin(), "unauth_rate_per_ip": rate}
    async with start_turn_server(protocols=("TURN-UDP",), admin=admin) as ts:
        turn = ts.server.turn
        assert turn is not None
        sent = 0
        async with UdpTurn(ts.address, ("127.0.0.1", 0)) as flood:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.5 and sent < 20_000:  # never answers a challenge
                for _ in range(25):  # 2,500 a second: nothing lost in the socket buffers
                    flood.send(build(stun.METHOD_ALLOCATE))
                sent += 25
                await asyncio.sleep(0.01)
            answers = await flood.received(0.3)
            elapsed = time.monotonic() - t0
        assert sent >= 2 * burst  # the flood outlasted the burst
        assert burst <= len(answers) <= burst + rate * elapsed + 1, (len(answers), elapsed)
        assert turn.rate_limited == sent - len(answers)
