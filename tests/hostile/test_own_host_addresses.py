"""The host's other addresses are ours too (issue 13 item 10): a cluster covering an address of
another interface (a second NIC, a docker bridge) must not let a client reach our listener or
relay ports there, though no config names that address.

The server runs in a network namespace this test creates (and deletes) with a veth pair, one
end holding 198.18.0.5/15; clients reach the listener on the namespace's loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

NS_ADDRESS = "198.18.0.5"

SCRIPT = r"""
import asyncio, json, sys
from stunner_dp.client.turn import TurnClient, error_code
from stunner_dp.config import parse_config
from stunner_dp.net.runtime import Server
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, free_port, make_config

ADDRESS = sys.argv[1]

async def main():
    port = free_port()
    config = make_config(
        port=port, protocols=("TURN-UDP",), endpoints=["198.18.0.0/15"],
        min_relay_port=30000, max_relay_port=30009,
    )
    async with Server(parse_config(config)) as srv:
        client = TurnClient(("127.0.0.1", port))
        await client.connect()
        codes = {}
        try:
            resp = await client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
            codes["allocate"] = error_code(resp)[0] if resp.cls != 0x100 else 0
            for name, peer_port in (("listener", port), ("relay", 30005), ("other", 9)):
                resp = await client.create_permission((ADDRESS, peer_port))
                codes[name] = error_code(resp)[0] if resp.cls != 0x100 else 0
            # a reload keeps them ours
            config["admin"]["name"] = "reloaded"
            await srv.apply(parse_config(config))
            resp = await client.create_permission((ADDRESS, port))
            codes["listener_after_reload"] = error_code(resp)[0] if resp.cls != 0x100 else 0
        finally:
            client.close()
    print(json.dumps(codes))

asyncio.run(main())
"""


def run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=20)


@pytest.fixture
def namespace() -> object:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    name = f"sdp-own-{uuid.uuid4().hex[:8]}"
    try:
        run("ip", "netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace: {exc.stderr.decode().strip()}")
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "link", "add", "own0", "type", "veth", "peer", "name", "own1")
        run("ip", "-n", name, "addr", "add", f"{NS_ADDRESS}/15", "dev", "own0")
        run("ip", "-n", name, "link", "set", "own0", "up")
        run("ip", "-n", name, "link", "set", "own1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def test_a_cluster_covering_another_interface_cannot_reach_our_ports_there(
    namespace: str,
) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", SCRIPT, NS_ADDRESS],
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes["allocate"] == 0
    assert codes["other"] == 0  # the cluster does cover the address: a port not ours is fine
    assert codes["listener"] == 403
    assert codes["relay"] == 403
    assert codes["listener_after_reload"] == 403
