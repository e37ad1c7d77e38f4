"""Descriptor exhaustion by silent TCP/TLS connections (issue 13, item 4).

    .venv/bin/python bench/fd_exhaust.py                    # 650 silent TCP at nofile 600
    .venv/bin/python bench/fd_exhaust.py --tls --silent 650
    .venv/bin/python bench/fd_exhaust.py --sources 13       # the flood spread over 127.0.0.2-14

Starts `stunnerd` under `prlimit --nofile=N` (UDP, TCP and TLS listeners, health on
127.0.0.1), opens `--silent` connections that never send a byte, then, with them still open,
counts what fails among `--udp` UDP Allocates, `--tcp` new TCP clients (Allocate) and `--probes`
/live + /ready requests. It then waits `--wait` seconds (past the idle timeout) and counts again,
and says how many of the silent connections the server closed. Prints one JSON line per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from stunner_dp.client.turn import TurnClient, TurnError, check
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, free_port, make_config

STUNNERD = str(Path(sys.executable).with_name("stunnerd"))


def self_signed() -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return base64.b64encode(pem).decode(), base64.b64encode(key_pem).decode()


def start(
    tmp: Path, nofile: int, admin: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], int, int, int]:
    port, tls_port, health = free_port(), free_port(udp=False), free_port(udp=False)
    cert, key = self_signed()
    config = make_config(port=port, protocols=("TURN-UDP", "TURN-TCP", "TURN-TLS"))
    config["admin"].update(healthcheck_endpoint=f"http://127.0.0.1:{health}", **admin)
    for lis in config["listeners"]:
        lis["min_relay_port"], lis["max_relay_port"] = 20000, 29999
        if lis["protocol"] == "TURN-TLS":
            lis.update(cert=cert, key=key, port=tls_port)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    prlimit = shutil.which("prlimit")
    assert prlimit, "prlimit (util-linux) is needed"
    log = (tmp / "stunnerd.log").open("wb")
    proc = subprocess.Popen(
        [prlimit, f"--nofile={nofile}", STUNNERD, "-c", str(path), "-l", "all:WARN"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if http_ok(health, "/ready"):
            return proc, port, tls_port, health
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("stunnerd did not start: " + (tmp / "stunnerd.log").read_text())


def http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def open_silent(port: int, count: int, sources: int) -> list[socket.socket]:
    """Connections that never send: the TCP handshake completes in the kernel's accept queue;
    over TLS not even a ClientHello is sent."""
    socks = []
    for i in range(count):
        src = f"127.0.0.{2 + i % sources}"  # the measured clients come from 127.0.0.1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.bind((src, 0))
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        socks.append(sock)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many silent connections the server has not closed (a closed one reads EOF/RST)."""
    alive = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            sock.recv(1)  # b"": closed by the server (it never sends to a silent client)
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


async def udp_allocates(port: int, n: int) -> int:
    failed = 0
    clients = []
    for _ in range(n):
        client = TurnClient(("127.0.0.1", port), "udp", 2.0)
        try:
            await client.connect()
            check(await client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD), "Allocate")
            clients.append(client)
        except (TurnError, OSError, TimeoutError):
            failed += 1
            client.close()
    for client in clients:
        with contextlib.suppress(TurnError, OSError, TimeoutError):
            await client.refresh(0)
        client.close()
    return failed


async def tcp_clients(port: int, n: int, tls: bool) -> int:
    failed = 0
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for _ in range(n):
        client = TurnClient(("127.0.0.1", port), "tls" if tls else "tcp", 2.0, context)
        try:
            await client.connect()
            check(await client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD), "Allocate")
        except (TurnError, OSError, TimeoutError, ssl.SSLError) as exc:
            failed += 1
            if os.environ.get("FD_EXHAUST_DEBUG"):
                print("client failed:", repr(exc), file=sys.stderr)
        finally:
            client.close()
        await asyncio.sleep(0.01)
    return failed


def probes(port: int, n: int) -> int:
    return sum(not http_ok(port, path) for _ in range(n) for path in ("/live", "/ready"))


async def measure(
    args: argparse.Namespace, port: int, tls_port: int, health: int
) -> dict[str, Any]:
    return {
        "udp_allocates_failed": f"{await udp_allocates(port, args.udp)}/{args.udp}",
        "tcp_clients_failed": f"{await tcp_clients(port, args.tcp, False)}/{args.tcp}",
        "tls_clients_failed": f"{await tcp_clients(tls_port, args.tcp, True)}/{args.tcp}",
        "health_probes_failed": f"{probes(health, args.probes)}/{2 * args.probes}",
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nofile", type=int, default=600)
    ap.add_argument("--silent", type=int, default=650)
    ap.add_argument("--sources", type=int, default=1, help="source IPs for the silent flood")
    ap.add_argument("--tls", action="store_true", help="flood the TLS listener instead")
    ap.add_argument("--udp", type=int, default=50)
    ap.add_argument("--tcp", type=int, default=10)
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--wait", type=float, default=7.0, help="seconds before the second count")
    ap.add_argument("--admin", default="{}", help="JSON merged into admin (e.g. idle timeout)")
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the flood's own descriptors
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, tls_port, health = start(Path(tmp), args.nofile, json.loads(args.admin))
        try:
            socks = open_silent(tls_port if args.tls else port, args.silent, args.sources)
            await asyncio.sleep(1.0)  # let the server accept what it will
            row: dict[str, Any] = {"phase": "flood open", "silent_connected": len(socks)}
            row["silent_open"] = still_open(socks)
            row.update(await measure(args, port, tls_port, health))
            print(json.dumps(row), flush=True)
            await asyncio.sleep(args.wait)
            row = {"phase": f"after {args.wait:g}s", "silent_open": still_open(socks)}
            row.update(await measure(args, port, tls_port, health))
            print(json.dumps(row), flush=True)
            for sock in socks:
                sock.close()
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
