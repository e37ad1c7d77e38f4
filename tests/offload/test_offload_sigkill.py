"""A SIGKILLed server leaves nothing forwarding.

tcx (the mode used wherever the kernel has it): the link dies with the process's fd.
Classic tc (the fallback): the filter outlives its process and keeps relaying with stale
entries (the doc measured that too), so OffloadEngine.load() removes filters it owns first.
The classic case runs in a network namespace of its own (its own lo), so a failure cannot leave
a stale filter on the host's lo.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import (
    channeldata,
    delete_netns,
    in_netns,
    netns_names,
    recv,
    recv_or_none,
    require_offload,
    sh,
    udp_socket,
)

from stunner_dp.offload import OffloadEngine
from stunner_dp.offload import libbpf as bpf
from stunner_dp.offload.engine import TC_HANDLE, TC_PRIORITY

CH = 0x4ACE
CHILD = f"""
import sys, time
from stunner_dp.offload import OffloadEngine
mode, c, l, r, p = sys.argv[1], *(int(x) for x in sys.argv[2:6])
h = "127.0.0.1"
e = OffloadEngine.load(["lo"], mode=mode)
e.add_channel((h, c), (h, l), {CH}, (h, r), (h, p))
print("ready", e.attachments[0].mode, flush=True)
time.sleep(60)
"""


def start_child(mode: str, ports: list[int], netns: str | None = None) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", CHILD, mode, *map(str, ports)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("ready"):
        kill(proc)
        pytest.fail(f"child did not come up: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    assert line.split()[1] == mode
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def four() -> list[socket.socket]:
    return [udp_socket("127.0.0.1") for _ in range(4)]


def test_tcx_dies_with_a_sigkilled_process() -> None:
    require_offload()
    client, listener, relay, peer = socks = four()
    ports = [s.getsockname()[1] for s in socks]
    proc = start_child("tcx", ports)
    try:
        frame = channeldata(CH, b"kernel")
        client.sendto(frame, listener.getsockname())
        assert recv(peer) == (b"kernel", relay.getsockname())
        kill(proc)
        client.sendto(frame, listener.getsockname())
        assert recv(listener) == (frame, client.getsockname())
        peer.sendto(b"back", relay.getsockname())
        assert recv(relay) == (b"back", peer.getsockname())
        assert recv_or_none(peer) is None and recv_or_none(client) is None
    finally:
        kill(proc)
        for s in socks:
            s.close()


@pytest.fixture
def lone_ns() -> Iterator[str]:
    require_offload()
    ns = netns_names("k")[1]
    delete_netns([ns])
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        delete_netns([ns])


def test_stale_classic_filter_is_removed_at_load(lone_ns: str) -> None:
    with in_netns(lone_ns):
        client, listener, relay, peer = socks = four()
    ports = [s.getsockname()[1] for s in socks]
    proc = start_child("tc", ports, netns=lone_ns)
    try:
        frame = channeldata(CH, b"kernel")
        client.sendto(frame, listener.getsockname())
        assert recv(peer) == (b"kernel", relay.getsockname())
        kill(proc)
        # the classic filter outlived its process and still relays
        client.sendto(frame, listener.getsockname())
        assert recv(peer) == (b"kernel", relay.getsockname())
        with in_netns(lone_ns):
            assert bpf.tc_query(1, TC_HANDLE, TC_PRIORITY) is not None
            engine = OffloadEngine.load(["lo"], mode="tc")
        try:
            client.sendto(frame, listener.getsockname())
            assert recv(listener) == (frame, client.getsockname())
        finally:
            with in_netns(lone_ns):
                engine.close()
                assert bpf.tc_query(1, TC_HANDLE, TC_PRIORITY) is None
        client.sendto(frame, listener.getsockname())
        assert recv(listener) == (frame, client.getsockname())
        assert recv_or_none(peer) is None
    finally:
        kill(proc)
        for s in socks:
            s.close()
