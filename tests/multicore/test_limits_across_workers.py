"""Every limit holds per dataplane, not per worker: `stunnerd -u 2` on real processes, clients
on many source ports so the kernel spreads them over both workers. `user_quota`,
`max_allocations`, the per-IP unauthenticated answer rate and the failed-login cap count in
the table the workers share, and a killed worker's allocations stop counting once it is
restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from helpers.daemon_kit import Daemon, run_stunnerd
from helpers.hostile_kit import UDP, UdpTurn, build, code
from prometheus_client.parser import text_string_to_metric_families

from stunner_dp import stun
from stunner_dp.testing import free_port, make_config
from stunner_dp.turn.ratelimit import AuthFailureLimiter, UnauthLimiter

CLIENTS = 12  # all on one worker: odds 2 in 4096


def admin(metrics_port: int, **limits: Any) -> dict[str, Any]:
    return {
        "name": "limits",
        "metrics_endpoint": f"http://127.0.0.1:{metrics_port}/metrics",
        "healthcheck_endpoint": "",
        **limits,
    }


class Running:
    def __init__(self, daemon: Daemon, port: int, metrics_port: int) -> None:
        self.daemon, self.port, self.metrics_port = daemon, port, metrics_port

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def workers(self) -> list[int]:
        pid = self.daemon.proc.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    async def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name and not s.labels
        )

    async def wait_ready(self) -> None:
        assert await self.daemon.wait_for_log("workers started", 20.0), self.daemon.log
        assert len(self.workers()) == 2, self.daemon.log


@asynccontextmanager
async def two_workers(tmp_path: Path, **limits: Any) -> AsyncIterator[Running]:
    port, metrics_port = free_port(), free_port()
    config = make_config(port=port, protocols=("TURN-UDP",), admin=admin(metrics_port, **limits))
    async with run_stunnerd(config, tmp_path, args=("-u", "2")) as daemon:
        running = Running(daemon, port, metrics_port)
        await running.wait_ready()
        yield running


async def allocate_many(server: tuple[str, int], n: int, stack: AsyncExitStack) -> list[int]:
    """`n` clients, each on its own source port; the answer code of each one's Allocate."""
    codes = []
    for _ in range(n):
        client = await stack.enter_async_context(UdpTurn(server))
        codes.append(code(await client.allocate()))
    return codes


async def test_user_quota_holds_across_workers(tmp_path: Path) -> None:
    async with two_workers(tmp_path, user_quota=2) as srv, AsyncExitStack() as stack:
        codes = await allocate_many(srv.address, CLIENTS, stack)
        assert codes == [0, 0] + [486] * (CLIENTS - 2), codes


async def test_max_allocations_holds_across_workers(tmp_path: Path) -> None:
    async with two_workers(tmp_path, max_allocations=3) as srv, AsyncExitStack() as stack:
        codes = await allocate_many(srv.address, CLIENTS, stack)
        assert codes == [0, 0, 0] + [508] * (CLIENTS - 3), codes
        assert await srv.metric("stunner_allocations_active") == 3


async def test_a_killed_workers_allocations_stop_counting(tmp_path: Path) -> None:
    async with two_workers(tmp_path, max_allocations=3) as srv:
        async with AsyncExitStack() as stack:
            assert await allocate_many(srv.address, 3, stack) == [0, 0, 0]
            # both workers killed one after the other (each restarted): no allocation is left
            for restarts, victim in enumerate(srv.workers(), start=1):
                os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    if srv.daemon.log.count("worker restarted") >= restarts:
                        break
                    await asyncio.sleep(0.1)
                assert srv.daemon.log.count("worker restarted") >= restarts, srv.daemon.log
        async with AsyncExitStack() as stack:
            codes = await allocate_many(srv.address, 5, stack)
            assert codes == [0, 0, 0, 508, 508], codes


async def test_unauthenticated_answer_rate_holds_across_workers(tmp_path: Path) -> None:
    rate = 5
    burst = UnauthLimiter.BURST * rate
    sockets, per_socket = 40, int(burst) // 20  # twice the burst, from 40 source ports
    async with two_workers(tmp_path, unauth_rate_per_ip=rate) as srv, AsyncExitStack() as stack:
        flood = [await stack.enter_async_context(UdpTurn(srv.address)) for _ in range(sockets)]
        t0 = time.monotonic()
        for _ in range(per_socket):
            for sock in flood:
                sock.send(build(stun.METHOD_BINDING))
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)
        elapsed = time.monotonic() - t0
        answered = 0
        for sock in flood:
            answered += len(await sock.received(0.01))
        assert burst <= answered <= burst + rate * elapsed + 2, (answered, elapsed)
        limited = await srv.metric("stunner_rate_limited_requests_total")
        assert limited == sockets * per_socket - answered


async def test_failed_login_cap_holds_across_workers(tmp_path: Path) -> None:
    limit = 2
    per_ip = limit * AuthFailureLimiter.SHARED_IP_FACTOR
    async with (
        two_workers(tmp_path, auth_failures_per_user=limit) as srv,
        AsyncExitStack() as stack,
    ):
        t0 = time.monotonic()
        for _ in range(3 * per_ip):  # one wrong guess from each of many source ports
            guesser = await stack.enter_async_context(UdpTurn(srv.address, ("127.0.0.7", 0)))
            await guesser.login(password="wrong")
            assert code(await guesser.ask(stun.METHOD_ALLOCATE, UDP)) == 401
        elapsed = time.monotonic() - t0
        checked = await srv.metric("stunner_auth_failures_total")
        refilled = elapsed * per_ip / 60.0
        assert per_ip <= checked <= per_ip + refilled + 1, (checked, elapsed)
