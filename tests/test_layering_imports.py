"""Imports point up: the client side loads no server, the supervisor loads no listener.

Each check imports one module in a fresh interpreter and looks at `sys.modules`, so what a
module pulls in through its imports (and theirs) counts, not only the lines it writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVER = (
    "stunner_dp.net.relay",  # the relay sockets and the port pool
    "stunner_dp.net.runtime",  # Server
    "stunner_dp.turn.ratelimit",
    "stunner_dp.turn.server",  # the state machine
)
LISTENERS = (
    "stunner_dp.net.udp",
    "stunner_dp.net.tcp",
    "stunner_dp.net.dtls",
    "stunner_dp.net.runtime",
    "stunner_dp.net.relay",
)


def loaded_by(module: str) -> set[str]:
    """The stunner_dp modules in sys.modules after `import module` in a new interpreter."""
    code = (
        f"import json, sys, {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('stunner_dp'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    names = set(json.loads(out.stdout))
    assert module in names  # the import did happen
    return names


@pytest.mark.parametrize(
    "module",
    [
        "stunner_dp.client.probe",
        "stunner_dp.client.turn",
        "stunner_dp.client.dtls",
        "stunner_dp.client.ice",
    ],
)
def test_the_client_side_loads_no_server(module: str) -> None:
    loaded = loaded_by(module)
    assert loaded.isdisjoint(SERVER), sorted(loaded & set(SERVER))
    shell = sorted(m for m in loaded if m.startswith(("stunner_dp.net", "stunner_dp.daemon")))
    assert shell == [], f"{module} loads the server's network layer or the daemon: {shell}"


def test_the_cli_loads_no_server_before_it_dispatches() -> None:
    """`stunner-dp probe` and `stunner-dp ice` go through stunner_dp.cli."""
    loaded = loaded_by("stunner_dp.cli")
    assert loaded.isdisjoint(SERVER), sorted(loaded & set(SERVER))
    assert loaded.isdisjoint(LISTENERS), sorted(loaded & set(LISTENERS))


def test_the_supervisor_loads_no_listener() -> None:
    loaded = loaded_by("stunner_dp.daemon.supervisor")
    assert loaded.isdisjoint(LISTENERS), sorted(loaded & set(LISTENERS))
    assert "stunner_dp.daemon.worker" not in loaded  # the pipe protocol is its own module


def test_the_shared_helpers_load_neither_side() -> None:
    """What both sides import (DTLS record framing, the TURN URI parser) stands alone."""
    for module in ("stunner_dp.dtls_records", "stunner_dp.config.uri"):
        loaded = loaded_by(module)
        sides = sorted(
            m
            for m in loaded
            if m.startswith(("stunner_dp.net", "stunner_dp.client", "stunner_dp.daemon"))
        )
        assert sides == [], f"{module} loads {sides}"
