"""`stunner-dp probe`: run as a command against a real server; exit code and diagnosis."""

from __future__ import annotations

import asyncio
import re
import socket
import sys

import pytest

from stunner_dp.config.uri import parse_turn_uri
from stunner_dp.testing import ephemeral_credentials, free_port, start_turn_server


async def run_probe(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stunner_dp.cli",
        "probe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def step_line(out: str, step: str) -> str:
    """The line of one step: its name, then ok or FAIL."""
    pattern = re.compile(rf"\s*{re.escape(step)}\s+(ok|FAIL)\s")
    lines = [line for line in out.splitlines() if pattern.match(line)]
    assert lines, out
    return lines[0]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_success(transport: str) -> None:
    async with start_turn_server() as ts:
        code, out = await run_probe(
            f"turn://{ts.username}:{ts.password}@127.0.0.1:{ts.port}?transport={transport}"
        )
        assert ts.server.allocation_count == 0  # the probe deleted its allocation
    assert code == 0, out
    for step in ("binding", "allocate (401)", "allocate", "create permission", "channel bind"):
        assert " ok " in step_line(out, step), out
    assert " ok " in step_line(out, "round trip")
    assert " ms " in step_line(out, "round trip")
    low, high = (
        ts.config["listeners"][0]["min_relay_port"],
        ts.config["listeners"][0]["max_relay_port"],
    )
    relay_port = int(step_line(out, "allocate").split("relay address 127.0.0.1:")[1].split(",")[0])
    assert low <= relay_port <= high
    assert "mapped address 127.0.0.1:" in out
    assert "realm 'stunner-dp.test'" in out
    assert out.strip().splitlines()[-1].startswith("OK")


async def test_ephemeral_username_with_colon() -> None:
    async with start_turn_server(auth_type="ephemeral", secret="s3cret") as ts:
        user, password = ephemeral_credentials("s3cret", "carol")
        code, out = await run_probe(f"turn://{user}:{password}@127.0.0.1:{ts.port}")
    assert code == 0, out


async def test_wrong_password() -> None:
    async with start_turn_server() as ts:
        code, out = await run_probe(f"turn://{ts.username}:wrong@127.0.0.1:{ts.port}")
    assert code == 1, out
    assert "FAIL" in step_line(out, "allocate") and "401" in step_line(out, "allocate")
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAILED at allocate:")
    assert "realm is 'stunner-dp.test'" in last and "password" in last and "credentials" in last


async def test_peer_outside_every_cluster() -> None:
    # the cluster allows 10.0.0.0/8 only: the probe's own echo peer on 127.0.0.1 is refused
    async with start_turn_server(endpoints=["10.0.0.0/8"]) as ts:
        code, out = await run_probe(f"turn://{ts.username}:{ts.password}@127.0.0.1:{ts.port}")
    assert code == 1, out
    assert "403" in step_line(out, "create permission")
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAILED at create permission:")
    assert "no cluster route to the peer 127.0.0.1" in last


async def test_given_peer_that_does_not_echo() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        async with start_turn_server() as ts:
            code, out = await run_probe(
                f"turn://{ts.username}:{ts.password}@127.0.0.1:{ts.port}",
                "--peer",
                f"127.0.0.1:{silent.getsockname()[1]}",
                "--timeout",
                "1",
            )
    finally:
        silent.close()
    assert code == 1, out
    assert "FAILED at round trip:" in out and "did not echo" in out


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_dead_port(transport: str) -> None:
    port = free_port()
    code, out = await run_probe(
        f"turn://u:p@127.0.0.1:{port}?transport={transport}", "--timeout", "1"
    )
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    step = "binding" if transport == "udp" else "connect"
    assert last.startswith(f"FAILED at {step}:"), out
    assert "refused" in last and f"127.0.0.1:{port}/{transport}" in last


async def test_silent_server_times_out_at_binding() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        code, out = await run_probe(
            f"turn://u:p@127.0.0.1:{silent.getsockname()[1]}", "--timeout", "0.5"
        )
    finally:
        silent.close()
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAILED at binding:") and "no answer" in last and "0.5 s" in last


def test_uri_parsing() -> None:
    t = parse_turn_uri("turn://1700000000:alice:abc%3Ad=@turn.example.com:3479?transport=tcp")
    assert (t.username, t.password, t.host, t.port, t.transport) == (
        "1700000000:alice",
        "abc:d=",
        "turn.example.com",
        3479,
        "tcp",
    )
    t = parse_turn_uri("turn://1700000000:dave:a/b+c=@127.0.0.1:5000")  # raw base64
    assert (t.username, t.password, t.port) == ("1700000000:dave", "a/b+c=", 5000)
    t = parse_turn_uri("turn:u:p@127.0.0.1")
    assert (t.username, t.password, t.port, t.transport) == ("u", "p", 3478, "udp")
    assert parse_turn_uri("turns://u:p@h?transport=tcp").transport == "tls"
    t = parse_turn_uri("turns://u:p@h?transport=udp")
    assert (t.transport, t.port) == ("dtls", 5349)
    for bad in ("http://u:p@h", "turn://u:p@h?transport=sctp", "turns://u:p@h?transport=dccp"):
        with pytest.raises(ValueError):
            parse_turn_uri(bad)
