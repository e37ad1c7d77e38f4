"""TURN-DTLS: the listener of stunner_dp/net/dtls.py against coturn's turnutils_uclient (-S
over UDP), the package's own DTLS client (stunner_dp/client/dtls.py, under
tests/helpers/dtls_turn.py and `stunner-dp probe turns:...?transport=udp`), with a real
self-signed certificate.

What must hold: allocations and relaying work with zero loss; junk, cookie-less ClientHellos and
handshakes left half way hold no state for long and disturb nobody; an allocation ends with its
association (close_notify, a new handshake from the same address)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from helpers.dtls_turn import DtlsTurnClient
from helpers.tls_helpers import (
    CertPair,
    Running,
    need_turnutils,
    run_probe,
    run_uclient,
    secure_server,
)
from helpers.turnclient import error_code
from helpers.uclient import assert_no_loss
from OpenSSL import SSL

from stunner_dp import stun
from stunner_dp.client.dtls import DtlsClient, DtlsHandshakeError, client_context
from stunner_dp.client.turn import TurnClient
from stunner_dp.config import load_config_file
from stunner_dp.dtls_records import pack_datagrams
from stunner_dp.net.dtls import DtlsListener, is_client_hello
from stunner_dp.net.runtime import Server
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME, free_port, udp_echo_peer
from stunner_dp.testing import make_config as base_config

DTLS = ("TURN-DTLS",)
CHANNEL = 0x4001


def listener(srv: Running) -> DtlsListener:
    lst = srv.server.listeners["dtls-listener"]
    assert isinstance(lst, DtlsListener)
    return lst


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` every 20 ms for at most `timeout` seconds."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


@asynccontextmanager
async def relaying_client(
    srv: Running, cert: CertPair, peer: tuple[str, int], **kw: object
) -> AsyncIterator[DtlsTurnClient]:
    """A DTLS client with an allocation and a channel to `peer`."""
    async with DtlsTurnClient(("127.0.0.1", srv.port), cert.cert_path, **kw) as client:
        relay = await client.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
        low, high = srv.low_high
        assert relay[0] == "127.0.0.1" and low <= relay[1] <= high
        assert error_code(await client.create_permission(peer)) == 0
        assert error_code(await client.channel_bind(CHANNEL, peer)) == 0
        yield client


async def echo(client: DtlsTurnClient, payload: bytes) -> None:
    client.send_channel_data(CHANNEL, payload)
    frame = await client.next_unsolicited()
    assert stun.parse_channel_data(frame) == (CHANNEL, payload)


# -- coturn's client ----------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["-S", "-c", "-n", "20"], 20),
        (["-S", "-c", "-s", "-n", "20"], 20),  # Send/Data indications
        (["-S", "-c", "-m", "5", "-n", "50"], 250),
        (["-S", "-n", "20"], 40),  # RTP/RTCP pair: EVEN-PORT + RESERVATION-TOKEN
    ],
    ids=["channels", "send-indications", "5-clients", "rtp-rtcp-pair"],
)
async def test_uclient_dtls(
    cert: CertPair, turn_peer: int, flags: list[str], expected: int
) -> None:
    need_turnutils()
    async with secure_server(cert, DTLS) as srv:
        summary = await run_uclient(srv.port, turn_peer, *flags)
        assert_no_loss(summary, expected)
        stats = srv.server.stats().listeners["dtls-listener"]
        assert stats.connections_total >= 1
        assert stats.rx_packets > 0 and stats.tx_packets > 0


# -- our own client -----------------------------------------------------------------------------


async def test_allocate_relay_and_close_notify(cert: CertPair) -> None:
    async with secure_server(cert, DTLS) as srv, udp_echo_peer() as peer:
        lst = listener(srv)
        async with relaying_client(srv, cert, peer) as client:
            assert srv.server.allocation_count == 1
            for i in range(50):
                await echo(client, b"media-%d" % i + os.urandom(i))
            # a large one: one record, one datagram
            await echo(client, os.urandom(1400))
            # the Binding answer says where the client is
            tid = os.urandom(12)
            resp = await client.transact(
                stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, tid, []), tid
            )
            mapped = stun.decode_xor_address(
                resp.get(stun.ATTR_XOR_MAPPED_ADDRESS) or b"", resp.transaction_id
            )
            assert mapped == client.local_address
            stats = srv.server.stats().listeners["dtls-listener"]
            assert stats.connections == 1 and stats.connections_total == 1
            assert stats.rx_packets >= 5 and stats.tx_packets >= 5
            assert lst.cookies_sent >= 1  # the handshake went through the cookie exchange
            client.close_notify()
            # the association is gone and so is the allocation made over it
            assert await until(lambda: srv.server.allocation_count == 0)
            assert await until(lambda: not lst.connections)


async def test_wrong_password_over_dtls(cert: CertPair) -> None:
    async with (
        secure_server(cert, DTLS) as srv,
        DtlsTurnClient(("127.0.0.1", srv.port), cert.cert_path) as client,
    ):
        await client.challenge()
        client.login(DEFAULT_USERNAME, "not-the-password")
        resp = await client.request(
            stun.METHOD_ALLOCATE,
            [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(17))],
        )
        assert error_code(resp) == 401
        assert srv.server.allocation_count == 0


async def test_junk_hellos_and_aborted_handshakes_disturb_nobody(cert: CertPair) -> None:
    async with secure_server(cert, DTLS) as srv, udp_echo_peer() as peer:
        lst = listener(srv)
        lst.handshake_timeout = 1.0
        async with relaying_client(srv, cert, peer) as good:
            await echo(good, b"before")
            dropped = lst.counters.dropped
            # 1. junk from a new address: dropped before OpenSSL sees it, no answer, no state
            junk = [b"\x00" * 20, b"\x16\xfe\xfd" + os.urandom(40), os.urandom(200)]
            assert await exchange(srv.port, junk, wait=0.3) == []
            assert await until(lambda: lst.counters.dropped >= dropped + 3)
            # 2. junk into the established association (from its own address): discarded
            good.send_wire(b"\x17\xfe\xfd\x00\x01" + os.urandom(60))
            good.send_wire(os.urandom(100))
            await echo(good, b"after junk")
            # 3. cookie-less ClientHellos (what a spoofed flood looks like): a cookie each, no
            # state kept
            hello = client_hello()
            cookies = lst.cookies_sent
            answers = await exchange(srv.port, [hello] * 50, expect=50)
            assert len(answers) == 50
            assert all(a[0] == 22 and a[13] == 3 for a in answers)  # HelloVerifyRequests
            assert lst.cookies_sent == cookies + 50
            assert len(lst.connections) == 1 and lst.handshakes == 0
            # 4. handshakes that stop after the server's first flight hold a slot ...
            failed = lst.handshakes_failed
            aborted = [DtlsTurnClient(("127.0.0.1", srv.port), handshake=False) for _ in range(3)]
            for client in aborted:
                await client.__aenter__()
                await abort_after_server_hello(client)
            assert len(lst.connections) == 4 and lst.handshakes == 3
            await echo(good, b"during aborted handshakes")
            # ... until their deadline (retransmissions in between), then nothing is left
            assert await until(lambda: lst.handshakes == 0, timeout=5.0)
            assert len(lst.connections) == 1 and not lst.handshaking
            assert lst.handshakes_failed == failed + 3
            for client in aborted:
                await client.__aexit__(None, None, None)
            await echo(good, b"after")
            assert srv.server.allocation_count == 1


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)


async def exchange(
    port: int, datagrams: list[bytes], *, expect: int = 0, wait: float = 5.0
) -> list[bytes]:
    """Send `datagrams` from a fresh socket; what comes back within `wait` seconds (sooner
    once `expect` have come)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Collect, remote_addr=("127.0.0.1", port)
    )
    try:
        for data in datagrams:
            transport.sendto(data)
        for _ in range(int(wait / 0.02)):
            if expect and len(proto.received) >= expect:
                break
            await asyncio.sleep(0.02)
        return proto.received
    finally:
        transport.close()


def client_hello() -> bytes:
    """A real ClientHello without a cookie, as a DTLS client sends it first."""
    conn = SSL.Connection(SSL.Context(SSL.DTLS_CLIENT_METHOD), None)
    conn.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)


async def abort_after_server_hello(client: DtlsTurnClient) -> None:
    """Cookie exchange, then the verified ClientHello; read the server's first flight and stop."""
    assert not client.step()  # ClientHello
    client.ssl.bio_write(await client.next_datagram(2.0))  # HelloVerifyRequest
    assert not client.step()  # ClientHello with the cookie
    flight = await client.next_datagram(2.0)  # ServerHello, Certificate, ...
    assert flight[0] == 22


async def test_handshake_cap(cert: CertPair) -> None:
    """Past the cap, verified ClientHellos are refused; the client's retransmission gets in once
    a slot is free."""
    async with secure_server(cert, DTLS) as srv:
        lst = listener(srv)
        lst.handshake_timeout = 1.0
        lst.max_handshakes = 1
        hog = DtlsTurnClient(("127.0.0.1", srv.port), handshake=False)
        await hog.__aenter__()
        try:
            await abort_after_server_hello(hog)
            assert lst.handshakes == 1
            async with DtlsTurnClient(
                ("127.0.0.1", srv.port), cert.cert_path, handshake=False
            ) as late:
                task = asyncio.ensure_future(late.handshake(timeout=8.0))
                assert await until(lambda: lst.handshakes_refused >= 1, timeout=3.0)
                await task  # the hog timed out; the late client's retransmission got in
                assert lst.connections_total == 1
                await late.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
                assert srv.server.allocation_count == 1
        finally:
            await hog.__aexit__(None, None, None)


async def test_new_handshake_from_same_address_ends_old_allocation(cert: CertPair) -> None:
    """A client that lost its association (restarted, no close_notify) and handshakes again
    from the same address gets a fresh session: the old allocation is deleted, a new Allocate
    succeeds (it would be 437 Allocation Mismatch on the old one)."""
    async with secure_server(cert, DTLS) as srv, udp_echo_peer() as peer:
        lst = listener(srv)
        async with relaying_client(srv, cert, peer) as first:
            local = first.local_address
            old = srv.server.turn.allocations["dtls-listener"][local]  # type: ignore[union-attr]
            await echo(first, b"first")
        await asyncio.sleep(0.05)  # the transport closes its socket on the next loop turn
        # the socket is closed, the association not: the server still has it
        assert srv.server.allocation_count == 1 and len(lst.connections) == 1
        async with relaying_client(srv, cert, peer, local_addr=local) as second:
            assert second.local_address == local
            new = srv.server.turn.allocations["dtls-listener"][local]  # type: ignore[union-attr]
            assert new is not old
            await echo(second, b"second")
            assert srv.server.allocation_count == 1 and len(lst.connections) == 1
            assert lst.connections_total == 2


async def test_idle_association_without_allocation_is_closed(cert: CertPair) -> None:
    async with secure_server(cert, DTLS) as srv, udp_echo_peer() as peer:
        lst = listener(srv)
        lst.idle_timeout = 0.5
        async with (
            DtlsTurnClient(("127.0.0.1", srv.port), cert.cert_path) as idle,
            relaying_client(srv, cert, peer) as busy,
        ):
            assert len(lst.connections) == 2
            # the one without an allocation is closed (with a close_notify); the one with an
            # allocation stays, silent or not
            assert await until(lambda: idle.closed_by_server, timeout=5.0)
            assert list(lst.connections) == [busy.local_address]
            await asyncio.sleep(1.5)
            await echo(busy, b"still here")
            assert srv.server.allocation_count == 1


async def test_unusable_certificate_fails_the_listener_only(cert: CertPair) -> None:
    port = free_port()
    config = base_config(port=port, protocols=("TURN-UDP", "TURN-DTLS"))
    config["listeners"][1]["cert"] = base64.b64encode(b"not a certificate").decode()
    config["listeners"][1]["key"] = cert.key_b64
    async with Server(config, bind_host="127.0.0.1") as server:
        assert "udp-listener" in server.listeners
        assert "dtls-listener" in server.failed_listeners
        assert "cert/key not usable for DTLS" in server.failed_listeners["dtls-listener"]


def test_pack_datagrams_keeps_records_whole() -> None:
    def record(n: int) -> bytes:
        return bytes([22, 0xFE, 0xFD, 0, 0]) + bytes(6) + n.to_bytes(2, "big") + bytes(n)

    records = [record(500), record(500), record(300), record(2000), record(10)]
    datagrams = pack_datagrams(b"".join(records), 1200)
    assert b"".join(datagrams) == b"".join(records)
    assert [len(d) for d in datagrams] == [13 + 500 + 13 + 500, 313, 2013, 23]


def test_client_hello_recognised() -> None:
    hello = client_hello()
    assert is_client_hello(hello)
    assert not is_client_hello(b"\x17" + hello[1:])  # application data
    assert not is_client_hello(hello[:13])


async def test_shipped_example_serves_tls_and_dtls() -> None:
    """config/examples/tls-dtls.json starts as it is (its example pair is real), on free ports:
    a DTLS client completes a handshake and gets a 401 challenge, a TLS client too."""
    path = Path(__file__).resolve().parents[2] / "config" / "examples" / "tls-dtls.json"
    config = load_config_file(path, env={"STUNNER_ADDR": "127.0.0.1"}).to_dict()
    port = free_port()
    for lis in config["listeners"]:
        lis["port"] = port
        lis["min_relay_port"], lis["max_relay_port"] = 31900, 31999
    async with Server(config, bind_host="127.0.0.1") as server:
        assert not server.failed_listeners, server.failed_listeners
        async with DtlsTurnClient(("127.0.0.1", port)) as client:
            assert client.ssl.get_peer_certificate() is not None
            await client.challenge()
        tls = TurnClient(("127.0.0.1", port), "tls", 3.0, insecure_context())
        await tls.connect()
        try:
            resp = await tls.challenge()
            assert resp.cls == stun.CLASS_ERROR
        finally:
            tls.close()


def insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- the probe and the package's client -----------------------------------------------------------


def step_line(out: str, step: str) -> str:
    """The line of one step: its name, then ok or FAIL."""
    pattern = re.compile(rf"\s*{re.escape(step)}\s+(ok|FAIL)\s")
    lines = [line for line in out.splitlines() if pattern.match(line)]
    assert lines, out
    return lines[0]


async def test_probe_over_dtls(cert: CertPair) -> None:
    async with secure_server(cert, DTLS) as srv:
        lst = listener(srv)
        uri = f"turns://{DEFAULT_USERNAME}:{DEFAULT_PASSWORD}@127.0.0.1:{srv.port}?transport=udp"
        code, out = await run_probe(uri, "--insecure")
        assert code == 0, out
        steps = ("handshake", "binding", "allocate (401)", "allocate", "create permission")
        for step in (*steps, "channel bind", "round trip"):
            assert " ok " in step_line(out, step), out
        assert "DTLSv1.2 with 127.0.0.1:" in step_line(out, "handshake"), out
        assert "certificate NOT verified" in step_line(out, "handshake"), out
        low, high = srv.low_high
        relay_port = int(out.split("relay address 127.0.0.1:")[1].split(",")[0])
        assert low <= relay_port <= high, out
        assert out.strip().splitlines()[-1].startswith("OK"), out
        assert srv.server.allocation_count == 0  # the probe deleted its allocation ...
        assert await until(lambda: not lst.connections)  # ... and sent a close_notify
        stats = srv.server.stats().listeners["dtls-listener"]
        assert stats.connections_total == 1
        assert stats.rx_packets >= 6  # binding, two allocates, permission, bind, refresh

        # without --insecure the self-signed certificate is refused, and the probe says why
        code, out = await run_probe(uri)
        assert code == 1, out
        assert "FAIL" in step_line(out, "handshake"), out
        last = out.strip().splitlines()[-1]
        assert last.startswith("FAILED at handshake: DTLS handshake failed:"), out
        assert "certificate verify failed" in last and "self-signed certificate" in last, out
        assert "--insecure" in last, out
        assert " binding " not in out, out
        assert lst.connections_total == 1 and srv.server.allocation_count == 0


async def test_probe_dtls_dead_port_times_out_at_handshake() -> None:
    port = free_port(tcp=False)
    code, out = await run_probe(
        f"turns://u:p@127.0.0.1:{port}?transport=udp", "--insecure", "--timeout", "1"
    )
    assert code == 1, out
    assert "FAIL" in step_line(out, "handshake"), out
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAILED at handshake: DTLS handshake timed out:"), out
    assert f"127.0.0.1:{port}/dtls within 1 s" in last, out


async def test_client_retransmits_its_hello_until_the_deadline() -> None:
    """A server that never answers gets the same ClientHello again on OpenSSL's timer (after
    1 s, then 2 s more), and the handshake gives up at its deadline."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    silent.setblocking(False)
    client = DtlsClient(client_context(verify=False), ("127.0.0.1", silent.getsockname()[1]))
    try:
        await client.open()
        with pytest.raises(DtlsHandshakeError) as info:
            await client.handshake(timeout=2.5)
        assert info.value.timed_out and not info.value.refused
        hellos = []
        for _ in range(10):
            try:
                hellos.append(silent.recv(65536))
            except BlockingIOError:
                break
        assert len(hellos) >= 2, hellos  # at 0 s, at 1 s (and at 3 s on a slow machine)
        assert all(is_client_hello(h) for h in hellos)
        assert hellos[0][RANDOM] == hellos[1][RANDOM]  # the same hello, retransmitted
    finally:
        client.close()
        silent.close()


RANDOM = slice(13 + 12 + 2, 13 + 12 + 2 + 32)  # record and handshake headers, version


@pytest.mark.parametrize(
    ("name", "error"),
    [("127.0.0.1", ""), ("localhost", ""), ("turn.example.com", "not for turn.example.com")],
)
async def test_client_checks_the_host_name(cert: CertPair, name: str, error: str) -> None:
    """A certificate the client trusts is still refused when its names do not cover the
    server's."""
    async with secure_server(cert, DTLS) as srv:
        context = client_context(cafile=cert.cert_path)
        client = DtlsClient(context, ("127.0.0.1", srv.port), server_name=name)
        try:
            await client.open()
            if not error:
                await client.handshake(timeout=5.0)
                assert client.established and client.verifying
                return
            with pytest.raises(DtlsHandshakeError) as info:
                await client.handshake(timeout=5.0)
            assert error in info.value.verify_error and error in str(info.value)
            assert not client.established
        finally:
            client.close()


async def test_associations_per_source_ip_are_capped(cert: CertPair) -> None:
    """admin.max_connections_per_ip 2: a third association from 127.0.0.1 is refused, one from
    127.0.0.5 is not; connection_idle_timeout (1 s) closes the idle ones, as over TCP."""
    admin = {"max_connections_per_ip": 2, "connection_idle_timeout": 1}
    async with secure_server(cert, DTLS, admin=admin) as srv:
        lst = listener(srv)
        assert lst.idle_timeout is None  # the config's
        async with (
            DtlsTurnClient(("127.0.0.1", srv.port), cert.cert_path) as one,
            DtlsTurnClient(("127.0.0.1", srv.port), cert.cert_path),
        ):
            third = DtlsTurnClient(("127.0.0.1", srv.port), cert.cert_path, handshake=False)
            async with third:
                with pytest.raises(DtlsHandshakeError):
                    await third.handshake(timeout=2.0)
            assert lst.associations_refused >= 1
            other = DtlsTurnClient(
                ("127.0.0.1", srv.port), cert.cert_path, local_addr=("127.0.0.5", 0)
            )
            async with other:
                await other.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
            assert await until(lambda: one.closed_by_server, timeout=5.0)
