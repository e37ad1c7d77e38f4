"""`stunnerd -u N` as a subprocess for the multi-core tests: free ports, its /metrics and
/ready, its worker PIDs, stopped with its workers by PID."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from stunner_dp.testing import free_port, make_config, relay_window


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    health_port: int
    config_path: Path
    log: Path

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r,
        ):
            assert r.status == 200
            text = await r.text()
        return {
            (x.name, tuple(sorted(x.labels.items()))): x.value
            for f in text_string_to_metric_families(text)
            for x in f.samples
        }

    async def ready(self) -> bool:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{self.health_port}/ready") as r,
            ):
                return r.status == 200
        except aiohttp.ClientError:
            return False


def metric(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, /, **kw: str
) -> float:
    return m[(name, tuple(sorted(kw.items())))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of a dead supervisor is gone for our purposes
    with suppress(FileNotFoundError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


@contextmanager
def _stopped_by_pid(process: subprocess.Popen[bytes], workers: list[int]) -> Iterator[None]:
    try:
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for pid in workers:
            with suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


@asynccontextmanager
async def run_daemon(
    tmp_path: Path,
    workers: int = 2,
    protocols: Sequence[str] = ("TURN-UDP", "TURN-TCP"),
    *,
    name: str = "multicore-test",
    admin: Mapping[str, Any] | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    **config_overrides: Any,
) -> AsyncIterator[Daemon]:
    """`stunnerd -u workers` on free ports, stopped (and its workers) by PID at the end.
    `admin` adds to the admin section, `args` to the command line, `config_overrides` go to
    `make_config` (e.g. `endpoints=`); `env` replaces the environment."""
    low, high = relay_window(200)
    for _attempt in range(3):
        port, mport, hport = free_port(), free_port(tcp=True, udp=False), free_port()
        config = make_config(
            port=port,
            protocols=protocols,
            min_relay_port=low,
            max_relay_port=high,
            admin={
                "name": name,
                "loglevel": "all:INFO",
                "metrics_endpoint": f"http://127.0.0.1:{mport}/metrics",
                "healthcheck_endpoint": f"http://127.0.0.1:{hport}",
                **(admin or {}),
            },
            **config_overrides,
        )
        path = tmp_path / "stunnerd.json"
        path.write_text(json.dumps(config))
        log = tmp_path / "stunnerd.log"
        command = [sys.executable, "-m", "stunner_dp.cli", "-c", str(path), "-w"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*command, "-u", str(workers), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
            )
        daemon = Daemon(process, port, mport, hport, path, log)
        seen: list[int] = []
        with _stopped_by_pid(process, seen):
            for _ in range(200):
                if process.poll() is not None or await daemon.ready():
                    break
                await asyncio.sleep(0.05)
            if process.poll() is not None:
                continue  # lost a port race: try other ports
            assert await daemon.ready(), log.read_text()
            for _ in range(100):
                seen[:] = daemon.workers()
                if len(seen) == workers:
                    break
                await asyncio.sleep(0.05)
            try:
                yield daemon
            finally:
                seen[:] = sorted(set(seen) | set(daemon.workers()))
            return
    raise AssertionError("stunnerd did not start:\n" + log.read_text())


async def wait_for_metric(daemon: Daemon, ok: Any, what: str) -> dict[Any, float]:
    m: dict[Any, float] = {}
    for _ in range(150):
        m = await daemon.metrics()
        if ok(m):
            return m
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: never true; last scrape {m}")


def worker_pids_by_index(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, int]:
    """Worker index -> PID, from `stunner_worker_info{pid,worker}`."""
    found: dict[str, int] = {}
    for (name, labels), _ in m.items():
        if name == "stunner_worker_info":
            tags = dict(labels)
            found[tags["worker"]] = int(tags["pid"])
    return found
