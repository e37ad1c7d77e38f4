"""Helpers for the operations tests: a TURN client (aioice), a stunnerd process, HTTP polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aioice import stun as aiostun
from aioice.turn import TurnClientUdpProtocol

from stunner_dp.testing import free_port, relay_window

Addr = tuple[str, int]
DEADLINE = 15.0  # seconds any single wait in these tests may take


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Addr]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.queue.put_nowait((data, addr))


class _Recording(TurnClientUdpProtocol):  # type: ignore[misc]
    """Keeps the raw datagrams too (aioice drops attributes it does not know)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw: list[bytes] = []

    def datagram_received(self, data: bytes | str, addr: Addr) -> None:
        if isinstance(data, bytes) and data[:1] in (b"\x00", b"\x01"):
            self.raw.append(data)
        super().datagram_received(data, addr)


class TurnClient:
    """An aioice TURN/UDP client with a queue of what its peers sent back."""

    def __init__(self, proto: _Recording, rx: _Collect) -> None:
        self.proto = proto
        self.rx = rx
        self.relay: Addr | None = None

    async def send(self, data: bytes, peer: Addr) -> None:
        """Through a channel (bound on first use; a denial raises TransactionFailed)."""
        await self.proto.send_data(data, peer)

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, Addr]:
        return await asyncio.wait_for(self.rx.queue.get(), timeout)

    async def bind(self, peer: Addr) -> None:
        """A ChannelBind for `peer` alone (raises TransactionFailed on 403)."""
        number = self.proto.channel_number
        self.proto.channel_number += 1
        await self.proto.channel_bind(number, peer)

    async def refresh(self, lifetime: int) -> int:
        """One Refresh request; the LIFETIME granted."""
        request = aiostun.Message(
            message_method=aiostun.Method.REFRESH, message_class=aiostun.Class.REQUEST
        )
        request.attributes["LIFETIME"] = lifetime
        response, _ = await self.proto.request_with_retry(request)
        return int(response.attributes["LIFETIME"])

    async def delete(self) -> None:
        """Refresh with LIFETIME 0."""
        await self.proto.delete()

    async def round_trips(self, peer: Addr, count: int, *, gap: float = 0.0) -> int:
        """Send `count` numbered packets to an echo `peer`; how many distinct ones came back."""
        self.drain()
        for i in range(count):
            await self.send(b"pkt-%06d" % i, peer)
            if gap:
                await asyncio.sleep(gap)
        return await self.collect(count, peer)

    async def collect(self, count: int, peer: Addr, quiet: float = 1.0) -> int:
        """Distinct packets from `peer` until `count` or `quiet` seconds without one."""
        seen: set[bytes] = set()
        with contextlib.suppress(TimeoutError):
            while len(seen) < count:
                data, addr = await self.recv(quiet)
                if addr == peer:
                    seen.add(data)
        return len(seen)

    def drain(self) -> None:
        while not self.rx.queue.empty():
            self.rx.queue.get_nowait()


def error_code(exc: BaseException) -> int | None:
    if isinstance(exc, aiostun.TransactionFailed):
        return int(exc.response.attributes["ERROR-CODE"][0])
    return None


@asynccontextmanager
async def turn_client(
    server: Addr, username: str, password: str, *, lifetime: int = 600
) -> AsyncIterator[TurnClient]:
    """An allocated client (raises TransactionFailed when the Allocate is refused)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Recording(
            server,
            username=username,
            password=password,
            lifetime=lifetime,
            channel_refresh_time=500,
        ),
        remote_addr=server,
    )
    rx = _Collect()
    proto.receiver = rx
    client = TurnClient(proto, rx)
    try:
        try:
            client.relay = await asyncio.wait_for(proto.connect(), DEADLINE)
        except aiostun.TransactionFailed as exc:
            exc.raw_datagrams = list(proto.raw)  # type: ignore[attr-defined]
            raise
        yield client
    finally:
        if proto.refresh_task is not None:
            proto.refresh_task.cancel()
        transport.close()


async def allocate_fails(server: Addr, username: str, password: str) -> int | None:
    """The error code of a refused Allocate (None when it succeeded; deleted again then)."""
    try:
        async with turn_client(server, username, password) as client:
            await client.delete()
            return None
    except aiostun.TransactionFailed as exc:
        return error_code(exc)


# -- configs ----------------------------------------------------------------------------------


def listener(name: str, port: int, routes: list[str], window: tuple[int, int]) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": "TURN-UDP",
        "address": "127.0.0.1",
        "port": port,
        "min_relay_port": window[0],
        "max_relay_port": window[1],
        "routes": routes,
    }


def base_config(
    *,
    health_port: int,
    listeners: list[dict[str, Any]],
    clusters: list[dict[str, Any]],
    username: str = "user-a",
    password: str = "pass-a",
    **admin: Any,
) -> dict[str, Any]:
    return {
        "version": "v1",
        "admin": {
            "name": "ops-test",
            "loglevel": "all:INFO",
            "healthcheck_endpoint": f"http://127.0.0.1:{health_port}",
            "metrics_endpoint": "",
            **admin,
        },
        "auth": {
            "type": "static",
            "realm": "ops.test",
            "credentials": {"username": username, "password": password},
        },
        "listeners": listeners,
        "clusters": clusters,
    }


def write_config(path: Path, config: dict[str, Any] | str, *, atomic: bool = True) -> None:
    """Write YAML; `atomic` writes a new file and renames it over (as ConfigMaps change)."""
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    if atomic:
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


def ports(n: int) -> list[int]:
    found: list[int] = []
    while len(found) < n:
        p = free_port("127.0.0.1")
        if p not in found:
            found.append(p)
    return found


def window() -> tuple[int, int]:
    return relay_window()


# -- the daemon as a process ------------------------------------------------------------------


class Stunnerd:
    """`python -m stunner_dp.cli ARGS` with stderr in a file; stopped by PID."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stunner_dp.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait_log(self, needle: str, *, count: int = 1, timeout: float = DEADLINE) -> None:
        await until(lambda: self.log().count(needle) >= count, timeout, f"log line {needle!r}")

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        raise AssertionError(f"stunnerd (pid {self.pid}) still running after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by its PID
            self.proc.wait(10)
        self._log.close()


async def until(
    check: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def http_get(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(status, parsed JSON body); (0, error text) when the server does not answer."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url) as resp,
        ):
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return 0, str(exc)


async def wait_http(
    url: str,
    predicate: Callable[[int, Any], bool],
    timeout: float = DEADLINE,
    what: str = "",
) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    last: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        last = await http_get(url)
        if predicate(*last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or url}; last answer {last}")
