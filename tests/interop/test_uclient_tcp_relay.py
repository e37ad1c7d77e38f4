"""Issue 11's check: coturn's turnutils_uclient with TCP relays (RFC 6062) against a stunnerd
process on 127.0.0.1, over TURN-TCP and TURN-TLS.

- `-T` (active): uclient's two clients allocate a TCP relay each and Connect to each other's
  relayed transport address, so every byte crosses two TCP relays of the same server; each
  ConnectionAttempt names the other client's relay (RFC 6062 5.2). Zero loss, from uclient's
  own summary.
- `-P` (passive): one client allocates, the other is a plain TCP peer that connects to the relay
  (a ConnectionAttempt, then ConnectionBind). uclient 4.6.1 never counts what its passive peer
  receives (the peer's socket is read as STUN, and raw bytes are no STUN message), so its
  summary shows half the messages lost against any server (coturn 4.6.1's turnserver too).
  The test holds uclient to what it can show (the client got every message the peer sent, sent
  and received counts exact) and reads the other direction from the server's own figures
  (`bytes_to_peers` of the allocation's `allocation deleted` line: every byte the client sent).

uclient waits a random 1-6 s before it sends and -P waits ~15 s for the messages it cannot
count, so the runs start together in a module fixture and each test reads its run's result.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.stunnerd_proc import Stunnerd, stop, stunnerd_command, wait_ready
from helpers.tls_helpers import make_self_signed
from helpers.uclient import Summary, assert_no_loss, parse_summary

from stunner_dp.testing import free_port, make_config, relay_window

pytestmark = pytest.mark.interop

UCLIENT = shutil.which("turnutils_uclient")
if UCLIENT is None:
    pytest.skip("coturn's turnutils_uclient is not installed", allow_module_level=True)

USER, PASSWORD = "tcp-relay-user", "tcp-relay-pass"
MESSAGES = 10  # per client (-n)
MESSAGE_SIZE = 100  # uclient's default -l
RUN_TIMEOUT = 60.0

RUNS: dict[str, tuple[str, ...]] = {
    "tcp-active": ("-T",),
    "tls-active": ("-T", "-S"),
    "tcp-passive": ("-P",),
}


def start_stunnerd(tmp: Path) -> tuple[Stunnerd, int]:
    """stunnerd with TURN-UDP and TURN-TCP on one free port and TURN-TLS on another; the TLS
    port too. Started again on other ports if it loses a race for them."""
    cert = make_self_signed(tmp)
    for attempt in range(3):
        port, tls_port = free_port(), free_port(udp=False)
        low, high = relay_window(200)
        config: dict[str, Any] = make_config(
            port=port,
            username=USER,
            password=PASSWORD,
            min_relay_port=low,
            max_relay_port=high,
            protocols=("TURN-UDP", "TURN-TCP"),
        )
        tls = dict(config["listeners"][1], name="tls-listener", protocol="TURN-TLS")
        tls.update(port=tls_port, cert=cert.cert_b64, key=cert.key_b64)
        config["listeners"].append(tls)
        path = tmp / f"stunnerd-{attempt}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = tmp / f"stunnerd-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*stunnerd_command(), "-c", str(path), "-l", "all:INFO"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait_ready(proc, port):
            return Stunnerd(proc, port, log, config), tls_port
        stop(proc)
        if "could not start" not in log.read_text(errors="replace"):
            break
    raise AssertionError(f"stunnerd did not come up: {log.read_text(errors='replace')}")


Results = tuple[dict[str, "Summary | AssertionError"], Stunnerd]


def summary_of(results: Results, name: str) -> Summary:
    found = results[0][name]
    if isinstance(found, AssertionError):
        raise found
    return found


class Run:
    """One uclient process under way."""

    def __init__(self, port: int, flags: tuple[str, ...], out: Path) -> None:
        assert UCLIENT is not None
        self.cmd = [UCLIENT, "-p", str(port), "-u", USER, "-w", PASSWORD]
        self.cmd += ["-n", str(MESSAGES), "-m", "1", *flags, "127.0.0.1"]
        self.out = out
        with out.open("wb") as sink:
            self.proc = subprocess.Popen(self.cmd, stdout=sink, stderr=subprocess.STDOUT)

    def finish(self, deadline: float) -> Summary:
        try:
            code = self.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{' '.join(self.cmd)} did not finish") from None
        output = self.out.read_text(errors="replace")
        context = f"{' '.join(self.cmd)} exited {code}:\n{output[-3000:]}"
        assert code == 0, context
        return parse_summary(output, context)


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Results]:
    tmp = tmp_path_factory.mktemp("uclient-tcp-relay")
    server, tls_port = start_stunnerd(tmp)
    try:
        runs = {
            name: Run(tls_port if "-S" in flags else server.port, flags, tmp / f"{name}.out")
            for name, flags in RUNS.items()
        }
        deadline = time.monotonic() + RUN_TIMEOUT
        summaries: dict[str, Summary | AssertionError] = {}
        for name, run in runs.items():  # one run's failure is its own test's, not the others'
            try:
                summaries[name] = run.finish(deadline)
            except AssertionError as exc:
                summaries[name] = exc
        yield summaries, server
    finally:
        for run in locals().get("runs", {}).values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait(5)
        assert stop(server.proc, signal.SIGINT) == 0, server.log_text()


def assert_clean_log(server: Stunnerd) -> None:
    text = server.log_text()
    for bad in ("Traceback", "Exception in callback", "[error", "permission denied"):
        assert bad not in text, text[-5000:]


@pytest.mark.parametrize("name", ["tcp-active", "tls-active"])
def test_uclient_active_tcp_relays_lose_nothing(results: Results, name: str) -> None:
    server = results[1]
    assert_no_loss(summary_of(results, name), 2 * MESSAGES)  # two clients, each through two relays
    assert_clean_log(server)


def test_uclient_passive_tcp_relay_delivers_both_ways(
    results: Results,
) -> None:
    server = results[1]
    summary = summary_of(results, "tcp-passive")
    # uclient's view: both sent everything; the allocating client got all the peer sent
    assert summary.send_dropped == 0, summary.output
    assert (summary.sent, summary.received) == (2 * MESSAGES, MESSAGES), summary.output
    # the server's view: the peer got every byte the client sent (the allocation's
    # `allocation deleted` line: only the passive run's allocation has a client at 127.0.0.1
    # relaying to a peer that allocated nothing, so it is the one with packets to the client
    # and the same byte count both ways)
    expected = (MESSAGES * MESSAGE_SIZE, MESSAGES * MESSAGE_SIZE)
    for _ in range(50):  # the line follows uclient's exit: bounded wait for it
        lines = [
            line
            for line in server.log_text().splitlines()
            if "allocation deleted" in line and "transport=tcp" in line
        ]
        figures = [
            (int(m.group(1)), int(m.group(2)))
            for line in lines
            if (m := re.search(r"bytes_to_client=(\d+) bytes_to_peers=(\d+)", line))
        ]
        if expected in figures:
            break
        time.sleep(0.1)
    assert expected in figures, lines
    assert_clean_log(server)
