"""Helpers for the TURN-TLS and TURN-DTLS tests: a self-signed certificate made at test time,
servers with TLS/DTLS listeners on a free port, coturn's turnutils processes."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers.uclient import Summary, parse_summary
from stunner_dp.net.runtime import Server
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, free_port, make_config

UCLIENT = shutil.which("turnutils_uclient")
PEER = shutil.which("turnutils_peer")
START_ATTEMPTS = 5
PROCESS_TIMEOUT = 60.0


@dataclass(frozen=True)
class CertPair:
    cert_pem: bytes
    key_pem: bytes
    cert_path: Path
    key_path: Path

    @property
    def cert_b64(self) -> str:
        return base64.b64encode(self.cert_pem).decode()

    @property
    def key_b64(self) -> str:
        return base64.b64encode(self.key_pem).decode()


def make_self_signed(directory: Path) -> CertPair:
    """A P-256 key and a self-signed certificate for 127.0.0.1 and localhost, valid a day."""
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
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return CertPair(cert_pem, key_pem, cert_path, key_path)


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertPair:
    return make_self_signed(tmp_path_factory.mktemp("tls-cert"))


def secure_config(
    cert: CertPair, port: int, protocols: tuple[str, ...], **kw: Any
) -> dict[str, Any]:
    config = make_config(port=port, protocols=protocols, **kw)
    for listener in config["listeners"]:
        if listener["protocol"] in ("TURN-TLS", "TURN-DTLS"):
            listener["cert"] = cert.cert_b64
            listener["key"] = cert.key_b64
    return config


@dataclass
class Running:
    server: Server
    port: int
    config: dict[str, Any]

    @property
    def low_high(self) -> tuple[int, int]:
        lis = self.config["listeners"][0]
        return int(lis["min_relay_port"]), int(lis["max_relay_port"])


@asynccontextmanager
async def secure_server(
    cert: CertPair,
    protocols: tuple[str, ...] = ("TURN-TLS",),
    server_kw: dict[str, Any] | None = None,
    **config_kw: Any,
) -> AsyncIterator[Running]:
    """A server on 127.0.0.1 with one listener per protocol, all on one free port (TCP and
    UDP), the test certificate on the TLS/DTLS ones. A lost race for the port picks another."""
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        config = secure_config(cert, port, protocols, **config_kw)
        server = Server(config, bind_host="127.0.0.1", **(server_kw or {}))
        try:
            await server.start()
        except RuntimeError:
            await server.stop()
            if attempt == START_ATTEMPTS - 1:
                raise
            continue
        if server.failed_listeners:
            await server.stop()
            if attempt == START_ATTEMPTS - 1:
                raise RuntimeError("; ".join(server.failed_listeners.values()))
            continue
        break
    try:
        yield Running(server, port, config)
    finally:
        await server.stop()


# -- coturn's turnutils ---------------------------------------------------------------------------


def need_turnutils() -> None:
    if (UCLIENT is None or PEER is None) and not os.environ.get("STUNNER_DP_REQUIRE_INTEROP"):
        pytest.skip("coturn's turnutils_uclient/turnutils_peer are not installed")


def _udp_echoes(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(b"are you there", ("127.0.0.1", port))
            return s.recv(64) == b"are you there"
        except OSError:
            return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def turn_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """turnutils_peer (a UDP echo server) on 127.0.0.1: its port."""
    need_turnutils()
    assert PEER is not None
    log_dir = tmp_path_factory.mktemp("turnutils-peer")
    for _ in range(3):
        port = free_port(tcp=False)
        with (log_dir / f"peer-{port}.log").open("wb") as out:
            proc = subprocess.Popen(
                [PEER, "-L", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                if _udp_echoes(port):
                    yield port
                    return
                time.sleep(0.1)
        finally:
            _stop(proc)
    pytest.fail("turnutils_peer did not start")


async def run_uclient(server_port: int, peer_port: int, *flags: str) -> Summary:
    """turnutils_uclient against 127.0.0.1:server_port relaying to turnutils_peer, run without
    blocking the event loop the server lives in; its summary."""
    assert UCLIENT is not None
    cmd = [
        UCLIENT,
        "-e",
        "127.0.0.1",
        "-r",
        str(peer_port),
        "-p",
        str(server_port),
        "-u",
        DEFAULT_USERNAME,
        "-w",
        DEFAULT_PASSWORD,
        *flags,
        "127.0.0.1",
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    output = out.decode(errors="replace")
    context = f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-3000:]}"
    assert proc.returncode == 0, context
    return parse_summary(output, context)


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
        out, _ = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode()
