"""Run `stunnerd` as a subprocess for tests: start on a free port, wait until it answers, stop
it by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stunner_dp import stun
from stunner_dp.testing import free_port, make_config, relay_window

START_TIMEOUT = 15.0


def stunnerd_command() -> list[str]:
    """The stunnerd of the venv running the tests (else the one on PATH)."""
    exe = Path(sys.executable).with_name("stunnerd")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("stunnerd")
    assert found, "stunnerd is not installed (pip install -e .)"
    return [found]


def binding_request() -> bytes:
    return stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, os.urandom(12))


def udp_answers(port: int, payload: bytes, timeout: float = 0.2) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recv(2048)
        except OSError:
            return None


def tcp_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(binding_request())
            return len(sock.recv(2048)) >= stun.HEADER_SIZE
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes], first: int = signal.SIGTERM) -> int:
    """`first`, then SIGTERM (a second SIGTERM ends a drain at once), then SIGKILL."""
    for sig in (first, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait(timeout=5)


@dataclass
class Stunnerd:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    config: dict[str, Any]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_ready(proc: subprocess.Popen[bytes], port: int, tcp: bool = True) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if udp_answers(port, binding_request()) and (not tcp or tcp_answers(port)):
            return True
        time.sleep(0.1)
    return False


def start_stunnerd(
    tmp: Path, name: str, *, extra_args: tuple[str, ...] = (), **overrides: Any
) -> Stunnerd:
    """stunnerd -c <yaml from make_config(**overrides)> on a free port, 200 relay ports; started
    again on another port if it loses a race for its port."""
    log = tmp / f"{name}.log"
    for attempt in range(3):
        port = free_port()
        low, high = relay_window(200)
        config = make_config(port=port, min_relay_port=low, max_relay_port=high, **overrides)
        path = tmp / f"{name}-{attempt}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = tmp / f"{name}-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*stunnerd_command(), "-c", str(path), "-l", "all:INFO", *extra_args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait_ready(proc, port):
            return Stunnerd(proc, port, log, config)
        stop(proc)
        if "could not start" not in log.read_text(errors="replace"):
            break  # not a port race: report it
    raise AssertionError(f"stunnerd did not come up; its log:\n{log.read_text(errors='replace')}")
