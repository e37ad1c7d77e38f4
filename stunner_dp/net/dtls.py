"""The TURN-DTLS listener (RFC 7350): TURN over DTLS 1.2 on one UDP port.

One UDP socket serves every client. Each client address that completes a handshake gets a
`DtlsConnection`: a pyOpenSSL `Connection` in server mode over memory BIOs, so the socket, the
timers and the datagram boundaries stay ours. Its application data are whole STUN messages and
ChannelData frames, one per record, handed to the state machine as from a UDP listener, with the
connection as the link the answers and the relayed media go back through (encrypted per datagram).

Defences, in the order a datagram from a new address meets them:

- Only a DTLS handshake record carrying a ClientHello (epoch 0) is looked at; anything else from
  an unknown address is dropped without touching OpenSSL.
- A stateless cookie exchange (`DTLSv1_listen`, RFC 6347 4.2.1): the first ClientHello gets a
  HelloVerifyRequest with a cookie, an HMAC of the client's address and a time bucket under a
  per-listener secret; no state is kept until a ClientHello comes back with a valid cookie, so a
  flood from spoofed sources costs one HMAC and one small answer (smaller than the request) per
  datagram and holds no memory.
- A cap on handshakes in progress (listener-wide, and per source IP); past it, verified
  ClientHellos are dropped and the client retransmits later.
- A handshake must finish within `handshake_timeout`; its retransmissions are driven by
  OpenSSL's own timer (`DTLSv1_get_timeout` / `DTLSv1_handle_timeout`) on a loop timer.
- Associations (established or not) are capped per source IP (`admin.max_connections_per_ip`)
  and in total (`admin.max_connections`), as TCP/TLS connections are; past a cap a verified
  ClientHello is dropped.
- An established association with no allocation and no datagram for
  `admin.connection_idle_timeout` is closed (the end of its allocation starts that time).

Lifetime of an allocation made over DTLS: it ends with its association (close_notify, a fatal
alert, a new handshake from the same address, idle expiry once the allocation has expired), as
for TCP and TLS. RFC 8656 ties an allocation to its 5-tuple and ends stream allocations with
their connection; DTLS is a datagram transport, but without its association the server can
no longer send to the client (no keys), and a new handshake from the same address is a new
session that must not inherit the old one's relay. While the association lives, the allocation
lives and expires by its own lifetime, as over UDP.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import hmac
import os
import socket
import time
from collections.abc import Callable

from OpenSSL import SSL

from stunner_dp.config import ListenerConfig
from stunner_dp.dtls_records import DTLS1_2_VERSION, MTU, RECORD_HEADER, pack_datagrams
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr, Context

from .certs import pem_files
from .counters import ListenerCounters
from .listener import dispatch_stun, send_outputs
from .relay import READ_BATCH, RECV_SIZE

HANDSHAKE_TIMEOUT = 10.0  # seconds for a handshake, from the verified ClientHello to Finished
MAX_HANDSHAKES = 1024  # handshakes in progress on one listener
MAX_HANDSHAKES_PER_IP = 32  # ... from one source IP
COOKIE_PERIOD = 60  # seconds; a cookie is valid in its period and the next one
SWEEP = 1.0  # seconds between idle and deadline checks

CONTENT_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
# Largest expansion of one record: header, explicit IV, MAC and CBC padding (AEAD is smaller).
RECORD_OVERHEAD = 512


def dtls_context(listener: ListenerConfig) -> SSL.Context:
    """A DTLS 1.2 server context from the listener's base64 PEM cert (chain) and key. Raises
    OSError when they cannot be used (as `ssl` does for the TLS listener)."""
    try:
        return _dtls_context(listener)
    except (SSL.Error, binascii.Error, ValueError) as exc:
        raise OSError(f"cert/key not usable for DTLS: {exc}") from exc


def _dtls_context(listener: ListenerConfig) -> SSL.Context:
    context = SSL.Context(SSL.DTLS_SERVER_METHOD)
    context.set_min_proto_version(DTLS1_2_VERSION)
    # We set the MTU; renegotiation would be a second handshake inside the association.
    context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
    with pem_files(listener) as (cert, key):
        context.use_certificate_chain_file(str(cert))
        context.use_privatekey_file(str(key))
    context.check_privatekey()
    return context


def is_client_hello(data: bytes) -> bool:
    """A DTLS handshake record of epoch 0 whose message is a ClientHello."""
    return (
        len(data) > RECORD_HEADER
        and data[0] == CONTENT_HANDSHAKE
        and data[1] == 0xFE  # DTLS versions are 0xFEXX
        and data[3] == 0
        and data[4] == 0
        and data[RECORD_HEADER] == HANDSHAKE_CLIENT_HELLO
    )


def hello_random(data: bytes) -> bytes:
    """The client random of a ClientHello record (after the handshake header and version)."""
    start = RECORD_HEADER + 12 + 2
    return data[start : start + 32]


class DtlsListener:
    """One TURN-DTLS listener socket and its associations, by client address."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        sock: socket.socket,
        server: TurnServer,
        on_events: Callable[[], None],
        now: Callable[[], float],
        counters: ListenerCounters,
        context: SSL.Context,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float | None = None,
        max_handshakes: int = MAX_HANDSHAKES,
        max_handshakes_per_ip: int = MAX_HANDSHAKES_PER_IP,
        mtu: int = MTU,
    ) -> None:
        self.name = name
        self.transport = "dtls"
        self.server = server
        self.on_events = on_events
        self.now = now
        self.counters = counters
        self.loop = loop
        self.sock = sock
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout  # None: admin.connection_idle_timeout (0: never)
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_ip = max_handshakes_per_ip
        self.mtu = mtu
        self.connections: dict[Addr, DtlsConnection] = {}
        self.connections_total = 0  # handshakes completed
        self.handshaking: dict[str, int] = {}  # handshakes in progress by source IP
        self.per_ip: dict[str, int] = {}  # associations (any state) by source IP
        self.handshakes = 0
        # what the defences turned away, for tests and /status
        self.cookies_sent = 0
        self.handshakes_refused = 0  # verified ClientHellos past a handshake cap
        self.associations_refused = 0  # ... past max_connections or max_connections_per_ip
        self.handshakes_failed = 0  # fatal alerts and timeouts during a handshake
        self._cookie_secret = os.urandom(32)
        context.set_cookie_generate_callback(self._make_cookie)
        context.set_cookie_verify_callback(self._check_cookie)
        self._context = context
        self._listen: SSL.Connection | None = None
        self._table = server.allocations.setdefault(name, {})
        self._closed = False
        loop.add_reader(sock.fileno(), self._on_readable)
        self._sweeper = loop.call_later(SWEEP, self._sweep)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def connections_open(self) -> int:
        return len(self.connections)  # handshakes in progress too

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sweeper.cancel()
        for conn in list(self.connections.values()):
            conn.close("listener stopped")
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    # -- cookies --------------------------------------------------------------------------------

    def _cookie(self, client: Addr, period: int) -> bytes:
        text = f"{client[0]}|{client[1]}|{period}".encode()
        return hmac.new(self._cookie_secret, text, hashlib.sha256).digest()[:16]

    def _make_cookie(self, conn: SSL.Connection) -> bytes:
        self.cookies_sent += 1
        return self._cookie(conn.get_app_data(), int(time.monotonic()) // COOKIE_PERIOD)

    def _check_cookie(self, conn: SSL.Connection, cookie: bytes) -> bool:
        client = conn.get_app_data()
        period = int(time.monotonic()) // COOKIE_PERIOD
        return any(
            hmac.compare_digest(cookie, self._cookie(client, p)) for p in (period, period - 1)
        )

    # -- datagrams ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        recvfrom = self.sock.recvfrom
        connections = self.connections
        for _ in range(READ_BATCH):
            try:
                data, addr = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            client = (addr[0], addr[1])
            conn = connections.get(client)
            if conn is None:
                if is_client_hello(data):
                    self._hello(data, client)
                else:
                    self.counters.dropped += 1
            elif conn.established and is_client_hello(data):
                # a client that restarted its association (RFC 6347 4.2.8); a stray copy of
                # the hello that opened this one (same random) is only dropped
                if hello_random(data) != conn.hello_random:
                    self._hello(data, client)
                else:
                    self.counters.dropped += 1
            else:
                conn.datagram(data)

    def _hello(self, data: bytes, client: Addr) -> None:
        """A ClientHello from an address without a handshake in progress: answer it with a
        cookie, statelessly, unless it carries a valid one; then start a handshake."""
        conn = self._listen
        if conn is None:
            conn = self._listen = SSL.Connection(self._context, None)
            conn.set_accept_state()
        conn.set_app_data(client)
        try:
            conn.bio_write(data)
            conn.DTLSv1_listen()
        except SSL.WantReadError:
            self.send_raw(_drain(conn), client)  # the HelloVerifyRequest (nothing for junk)
            return
        except SSL.Error:
            self._listen = None  # not fit for reuse
            self.counters.dropped += 1
            return
        self._listen = None  # this one now belongs to the client
        ip = client[0]
        if (
            self.handshakes >= self.max_handshakes
            or self.handshaking.get(ip, 0) >= self.max_handshakes_per_ip
        ):
            self.handshakes_refused += 1
            self.counters.dropped += 1
            return
        old = self.connections.get(client)
        if old is None and not self._admits(ip):
            self.associations_refused += 1
            self.counters.dropped += 1
            return
        if old is not None:
            old.close("connection closed")
        new = DtlsConnection(self, conn, client, hello_random(data))
        self.connections[client] = new
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.handshakes += 1
        self.handshaking[ip] = self.handshaking.get(ip, 0) + 1
        new.handshake()

    def _admits(self, ip: str) -> bool:
        """Room for one more association from `ip` under the admin caps (read live)."""
        admin = self.server.config.admin
        if admin.max_connections and len(self.connections) >= admin.max_connections:
            return False
        per_ip = admin.max_connections_per_ip
        return not per_ip or self.per_ip.get(ip, 0) < per_ip

    def send_raw(self, data: bytes, client: Addr) -> None:
        for datagram in pack_datagrams(data, self.mtu):
            try:
                self.sock.sendto(datagram, client)
            except OSError:
                self.counters.dropped += 1

    def handshake_ended(self, conn: DtlsConnection) -> None:
        """Book-keeping when a connection leaves the handshake (done, failed or closed)."""
        self.handshakes -= 1
        ip = conn.client[0]
        left = self.handshaking.get(ip, 1) - 1
        if left > 0:
            self.handshaking[ip] = left
        else:
            self.handshaking.pop(ip, None)

    def forget(self, conn: DtlsConnection, established: bool, reason: str) -> None:
        if self.connections.get(conn.client) is conn:
            del self.connections[conn.client]
            ip = conn.client[0]
            left = self.per_ip.get(ip, 1) - 1
            if left > 0:
                self.per_ip[ip] = left
            else:
                self.per_ip.pop(ip, None)
            if established:
                self.server.remove_client(self.name, conn.client, reason)
                self.on_events()

    def dispatch(self, conn: DtlsConnection, data: bytes) -> None:
        """One decrypted message: ChannelData or STUN, as a UDP listener would take it."""
        counters = self.counters
        if len(data) >= 4 and 0x40 <= data[0] <= 0x7F:  # ChannelData raises no events
            outputs = self.server.handle_channel_data(conn.ctx, data)
            if not outputs:
                counters.dropped += 1
            send_outputs(outputs, conn, counters)
        else:
            dispatch_stun(self.server, conn.ctx, data, self.now(), counters, self.on_events)

    def _sweep(self) -> None:
        """Handshakes past their deadline, idle associations without an allocation."""
        if self._closed:
            return
        now = time.monotonic()
        idle = self.idle_timeout
        if idle is None:
            idle = self.server.config.admin.connection_idle_timeout
        for conn in list(self.connections.values()):
            if not conn.established:
                if now - conn.started > self.handshake_timeout:
                    self.handshakes_failed += 1
                    conn.close("handshake timed out")
            elif conn.client in self._table:
                conn.last_rx = now  # its idle time starts when the allocation ends
            elif idle and now - conn.last_rx > idle:
                conn.close("idle")
        self._sweeper = self.loop.call_later(SWEEP, self._sweep)


def _drain(conn: SSL.Connection) -> bytes:
    """Everything OpenSSL has written to the connection's outgoing memory BIO."""
    chunks = []
    while True:
        try:
            chunks.append(conn.bio_read(RECV_SIZE))
        except SSL.WantReadError:
            return b"".join(chunks)


class DtlsConnection:
    """One client's DTLS association; the `Sink` its answers and relayed media go through."""

    __slots__ = (
        "_timer",
        "client",
        "closed",
        "ctx",
        "established",
        "hello_random",
        "last_rx",
        "listener",
        "sendmsg",
        "sendto",
        "ssl",
        "started",
    )

    def __init__(
        self, listener: DtlsListener, conn: SSL.Connection, client: Addr, random: bytes
    ) -> None:
        self.listener = listener
        self.hello_random = random
        self.ssl = conn
        self.client = client
        self.established = False
        self.closed = False
        self.started = self.last_rx = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.sendto: Callable[[bytes | memoryview, Addr], object] = self._send
        self.sendmsg: Callable[..., int] | None = None  # one record per datagram: no batching
        self.ctx = Context(listener.name, "dtls", client, self)
        conn.set_ciphertext_mtu(listener.mtu)

    def datagram(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.ssl.bio_write(data)
        if self.established:
            self._read()
        else:
            self.handshake()  # reads what follows the handshake once it is done

    def handshake(self) -> None:
        conn = self.ssl
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            self._flush()
            self._arm_timer()
            return
        except SSL.Error:
            self._flush()  # the alert, if OpenSSL wrote one
            self.listener.handshakes_failed += 1
            self.close("handshake failed")
            return
        self._flush()
        self.established = True
        self._cancel_timer()
        self.listener.handshake_ended(self)
        self.listener.connections_total += 1
        self._read()  # application data that came with the last flight

    def _read(self) -> None:
        conn = self.ssl
        dispatch = self.listener.dispatch
        for _ in range(READ_BATCH):
            try:
                data = conn.recv(RECV_SIZE)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                self.close("connection closed")
                return
            except SSL.Error:
                self.close("connection closed")
                return
            dispatch(self, data)
            if self.closed:
                return
        self._flush()  # e.g. our last flight again, when the client repeated its Finished

    def _send(self, data: bytes | memoryview, addr: Addr) -> None:
        if self.closed:
            return
        conn = self.ssl
        try:
            conn.send(data)
            record = conn.bio_read(len(data) + RECORD_OVERHEAD)
        except SSL.Error:
            self.listener.counters.dropped += 1
            return
        self.listener.sock.sendto(record, self.client)

    def _flush(self) -> None:
        out = _drain(self.ssl)
        if out:
            self.listener.send_raw(out, self.client)

    def _arm_timer(self) -> None:
        self._cancel_timer()
        delay = self.ssl.DTLSv1_get_timeout()
        if delay is not None:
            self._timer = self.listener.loop.call_later(max(delay, 0.001), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed or self.established:
            return
        if time.monotonic() - self.started > self.listener.handshake_timeout:
            self.listener.handshakes_failed += 1
            self.close("handshake timed out")
            return
        try:
            self.ssl.DTLSv1_handle_timeout()
        except SSL.Error:
            self.close("handshake failed")
            return
        self._flush()  # the retransmitted flight
        self._arm_timer()

    def close(self, reason: str) -> None:
        """End the association: a close_notify to the client when it was established, the
        allocation made over it deleted."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        established = self.established
        if established:
            with contextlib.suppress(SSL.Error):
                self.ssl.shutdown()
                self._flush()
        else:
            self.listener.handshake_ended(self)
        self.listener.forget(self, established, reason)
