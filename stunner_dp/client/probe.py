"""`stunner-dp probe turn://user:pass@host:3478?transport=udp`: a TURN connectivity check.

It runs what a WebRTC client does against a TURN server, one step at a time, and says which
step failed and what that usually means:

    connect (TCP/TLS) or handshake (DTLS) -> Binding -> Allocate (401 challenge)
    -> Allocate (authenticated) -> CreatePermission -> ChannelBind
    -> ChannelData round trip through the relay

The round trip goes to a UDP echo peer the probe starts itself (on loopback when the server is
on this host, else on the address this host uses to reach the server), or to ``--peer``, which
must echo datagrams back. Exit code 0 only when the round trip worked.

`TurnClient` (client/turn.py) is the small client underneath.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TextIO, cast

from OpenSSL import SSL

from stunner_dp import stun
from stunner_dp.client.dtls import DtlsHandshakeError, client_context
from stunner_dp.client.turn import (
    CHANNEL,
    RTO,
    Addr,
    TurnClient,
    TurnError,
    error_code,
    mapped_address,
    relayed_address,
    text,
    udp_transport,
)
from stunner_dp.config.uri import TurnUri, parse_turn_uri
from stunner_dp.turn.auth import ephemeral_expiry

# -- the echo peer ----------------------------------------------------------------------------


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def echo_peer(host: str) -> AsyncIterator[Addr]:
    """A UDP echo server on `host`, on a port the kernel picks."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(host, 0))
    try:
        name = transport.get_extra_info("sockname")
        yield str(name[0]), int(name[1])
    finally:
        transport.close()


# -- the probe --------------------------------------------------------------------------------


class ProbeFailed(Exception):
    """A step failed; `diagnosis` says what that usually means."""

    def __init__(self, step: str, diagnosis: str) -> None:
        super().__init__(f"{step}: {diagnosis}")
        self.step = step
        self.diagnosis = diagnosis


@dataclass
class Probe:
    target: TurnUri
    timeout: float = 3.0
    peer: Addr | None = None
    out: TextIO = sys.stdout
    ssl_context: ssl.SSLContext | None = None
    dtls_context: SSL.Context | None = None
    steps: list[tuple[str, bool, float, str]] = field(default_factory=list)
    realm: str = ""
    mapped: Addr | None = None
    relay: Addr | None = None

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def ok(self, step: str, started: float, detail: str) -> None:
        self._record(step, True, started, detail)

    def fail(self, step: str, started: float, detail: str, diagnosis: str) -> ProbeFailed:
        self._record(step, False, started, detail)
        return ProbeFailed(step, diagnosis)

    def _record(self, step: str, ok: bool, started: float, detail: str) -> None:
        ms = (time.perf_counter() - started) * 1000
        self.steps.append((step, ok, ms, detail))
        self._print(f"  {step:<17} {'ok' if ok else 'FAIL':<4} {ms:8.1f} ms  {detail}")

    @property
    def where(self) -> str:
        t = self.target
        return f"{t.host}:{t.port}/{t.transport}"

    async def run(self) -> bool:
        t = self.target
        self._print(f"probing TURN server {self.where} as user {t.username!r}")
        try:
            await self._run()
        except ProbeFailed as exc:
            self._print(f"FAILED at {exc.step}: {exc.diagnosis}")
            return False
        self._print(
            f"OK: relay {fmt(self.relay)} (mapped {fmt(self.mapped)}) relays to the peer and back"
        )
        return True

    async def _run(self) -> None:
        t = self.target
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        kind = socket.SOCK_DGRAM if t.transport in ("udp", "dtls") else socket.SOCK_STREAM
        try:
            infos = await loop.getaddrinfo(t.host, t.port, type=kind)
        except OSError as exc:
            raise self.fail("resolve", started, str(exc), f"cannot resolve {t.host!r}") from None
        server: Addr = (str(infos[0][4][0]), int(infos[0][4][1]))
        client = TurnClient(
            server,
            t.transport,
            self.timeout,
            self.ssl_context,
            self.dtls_context,
            server_name=t.host,
        )
        started = time.perf_counter()
        try:
            await client.connect()
        except DtlsHandshakeError as exc:
            raise self.fail("handshake", started, str(exc), self._dtls_failed(exc)) from None
        except (TimeoutError, OSError) as exc:
            raise self.fail(
                "connect", started, describe_os_error(exc), self._unreachable(exc)
            ) from None
        if t.transport == "dtls":
            self.ok("handshake", started, self._dtls_done(client))
        elif t.transport != "udp":
            self.ok("connect", started, f"{t.transport.upper()} connection to {fmt(server)}")
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(client.close)
            await self._steps(client, stack)

    async def _steps(self, client: TurnClient, stack: contextlib.AsyncExitStack) -> None:
        t = self.target
        # Binding: is anything answering STUN there?
        started = time.perf_counter()
        resp = await self._ask("binding", started, client.request(stun.METHOD_BINDING, auth=False))
        if resp.cls != stun.CLASS_SUCCESS:
            code, reason = error_code(resp)
            raise self.fail("binding", started, f"{code} {reason}", "the server refused Binding")
        self.mapped = mapped_address(resp)
        self.ok("binding", started, f"mapped address {fmt(self.mapped)}")

        # Allocate without credentials: the 401 that names the realm.
        started = time.perf_counter()
        resp = await self._ask("allocate (401)", started, client.challenge())
        code, reason = error_code(resp)
        if code != 401:
            detail = "success without credentials" if code == 0 else f"{code} {reason}"
            raise self.fail(
                "allocate (401)",
                started,
                detail,
                self._allocate_error(code, reason, resp)
                if code
                else "the server does not ask for credentials: not a STUNner/stunner-dp server?",
            )
        self.realm = text(resp, stun.ATTR_REALM)
        self.ok("allocate (401)", started, f"challenge received, realm {self.realm!r}")

        # Allocate with credentials (a 438 Stale Nonce is retried once with the new nonce).
        started = time.perf_counter()
        client.login(t.username, t.password, self.realm, text(resp, stun.ATTR_NONCE))
        for _ in range(2):
            resp = await self._ask(
                "allocate", started, client.request(stun.METHOD_ALLOCATE, udp_transport())
            )
            if error_code(resp)[0] != 438:
                break
            client.nonce = text(resp, stun.ATTR_NONCE)
        code, reason = error_code(resp)
        if code:
            raise self.fail(
                "allocate", started, f"{code} {reason}", self._allocate_error(code, reason, resp)
            )
        self.relay = relayed_address(resp)
        self.mapped = (
            mapped_address(resp) if resp.has(stun.ATTR_XOR_MAPPED_ADDRESS) else self.mapped
        )
        lifetime = resp.get(stun.ATTR_LIFETIME)
        self.ok(
            "allocate",
            started,
            f"relay address {fmt(self.relay)}, mapped address {fmt(self.mapped)}"
            + (f", lifetime {stun.decode_u32(lifetime)} s" if lifetime else ""),
        )
        stack.push_async_callback(self._release, client)

        # The peer: ours (an echo server) or the one given.
        peer = self.peer
        if peer is None:
            peer = await stack.enter_async_context(echo_peer(self._echo_host(client)))
            self._print(f"  {'peer':<17} {'':<4} {'':>11}  UDP echo peer started on {fmt(peer)}")
        else:
            self._print(f"  {'peer':<17} {'':<4} {'':>11}  {fmt(peer)} (given; it must echo)")

        started = time.perf_counter()
        resp = await self._ask("create permission", started, client.create_permission(peer))
        code, reason = error_code(resp)
        if code:
            raise self.fail(
                "create permission", started, f"{code} {reason}", self._peer_error(code, peer)
            )
        self.ok("create permission", started, f"peer {peer[0]} permitted")

        started = time.perf_counter()
        resp = await self._ask("channel bind", started, client.channel_bind(peer))
        code, reason = error_code(resp)
        if code:
            raise self.fail(
                "channel bind", started, f"{code} {reason}", self._peer_error(code, peer)
            )
        self.ok("channel bind", started, f"channel 0x{CHANNEL:04X} -> {fmt(peer)}")

        started = time.perf_counter()
        if not await self._round_trip(client):
            raise self.fail(
                "round trip",
                started,
                f"no echo within {self.timeout:g} s",
                f"the relay at {fmt(self.relay)} did not bring the peer's answer back: "
                f"either the peer {fmt(peer)} did not echo, or traffic between the server's "
                "relay ports and the peer is blocked (firewall, network policy), or the relay "
                "address is not reachable from the peer",
            )
        self.ok("round trip", started, f"client -> relay {fmt(self.relay)} -> peer -> client")

    async def _ask(
        self, step: str, started: float, request: Awaitable[stun.Message]
    ) -> stun.Message:
        try:
            return await request
        except TurnError as exc:
            raise self.fail(step, started, str(exc), self._transport_error(step, exc)) from None

    async def _round_trip(self, client: TurnClient) -> bool:
        payload = b"stunner-dp probe " + os.urandom(8).hex().encode()
        deadline = time.monotonic() + self.timeout
        wait = RTO
        while (left := deadline - time.monotonic()) > 0:
            client.send_channel_data(payload)
            try:
                while True:
                    _, data = await client.receive_channel_data(min(wait, left))
                    if data == payload:
                        return True
            except TimeoutError:
                wait *= 2
        return False

    async def _release(self, client: TurnClient) -> None:
        """Delete the allocation (Refresh with lifetime 0); best effort."""
        with contextlib.suppress(TurnError, OSError):
            await client.refresh(0)

    def _echo_host(self, client: TurnClient) -> str:
        """Loopback when the server is on this host; else our address towards the server."""
        try:
            if ipaddress.ip_address(client.server[0]).is_loopback:
                return client.server[0]
        except ValueError:
            pass
        return client.local_address[0]

    # -- diagnoses ----------------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return f"connection refused: nothing listens on {self.where}"
        if isinstance(exc, asyncio.TimeoutError):
            return (
                f"no connection to {self.where} within {self.timeout:g} s: host down or firewalled"
            )
        if isinstance(exc, ssl.SSLError):
            return f"TLS handshake failed ({exc}): wrong port, or use --insecure for a test cert"
        return f"cannot reach {self.where}: {exc}"

    def _dtls_done(self, client: TurnClient) -> str:
        dtls = client.dtls
        assert dtls is not None
        conn = dtls.ssl
        checked = "certificate verified" if dtls.verifying else "certificate NOT verified"
        return (
            f"{conn.get_protocol_version_name()} with {fmt(client.server)}, "
            f"{conn.get_cipher_name()}, {checked}"
        )

    def _dtls_failed(self, exc: DtlsHandshakeError) -> str:
        if exc.timed_out:
            why = (
                "ICMP port unreachable came back: nothing listens on that UDP port"
                if exc.refused
                else "no answer: the server is down, the port is not a TURN-DTLS listener "
                "(a TURN-UDP listener ignores DTLS), or a firewall drops the packets"
            )
            return (
                f"DTLS handshake timed out: no handshake with {self.where} within "
                f"{self.timeout:g} s ({why})"
            )
        if exc.verify_error:
            hint = (
                "the server's certificate is not trusted here: use --insecure to skip the "
                "check (test or self-signed certificates)"
            )
        else:
            hint = "the server refused the handshake: is it a TURN-DTLS listener?"
        return f"DTLS handshake failed: {exc}: {hint}"

    def _transport_error(self, step: str, exc: TurnError) -> str:
        if exc.kind == "refused":
            return f"connection refused (ICMP port unreachable): nothing listens on {self.where}"
        if exc.kind == "closed":
            return f"the server closed the connection during {step}"
        if exc.kind == "timeout":
            if step == "binding":
                return (
                    f"no answer from {self.where} within {self.timeout:g} s: the server is not "
                    "running there, or a firewall / load balancer drops the packets "
                    "(for UDP behind a cloud load balancer check its health check and UDP "
                    "support; try transport=tcp)"
                )
            return f"the server answered earlier steps but not {step} within {self.timeout:g} s"
        return str(exc)

    def _allocate_error(self, code: int, reason: str, resp: stun.Message) -> str:
        t = self.target
        if code == 401:
            realm = text(resp, stun.ATTR_REALM) or self.realm
            expiry = ephemeral_expiry(t.username) if ":" in t.username else None
            hint = ""
            if expiry is not None and expiry < time.time():
                hint = f" The username's expiry {expiry} has passed: get fresh credentials."
            return (
                f"authentication failed (401): the server's realm is {realm!r}; the username "
                f"{t.username!r} or its password does not match the server's credentials "
                "(static auth: auth.credentials.username/password; ephemeral auth: "
                "username <expiry>:<user>, password base64(HMAC-SHA1(secret, username)))." + hint
            )
        if code == 438:
            return (
                "stale nonce twice (438): requests reach servers with different nonce secrets "
                "(several servers behind a load balancer without session affinity?)"
            )
        if code == 300:
            alt = resp.get(stun.ATTR_ALTERNATE_SERVER)
            where = fmt(stun.decode_address(alt)) if alt else "another server"
            return f"the server is draining and sends new allocations to {where} (300)"
        if code == 437:
            return "allocation mismatch (437): this client address already has an allocation"
        if code == 486:
            return "allocation quota reached (486): the user has too many allocations"
        if code == 508:
            return "insufficient capacity (508): the server's relay port range is exhausted"
        if code == 442:
            return "unsupported transport protocol (442)"
        return f"the server refused Allocate: {code} {reason}"

    def _peer_error(self, code: int, peer: Addr) -> str:
        if code == 403:
            return (
                f"forbidden (403): no cluster route to the peer {peer[0]}: none of the clusters "
                "the listener routes to has an endpoint covering it (add it to a cluster's "
                "endpoints, and the cluster to the listener's routes)"
            )
        if code == 438:
            return "stale nonce (438) on a later request: the server's nonce secret changed"
        if code == 401:
            return "credentials rejected (401) after a successful Allocate: nonce or realm changed"
        if code == 437:
            return "allocation mismatch (437): the allocation is gone (expired or deleted)"
        return f"the server refused the request: {code}"


def fmt(addr: Addr | None) -> str:
    if not addr:
        return "-"
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def parse_peer(value: str) -> Addr:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stunner-dp probe",
        description="Check a TURN server step by step: Binding, Allocate, CreatePermission, "
        "ChannelBind and a round trip through the relay. Exit code 0 only on success.",
    )
    p.add_argument(
        "uri",
        help="turn://USER:PASS@HOST:PORT?transport=udp|tcp (RFC 7065; turns://...: TLS, or "
        "DTLS with transport=udp)",
    )
    p.add_argument(
        "--peer",
        type=parse_peer,
        metavar="HOST:PORT",
        help="a UDP echo peer to relay to (default: one started by the probe)",
    )
    p.add_argument("--timeout", type=float, default=3.0, metavar="S", help="per step (3 s)")
    p.add_argument("--user", help="username (overrides the URI's)")
    p.add_argument("--password", help="password (overrides the URI's)")
    p.add_argument(
        "--insecure", action="store_true", help="TLS/DTLS: do not verify the certificate"
    )
    return p


def probe_main(argv: list[str] | None = None) -> int:
    args = probe_parser().parse_args(argv)
    try:
        target = parse_turn_uri(args.uri)
    except ValueError as exc:
        print(f"stunner-dp probe: {exc}", file=sys.stderr)
        return 2
    if args.user is not None:
        target = dataclasses.replace(target, username=args.user)
    if args.password is not None:
        target = dataclasses.replace(target, password=args.password)
    context = None
    if target.transport == "tls":
        context = ssl.create_default_context()
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    dtls_context = client_context(verify=not args.insecure) if target.transport == "dtls" else None
    probe = Probe(target, args.timeout, args.peer, sys.stdout, context, dtls_context)
    return 0 if asyncio.run(probe.run()) else 1


if __name__ == "__main__":
    sys.exit(probe_main())
