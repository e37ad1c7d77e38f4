"""coturn's own abuse: `turnutils_uclient -N` (negative tests: e.g. binding a second channel to
a peer that has one) and `-R` (negative protocol tests: random bytes of one request in ten
overwritten) against `stunnerd` started from the command line, over UDP and TCP. Afterwards the
server is still running, has logged no unhandled exception, and serves a good client.

`-R` clients wait forever for answers to requests the server could not parse, so each run is
bounded by a timeout and then killed by its PID."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.daemon_kit import Daemon, run_stunnerd
from helpers.hostile_kit import UdpTurn, code, open_peer

from stunner_dp import stun
from stunner_dp.testing import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    free_port,
    make_config,
    relay_window,
)

UCLIENT = shutil.which("turnutils_uclient")
PEER = shutil.which("turnutils_peer")
pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(UCLIENT is None or PEER is None, reason="coturn's turnutils not found"),
]


def run_bounded(cmd: list[str], timeout: float) -> tuple[int | None, str]:
    """Run a client; kill it by its PID when it outlives `timeout`. (exit code or None, out)"""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out.decode(errors="replace")


def uclient(port: int, peer_port: int, *flags: str, n: int = 20, m: int = 2) -> list[str]:
    assert UCLIENT is not None
    return [
        UCLIENT,
        *flags,
        "-u",
        DEFAULT_USERNAME,
        "-w",
        DEFAULT_PASSWORD,
        "-p",
        str(port),
        "-e",
        "127.0.0.1",
        "-r",
        str(peer_port),
        "-n",
        str(n),
        "-m",
        str(m),
        "127.0.0.1",
    ]


def assert_healthy(d: Daemon) -> None:
    assert d.proc.poll() is None, d.log
    for bad in ("Traceback", "Exception in callback", "Error on reading", "CRITICAL"):
        assert bad not in d.log, d.log[-4000:]


async def assert_good_client_served(port: int) -> None:
    peer = await open_peer()
    try:
        async with UdpTurn(("127.0.0.1", port)) as c:
            assert code(await c.allocate()) == 0
            assert code(await c.bind(0x4000, peer.address)) == 0
            c.send(stun.encode_channel_data(0x4000, b"after the abuse"))
            for _ in range(100):
                if peer.got:
                    break
                await asyncio.sleep(0.02)
            assert [d for d, _ in peer.got] == [b"after the abuse"]
    finally:
        if peer.transport is not None:
            peer.transport.close()


@pytest.fixture
def peer_process() -> Iterator[int]:
    """coturn's echo peer on 127.0.0.1; stopped by its PID."""
    assert PEER is not None
    port = free_port(tcp=False)
    proc = subprocess.Popen(
        [PEER, "-p", str(port), "-L", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(5)


async def test_uclient_negative_and_protocol_abuse(tmp_path: Path, peer_process: int) -> None:
    peer_port = peer_process
    port = free_port()
    low, high = relay_window()
    config = make_config(port=port, min_relay_port=low, max_relay_port=high)
    async with run_stunnerd(config, tmp_path) as d:
        assert await d.wait_for_log("stunner-dp ready"), d.log
        # a good uclient run first: the harness works, so a failure later means something
        rc, out = run_bounded(uclient(port, peer_port), 30)
        assert rc == 0 and "Total lost packets 0" in out, out[-2000:]
        # -N: the negative requests get error answers (uclient gives up on them, non-zero)
        for transport in ((), ("-t",)):
            rc, out = run_bounded(uclient(port, peer_port, "-N", *transport), 20)
            assert "error 400" in out or "error 403" in out, out[-2000:]
            assert_healthy(d)
        # -R: corrupted requests; the clients hang on what we drop, and are killed
        for transport in ((), ("-t",)):
            run_bounded(uclient(port, peer_port, "-R", *transport, n=40, m=4), 5)
            assert_healthy(d)
        # and a good client still gets everything through, over UDP and over TCP
        rc, out = run_bounded(uclient(port, peer_port), 30)
        assert rc == 0 and "Total lost packets 0" in out, out[-2000:]
        rc, out = run_bounded(uclient(port, peer_port, "-t"), 30)
        assert rc == 0 and "Total lost packets 0" in out, out[-2000:]
        await assert_good_client_served(port)
        assert_healthy(d)
