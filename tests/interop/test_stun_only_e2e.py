"""STUN-only mode (auth.type none) against coturn's clients: `turnutils_stunclient` gets its
mapped address, `turnutils_uclient` (UDP and TCP) is refused, and the server opens no socket
for it: its socket fds and the relay window's bound ports are the same before and after."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers.stunnerd_proc import Stunnerd, start_stunnerd, stop

STUNCLIENT = shutil.which("turnutils_stunclient")
UCLIENT = shutil.which("turnutils_uclient")
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(STUNCLIENT is None or UCLIENT is None, reason="coturn's turnutils"),
]
CLIENT_TIMEOUT = 20


def sockets(pid: int) -> set[str]:
    """The process's socket fds (as inodes) but its TCP connections: a TCP client's own
    connection comes and goes with it (and the readiness probe's with its idle timeout)."""
    connections = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # not LISTEN
                connections.add(f"socket:[{fields[9]}]")
    return {target for target in socket_targets(pid) if target not in connections}


def socket_targets(pid: int) -> set[str]:
    """The process's socket fds, as their `socket:[inode]` link targets."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:"):
            out.add(target)
    return out


def settled_sockets(pid: int, expected: set[str], limit: float = 5.0) -> set[str]:
    """`sockets(pid)` once it equals `expected`, or as it is after `limit` seconds."""
    deadline = time.monotonic() + limit
    found = sockets(pid)
    while found != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        found = sockets(pid)
    return found


def bound_udp_ports(pid: int, low: int, high: int) -> set[int]:
    """The ports of the relay window that the server's own UDP sockets are bound to (not the
    whole machine's: another test's process may hold a port of a window that overlaps)."""
    own = socket_targets(pid)
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if low <= port <= high and f"socket:[{fields[9]}]" in own:
                ports.add(port)
    return ports


@pytest.fixture
def stun_only(tmp_path: Path) -> Stunnerd:
    server = start_stunnerd(tmp_path, "stun-only", auth={"type": "none"})
    yield server
    stop(server.proc)


def relay_window(server: Stunnerd) -> tuple[int, int]:
    listener = server.config["listeners"][0]
    return listener["min_relay_port"], listener["max_relay_port"]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False)


def test_stunclient_gets_its_mapped_address(stun_only: Stunnerd) -> None:
    assert STUNCLIENT is not None
    result = run([STUNCLIENT, "-p", str(stun_only.port), "127.0.0.1"])
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"UDP reflexive addr: 127\.0\.0\.1:(\d+)", result.stdout)
    assert found, result.stdout


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_uclient_is_refused_and_no_socket_is_opened(stun_only: Stunnerd, transport: str) -> None:
    assert UCLIENT is not None
    low, high = relay_window(stun_only)
    pid = stun_only.proc.pid
    before, ports_before = sockets(pid), bound_udp_ports(pid, low, high)
    cmd = [UCLIENT, "-p", str(stun_only.port), "-u", "user", "-w", "pass", "-n", "1", "-m", "1"]
    cmd += ["-e", "127.0.0.1", "-r", str(low), "127.0.0.1"]
    if transport == "tcp":
        cmd.insert(1, "-t")
    result = run(cmd)
    output = result.stdout + result.stderr
    assert "error 400" in output, output  # stunnerd's answer to a signed TURN request
    assert "allocate response received" not in output.lower()
    assert bound_udp_ports(pid, low, high) == ports_before == set()
    # uclient's TCP connection may have left the kernel's table (a reset) a moment before the
    # server read its end and closed the descriptor: wait (bounded) for what stays
    assert settled_sockets(pid, before) == before
    assert stun_only.proc.poll() is None
