"""`stunner-dp ice`: the stunner-auth-service JSON, and its credential works on a real server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path
from typing import Any

from stunner_dp.client.ice import ice_config
from stunner_dp.client.turn import TurnClient, error_code
from stunner_dp.config import parse_config
from stunner_dp.testing import start_turn_server

SECRET = "ice-test-secret"
FAKE_PEM = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot used\n").decode()


async def run_ice(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stunner_dp.cli",
        "ice",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def four_listeners(auth: dict[str, Any]) -> dict[str, Any]:
    tls = {"cert": FAKE_PEM, "key": FAKE_PEM}
    return {
        "version": "v1",
        "auth": auth,
        "listeners": [
            {
                "name": "udp",
                "protocol": "TURN-UDP",
                "public_address": "34.118.88.91",
                "public_port": 3478,
                "address": "10.0.0.5",
                "port": 13478,
            },
            {"name": "tcp", "protocol": "TURN-TCP", "address": "10.0.0.5", "port": 3479},
            {
                "name": "tls",
                "protocol": "TURN-TLS",
                "public_address": "turn.example.com",
                "port": 443,
                **tls,
            },
            {
                "name": "dtls",
                "protocol": "TURN-DTLS",
                "address": "2001:db8::7",
                "port": 5349,
                **tls,
            },
            {"name": "wild", "protocol": "TURN-UDP", "port": 3480},
        ],
    }


async def test_ephemeral_json_shape(tmp_path: Path) -> None:
    path = tmp_path / "stunnerd.json"
    path.write_text(
        json.dumps(four_listeners({"type": "ephemeral", "credentials": {"secret": SECRET}}))
    )
    before = int(time.time())
    code, out, err = await run_ice("--config", str(path), "--user", "alice", "--ttl", "600")
    after = int(time.time())
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"iceServers", "iceTransportPolicy"}
    assert doc["iceTransportPolicy"] == "all"
    (server,) = doc["iceServers"]
    assert set(server) == {"username", "credential", "urls"}
    expiry, user = server["username"].split(":")
    assert user == "alice" and before + 600 <= int(expiry) <= after + 600
    mac = hmac.new(SECRET.encode(), server["username"].encode(), hashlib.sha1).digest()
    assert server["credential"] == base64.b64encode(mac).decode()
    assert server["urls"] == [
        "turn:34.118.88.91:3478?transport=udp",  # public address and port win
        "turn:10.0.0.5:3479?transport=tcp",  # falls back to address and port
        "turns:turn.example.com:443?transport=tcp",  # TLS
        "turns:[2001:db8::7]:5349?transport=udp",  # DTLS, IPv6 in brackets
    ]
    assert "'wild'" in err  # the wildcard-only listener is left out, with a word on stderr


async def test_static_and_overrides(tmp_path: Path) -> None:
    static = four_listeners(
        {"type": "static", "credentials": {"username": "user-7", "password": "pw-7"}}
    )
    doc = ice_config(parse_config(static), user="ignored", ttl=5)
    assert doc["iceServers"][0]["username"] == "user-7"
    assert doc["iceServers"][0]["credential"] == "pw-7"
    # --secret replaces the file's; no --user gives a bare timestamp (TURN REST API allows it)
    eph = parse_config(four_listeners({"type": "ephemeral", "credentials": {"secret": "file"}}))
    doc = ice_config(eph, secret="other", ttl=10, now=1000.0)
    server = doc["iceServers"][0]
    assert server["username"] == "1010"
    mac = hmac.new(b"other", b"1010", hashlib.sha1).digest()
    assert server["credential"] == base64.b64encode(mac).decode()
    # a bad file: exit code 2 and a message naming the problem
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1\nlisteners: [{name: x, protocol: SCTP}]\n")
    code, out, err = await run_ice("--config", str(bad))
    assert code == 2 and out == "" and "protocol" in err


async def test_ephemeral_credential_allocates(tmp_path: Path) -> None:
    async with start_turn_server(auth_type="ephemeral", secret=SECRET) as ts:
        path = tmp_path / "stunnerd.yaml"
        path.write_text(json.dumps(ts.config))  # JSON is YAML
        code, out, err = await run_ice("--config", str(path), "--user", "bob", "--ttl", "300")
        assert code == 0, err
        server = json.loads(out)["iceServers"][0]
        assert f"turn:127.0.0.1:{ts.port}?transport=udp" in server["urls"]
        assert f"turn:127.0.0.1:{ts.port}?transport=tcp" in server["urls"]
        for transport in ("udp", "tcp"):
            async with TurnClient(ts.address, transport, timeout=5.0) as client:
                resp = await client.allocate(server["username"], server["credential"])
                assert error_code(resp) == (0, ""), error_code(resp)
        assert ts.server.allocation_count >= 1

        # the same with a wrong --secret: the server refuses it
        code, out, err = await run_ice("--config", str(path), "--user", "bob", "--secret", "nope")
        assert code == 0, err
        wrong = json.loads(out)["iceServers"][0]
        async with TurnClient(ts.address, "udp", timeout=5.0) as client:
            resp = await client.allocate(wrong["username"], wrong["credential"])
            assert error_code(resp)[0] == 401
