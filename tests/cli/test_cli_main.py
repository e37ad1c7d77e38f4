"""`stunner-dp`: its --help lists every command (run, the daemon; probe; ice), each command's
--help is its own, and a command line that starts with a flag is the daemon's, as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.stunnerd_proc import stop, wait_ready

from stunner_dp.testing import free_port, make_config, relay_window

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "config" / "stunnerd.yaml"
RUN_TIMEOUT = 30
COMMANDS = ("run", "probe", "ice", "auth-service")


def script(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    assert exe.exists(), f"{name} is not installed next to {sys.executable} (pip install -e .)"
    return str(exe)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUNNER_", "CDS_"))}
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False, env=env
    )


def listed_commands(help_text: str) -> list[str]:
    """The names in the help's `commands:` section."""
    section = help_text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in section.splitlines() if line.strip()]


@pytest.mark.parametrize("how", [("--help",), ("-h",), ("help",)], ids=" ".join)
def test_help_lists_the_daemon_probe_and_ice(how: tuple[str, ...]) -> None:
    result = run(script("stunner-dp"), *how)
    assert result.returncode == 0, result.stderr
    assert listed_commands(result.stdout) == list(COMMANDS)
    assert "stunnerd" in result.stdout  # says the daemon is stunnerd's


def test_python_m_stunner_dp_has_the_same_help() -> None:
    result = run(sys.executable, "-m", "stunner_dp", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout == run(script("stunner-dp"), "--help").stdout


@pytest.mark.parametrize(
    ("command", "usage", "flag"),
    [
        ("probe", "usage: stunner-dp probe", "--peer"),
        ("ice", "usage: stunner-dp ice", "--ttl"),
        ("run", "usage: stunner-dp run", "--udp-thread-num"),
    ],
)
def test_each_commands_help_is_its_own(command: str, usage: str, flag: str) -> None:
    result = run(script("stunner-dp"), command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage)
    assert flag in result.stdout


def test_stunnerd_help_stays_stunnerds() -> None:
    result = run(script("stunnerd"), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: stunnerd ")
    assert "--udp-thread-num" in result.stdout
    assert "commands:" not in result.stdout


@pytest.mark.parametrize("prefix", [(), ("run",)], ids=["flags-first", "run"])
def test_daemon_flags_still_run_the_daemon_dry(prefix: tuple[str, ...]) -> None:
    result = run(script("stunner-dp"), *prefix, "-d", "-c", str(DEFAULT_CONFIG))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["version"] == "v1"


def test_stunner_dp_with_daemon_flags_serves(tmp_path: Path) -> None:
    port = free_port()
    low, high = relay_window(50)
    config = tmp_path / "stunnerd.yaml"
    config.write_text(
        yaml.safe_dump(make_config(port=port, min_relay_port=low, max_relay_port=high))
    )
    log = tmp_path / "stunner-dp.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [script("stunner-dp"), "-c", str(config), "-l", "all:INFO"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_ready(proc, port), log.read_text(errors="replace")
    finally:
        assert stop(proc) == 0, log.read_text(errors="replace")


def test_a_mistyped_command_is_named_not_taken_for_a_uri() -> None:
    result = run(script("stunner-dp"), "prob", "turn://u:p@127.0.0.1:3478")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "stunner-dp: unknown command 'prob' (commands: run, probe, ice, auth-service)"
    )


def test_the_quick_start_uri_is_still_the_daemons() -> None:
    result = run(script("stunner-dp"), "-d", "turn://user:pass@127.0.0.1:3478")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["listeners"][0]["port"] == 3478
