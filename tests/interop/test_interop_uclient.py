"""Check 4: coturn's turnutils_uclient against stunnerd started from the command line, relaying
to turnutils_peer (a UDP echo server) on 127.0.0.1; every run must lose no packet.

uclient ends with a summary like:
    3: : start_mclient: tot_send_msgs=20, tot_recv_msgs=20
    3: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
Flags used: -c no RTCP allocation (without it uclient allocates an RTP/RTCP pair with EVEN-PORT
and RESERVATION-TOKEN), -s Send indications instead of channels, -t TCP to the server,
-W TURN REST secret, -m clients, -n messages per client.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.stunnerd_proc import Stunnerd, start_stunnerd, stop, udp_answers
from helpers.uclient import Summary, assert_no_loss, parse_summary

from stunner_dp.testing import free_port

pytestmark = pytest.mark.interop

UCLIENT = shutil.which("turnutils_uclient")
PEER = shutil.which("turnutils_peer")
if (UCLIENT is None or PEER is None) and not os.environ.get("STUNNER_DP_REQUIRE_INTEROP"):
    pytest.skip(
        "coturn's turnutils_uclient/turnutils_peer are not installed "
        "(apt-get install coturn; .ci/run installs it)",
        allow_module_level=True,
    )

USER, PASSWORD = "interop-user", "interop-pass"
SECRET = "interop-rest-secret"
UCLIENT_TIMEOUT = 60.0
START_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="module")
def static_server(tmp_dir: Path) -> Iterator[Stunnerd]:
    server = start_stunnerd(tmp_dir, "static", username=USER, password=PASSWORD)
    yield server
    # SIGINT exits at once (SIGTERM would drain uclient's leftover allocations)
    assert stop(server.proc, signal.SIGINT) == 0, server.log_text()


@pytest.fixture(scope="module")
def ephemeral_server(tmp_dir: Path) -> Iterator[Stunnerd]:
    server = start_stunnerd(tmp_dir, "ephemeral", auth_type="ephemeral", secret=SECRET)
    yield server
    # SIGINT exits at once (SIGTERM would drain uclient's leftover allocations)
    assert stop(server.proc, signal.SIGINT) == 0, server.log_text()


@pytest.fixture(scope="module")
def peer_port(tmp_dir: Path) -> Iterator[int]:
    """turnutils_peer: a UDP echo server on 127.0.0.1."""
    assert PEER is not None
    for _ in range(3):
        port = free_port(tcp=False)
        with (tmp_dir / f"peer-{port}.log").open("wb") as out:
            proc = subprocess.Popen(
                [PEER, "-L", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if udp_answers(port, b"are you there") == b"are you there":
                try:
                    yield port
                finally:
                    stop(proc)
                return
            time.sleep(0.1)
        stop(proc)
    pytest.fail("turnutils_peer did not start")


def run_uclient(server: Stunnerd, peer: int, *flags: str, auth: list[str]) -> Summary:
    assert UCLIENT is not None
    cmd = [UCLIENT, "-e", "127.0.0.1", "-r", str(peer), "-p", str(server.port), *auth, *flags]
    result = subprocess.run(
        [*cmd, "127.0.0.1"], capture_output=True, timeout=UCLIENT_TIMEOUT, check=False
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    context = f"{' '.join(cmd)} exited {result.returncode}:\n{output[-3000:]}"
    assert result.returncode == 0, context
    return parse_summary(output, context)


def assert_clean_log(server: Stunnerd) -> None:
    text = server.log_text()
    for bad in ("Traceback", "Exception in callback", "[error"):
        assert bad not in text, text[-5000:]


STATIC_RUNS = {
    "udp-channels": (["-c", "-n", "20"], 20),
    "udp-send-indications": (["-c", "-s", "-n", "20"], 20),
    "udp-dont-fragment": (["-c", "-g", "-n", "20"], 20),  # DONT-FRAGMENT: DF on the relay
    "tcp": (["-c", "-t", "-n", "20"], 20),
    "udp-rtp-rtcp-pair": (["-n", "20"], 40),  # EVEN-PORT + RESERVATION-TOKEN
    "tcp-rtp-rtcp-pair": (["-t", "-n", "20"], 40),
    "udp-10-clients-100-messages": (["-c", "-m", "10", "-n", "100"], 1000),
}


@pytest.mark.parametrize("run", list(STATIC_RUNS))
def test_uclient_static_auth(static_server: Stunnerd, peer_port: int, run: str) -> None:
    flags, expected = STATIC_RUNS[run]
    summary = run_uclient(static_server, peer_port, *flags, auth=["-u", USER, "-w", PASSWORD])
    assert_no_loss(summary, expected)
    assert_clean_log(static_server)
    assert "allocation created" in static_server.log_text()


def test_uclient_rest_secret(ephemeral_server: Stunnerd, peer_port: int) -> None:
    summary = run_uclient(
        ephemeral_server, peer_port, "-c", "-n", "20", auth=["-u", "rest-user", "-W", SECRET]
    )
    assert_no_loss(summary, 20)
    assert_clean_log(ephemeral_server)
    # the server saw a TURN REST username: <expiry>:<user>
    assert re.search(r"user=\d+:rest-user", ephemeral_server.log_text())


def test_uclient_wrong_secret_fails(ephemeral_server: Stunnerd, peer_port: int) -> None:
    """The runs above can fail: with the wrong secret uclient cannot allocate."""
    assert UCLIENT is not None
    cmd = [UCLIENT, "-e", "127.0.0.1", "-r", str(peer_port), "-p", str(ephemeral_server.port)]
    result = subprocess.run(
        [*cmd, "-u", "rest-user", "-W", "not-the-secret", "-c", "-n", "5", "127.0.0.1"],
        capture_output=True,
        timeout=UCLIENT_TIMEOUT,
        check=False,
    )
    assert result.returncode != 0
    assert "authentication failed" in ephemeral_server.log_text()
