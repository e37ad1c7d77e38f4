"""Run `stunnerd -c <yaml>` as a subprocess for the hostile tests; stop it by its PID."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

STUNNERD = Path(sys.executable).parent / "stunnerd"


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log_path = log

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log:
                return True
            if self.proc.poll() is not None:
                return text in self.log
            await asyncio.sleep(0.05)
        return False


@asynccontextmanager
async def run_stunnerd(
    config: dict[str, Any],
    tmp: Path,
    *,
    preexec: Callable[[], None] | None = None,
    args: tuple[str, ...] = (),
) -> AsyncIterator[Daemon]:
    path = tmp / "stunnerd.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = tmp / "stunnerd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(STUNNERD), "-c", str(path), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    daemon = Daemon(proc, log)
    try:
        yield daemon
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # stop now (SIGTERM drains allocations first)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
