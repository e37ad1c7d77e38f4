"""Check 6 and the CLI: dry-run output, one-line errors for invalid configs, the turn:// quick
start, and clean exits on SIGTERM/SIGINT. Every stunnerd started here is stopped by its PID."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.stunnerd_proc import start_stunnerd, stop, stunnerd_command, wait_ready
from helpers.turnclient import RawTurnClient, error_code, udp_transport

from stunner_dp import stun
from stunner_dp.testing import free_port

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "config" / "stunnerd.yaml"
INVALID = sorted((REPO / "tests" / "config" / "invalid").glob("*"))
RUN_TIMEOUT = 30


def stunnerd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*stunnerd_command(), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def test_dry_run_prints_the_effective_default_config() -> None:
    env = {k: v for k, v in os.environ.items() if k != "STUNNER_ADDR"}
    result = subprocess.run(
        [*stunnerd_command(), "-d", "-c", str(DEFAULT_CONFIG)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["version"] == "v1"
    assert config["auth"]["type"] == "static"
    assert config["auth"]["realm"] == "stunner.l7mp.io"
    assert config["auth"]["credentials"] == {"username": "user-1", "password": "pass-1"}
    listeners = {lst["name"]: lst for lst in config["listeners"]}
    assert set(listeners) == {"udp-listener", "tcp-listener"}
    assert listeners["udp-listener"]["protocol"] == "TURN-UDP"
    assert listeners["tcp-listener"]["protocol"] == "TURN-TCP"
    for listener in listeners.values():
        assert listener["port"] == 3478
        assert (listener["min_relay_port"], listener["max_relay_port"]) == (30000, 32767)
        assert listener["routes"] == ["public-peers"]
        # $STUNNER_ADDR unset: expanded to nothing, defaulted to the wildcard
        assert listener["address"] == "0.0.0.0"
    (cluster,) = config["clusters"]
    assert cluster["name"] == "public-peers"
    assert cluster["type"] == "STATIC"
    assert set(cluster["endpoints"]) == {"0.0.0.0/0", "::/0"}
    # defaults that were not in the file are filled in
    assert config["admin"]["user_quota"] == 0


def test_dry_run_expands_environment_variables() -> None:
    result = stunnerd("-d", "-c", str(DEFAULT_CONFIG), env={"STUNNER_ADDR": "192.0.2.7"})
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert {lst["address"] for lst in config["listeners"]} == {"192.0.2.7"}


def test_dry_run_accepts_file_uri() -> None:
    result = stunnerd("-d", "-c", f"file://{DEFAULT_CONFIG}")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["admin"]["name"] == "stunner-dp"


def test_dry_run_of_quick_start_uri() -> None:
    result = stunnerd("-d", "turn://alice:secret@127.0.0.1:3479?transport=tcp")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["auth"]["credentials"] == {"username": "alice", "password": "secret"}
    (listener,) = config["listeners"]
    assert (listener["protocol"], listener["port"]) == ("TURN-TCP", 3479)


@pytest.mark.parametrize(
    ("uri", "listener"),
    [
        ("turn:127.0.0.1", ("TURN-UDP", 3478)),  # RFC 7065, no credentials: the defaults
        ("turn:[::1]:3479?transport=tcp", ("TURN-TCP", 3479)),
        ("turn://u:p@127.0.0.1:3480?transport=UDP", ("TURN-UDP", 3480)),
    ],
)
def test_dry_run_of_rfc7065_forms(uri: str, listener: tuple[str, int]) -> None:
    result = stunnerd("-d", uri)
    if "@" not in uri:  # static auth needs credentials: the config says which
        assert result.returncode == 2 and "auth.credentials" in result.stderr, result.stderr
        result = stunnerd("-d", uri.replace(":", "://u:p@", 1))
    assert result.returncode == 0, result.stderr
    (got,) = yaml.safe_load(result.stdout)["listeners"]
    assert (got["protocol"], got["port"]) == listener


@pytest.mark.parametrize(
    ("uri", "protocol"),
    [
        ("turns://u:p@127.0.0.1:5349?transport=tcp", "TURN-TLS"),
        ("turns://u:p@127.0.0.1", "TURN-TLS"),  # turns: defaults to TLS (RFC 7065)
        ("turns:u:p@127.0.0.1:5349?transport=udp", "TURN-DTLS"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_turns_uri_is_refused_naming_the_fix(uri: str, protocol: str, dry_run: bool) -> None:
    """A turns: URI would be a TLS or DTLS listener, and no URI carries a certificate: one
    line, exit code 2, naming the fix (never a plaintext listener in its place)."""
    result = stunnerd(*(["-d"] if dry_run else []), uri)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "a turns: URI needs a certificate" in lines[0]
    assert protocol in lines[0]
    assert "listeners[].cert and .key" in lines[0]
    assert "config/examples/tls-dtls.json" in lines[0]
    assert (REPO / "config" / "examples" / "tls-dtls.json").is_file()


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("turn://u:p@127.0.0.1?transport=sctp", "transport 'sctp' is neither udp nor tcp"),
        ("http://u:p@127.0.0.1", "'http' is neither turn nor turns"),
        ("turn://u:p@127.0.0.1:70000", "the port '70000' is not 1-65535"),
        ("turn://u:p@", "no host"),
    ],
)
def test_bad_quick_start_uri_fails_with_one_line(uri: str, named: str) -> None:
    result = stunnerd("-d", uri)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert named in lines[0], lines[0]
    assert result.stdout == ""


def test_there_are_invalid_configs_to_check() -> None:
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_invalid_config_fails_with_one_line_naming_the_field(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect:"), f"{path.name} must start with '# expect: <field>'"
    field = first.removeprefix("# expect:").strip()
    result = stunnerd("-d", "-c", str(path))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert field in lines[0], lines[0]
    assert result.stdout == ""


def test_missing_config_file_fails_with_one_line() -> None:
    result = stunnerd("-d", "-c", "/nonexistent/stunnerd.yaml")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr


async def test_quick_start_uri_serves_an_allocate(tmp_path: Path) -> None:
    """stunnerd turn://user:pass@127.0.0.1:PORT?transport=udp, then a real Allocate."""
    for _ in range(3):
        port = free_port()
        uri = f"turn://quick:start-pass@127.0.0.1:{port}?transport=udp"
        log = tmp_path / f"quick-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*stunnerd_command(), uri], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            ready = await asyncio.to_thread(wait_ready, proc, port, False)
            if not ready:
                continue
            async with RawTurnClient(("127.0.0.1", port)) as client:
                relayed = await client.allocate("quick", "start-pass")
                assert relayed[0] == "127.0.0.1"
                assert 30000 <= relayed[1] <= 32767
                # the quick start allows public peers only
                assert error_code(await client.create_permission(("8.8.8.8", 53))) == 0
                assert error_code(await client.create_permission(("127.0.0.1", 9))) == 403
            async with RawTurnClient(("127.0.0.1", port)) as client:
                await client.challenge()
                client.login("quick", "wrong")
                resp = await client.request(stun.METHOD_ALLOCATE, udp_transport())
                assert error_code(resp) == 401
            return
        finally:
            code = await asyncio.to_thread(stop, proc, signal.SIGINT)
            assert code == 0, log.read_text()
    pytest.fail(f"the quick start server did not come up:\n{log.read_text()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_stunnerd_with_exit_code_0(tmp_path: Path, sig: signal.Signals) -> None:
    server = start_stunnerd(tmp_path, f"signal-{sig.name}")
    os.kill(server.proc.pid, sig)
    try:
        code = server.proc.wait(timeout=10)
    finally:
        stop(server.proc)
    assert code == 0, server.log_text()
    text = server.log_text()
    assert "listener stopped" in text
    assert "Traceback" not in text


async def test_sigterm_with_a_live_allocation_exits_0_after_the_grace_period(
    tmp_path: Path,
) -> None:
    server = start_stunnerd(tmp_path, "grace", extra_args=("--grace-period", "1"))
    try:
        async with RawTurnClient(("127.0.0.1", server.port)) as client:
            await client.allocate(
                server.config["auth"]["credentials"]["username"],
                server.config["auth"]["credentials"]["password"],
            )
            os.kill(server.proc.pid, signal.SIGTERM)
            code = await asyncio.to_thread(server.proc.wait, 10)
    finally:
        await asyncio.to_thread(stop, server.proc)
    assert code == 0, server.log_text()
    assert "drain" in server.log_text()


def test_port_already_in_use_is_reported(tmp_path: Path) -> None:
    """A second stunnerd on the same port cannot start its listeners and says so."""
    first = start_stunnerd(tmp_path, "first")
    try:
        config = dict(first.config)
        path = tmp_path / "second.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [*stunnerd_command(), "-c", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            stop(proc)
            out, _ = proc.communicate(timeout=5)
            pytest.fail(f"stunnerd kept running without a listener: {out.decode()}")
        assert proc.returncode != 0
        assert b"could not start" in out
    finally:
        stop(first.proc)
