"""RFC 6062 TCP relays: a listening socket per TCP allocation, and its peer connections.

The state machine (`TurnServer`: Connect, ConnectionBind, ConnectionAttempt, timeouts, peer
rules) decides; this module only moves bytes and reports what the sockets did:

- `TcpRelay` (a `turn.types.TcpRelayHandle`) listens in the listener's relay port range and
  opens the Connect's outgoing connections from the relayed transport address itself (RFC 6062
  5.2: "the local endpoint is the relayed transport address"). Linux lets a connecting socket
  bind a listening socket's port only when both set SO_REUSEPORT, and SO_REUSEPORT would also
  let another `-u N` worker (same user) listen on the port beside us and take half its peers.
  So each TCP relay first claims its port in a lock no other process can share: an abstract
  Unix socket named after the family and port (`_PortClaim`; per network namespace, as TCP
  ports are), released when the relay closes. A worker whose claim fails tries another port,
  as it does when a bind fails. A connection to a peer that still holds the last one from that
  address in TIME_WAIT leaves from a kernel-chosen port instead of failing;
- `PeerConnection` (a `turn.types.PeerStream`) is one TCP connection to a peer. It reads
  nothing until ConnectionBind (what the peer sends first waits in the kernel), then copies
  bytes raw between the peer and the client's data connection (a `StreamConnection` switched to
  raw mode), each side pausing the other when its write buffer fills.

Peer connections count in the stream listeners' `ConnectionGate` total (`admin.max_connections`
and the descriptor budget), as the data connections do by being accepted there.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
from collections.abc import Callable, Mapping
from typing import cast

from stunner_dp.config import ListenerConfig
from stunner_dp.observe.logs import get_logger
from stunner_dp.stun import FAMILY_IPV6
from stunner_dp.turn.allocation import Allocation, Channel, Traffic
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr, Output, Sink

from .counters import ListenerCounters
from .relay import RelayPool
from .tcp import StreamConnection, gate_for

log = get_logger("net")

ACCEPT_BATCH = 16  # connections accepted per wake-up
BACKLOG = 16
CONNECT_TIMEOUT = 30.0  # RFC 6062 5.2: then 447
# seconds an unbound peer connection waits for its ConnectionBind (RFC 6062 5.3: 30); a
# stunner-dp extension for tests, which cannot wait 30 s per case
BIND_TIMEOUT_ENV = "STUNNER_DP_TCP_BIND_TIMEOUT"


def bind_timeout_from_env(default: float, environ: Mapping[str, str] | None = None) -> float:
    """$STUNNER_DP_TCP_BIND_TIMEOUT seconds when it is a positive number, else `default`."""
    text = (os.environ if environ is None else environ).get(BIND_TIMEOUT_ENV, "")
    try:
        value = float(text) if text else default
    except ValueError:
        log.warning(f"{BIND_TIMEOUT_ENV} is not a number, using the default", value=text)
        return default
    return value if value > 0 else default


def _drop(data: bytes | memoryview, addr: Addr) -> None:
    """A TCP relay sends no datagrams (Send indications and channels are refused)."""


class TcpRelayPool:
    """Opens TCP relays for Allocates with REQUESTED-TRANSPORT TCP (a `TcpRelayFactory`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        server: TurnServer,
        relays: RelayPool,
        on_events: Callable[[], None],
        now: Callable[[], float],
    ) -> None:
        self.loop = loop
        self.server = server
        self.relays = relays  # for the advertised relay address and the listener counters
        self.on_events = on_events
        self.now = now
        self.held: set[tuple[int, str, int]] = set()  # (family, bind ip, port) listening here
        self.peers: set[PeerConnection] = set()  # every live peer connection (tests, stop)
        self.exhausted = 0
        server.tcp.bind_timeout = bind_timeout_from_env(server.tcp.bind_timeout)

    def open_tcp(self, listener: ListenerConfig, family: int) -> TcpRelay | None:
        af = socket.AF_INET6 if family == FAMILY_IPV6 else socket.AF_INET
        advertised = self.relays.advertised_ip(listener, family)
        bind_ip = _bind_ip(listener, af)
        low, high = listener.min_relay_port, listener.max_relay_port
        count = high - low + 1
        start = random.randrange(max(count, 1))
        for i in range(max(count, 0)):
            port = low + (start + i) % count
            if (af, bind_ip, port) in self.held:
                continue
            try:
                opened = _listen(af, bind_ip, port)
            except OSError as exc:
                log.error("TCP relay could not listen", listener=listener.name, error=str(exc))
                break
            if opened is not None:
                sock, claim = opened
                return TcpRelay(self, sock, (advertised, port), (af, bind_ip, port), claim)
        self.exhausted += 1
        return None

    def send(self, outputs: list[Output], listener: str) -> None:
        """Send what the state machine returned from a callback, then hand on its events."""
        counters = self.relays.counters.get(listener)
        for sink, addr, payload in outputs:
            if counters is not None:
                counters.tx_packets += 1
                counters.tx_bytes += len(payload)
            try:
                sink.sendto(payload, addr)
            except OSError:
                if counters is not None:
                    counters.dropped += 1
        self.on_events()


def _bind_ip(listener: ListenerConfig, af: int) -> str:
    """The listener's address when it is one of ours, else the wildcard (as UDP relays do)."""
    wildcard = "::" if af == socket.AF_INET6 else "0.0.0.0"
    ip = listener.address or wildcard
    try:
        with socket.socket(af, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
    except (OSError, ValueError):
        ip = wildcard
    return ip


_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
CLAIM_PREFIX = "stunner-dp/tcp-relay"  # the abstract Unix socket names of `_PortClaim`


class _PortClaim:
    """This process's exclusive hold on a TCP relay port (of one family): an abstract Unix
    socket bound to a name made of both, which no other socket can bind while it lives (and
    which the kernel frees when its holder dies, however it dies)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def take(cls, af: int, port: int) -> _PortClaim | None:
        """The claim, or None when another worker holds it or descriptors ran out."""
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            if exc.errno in _OUT_OF_DESCRIPTORS:
                return None
            raise
        try:
            sock.bind(f"\0{CLAIM_PREFIX}/{int(af)}/{port}")
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                return None
            raise
        return cls(sock)

    def release(self) -> None:
        self.sock.close()


def _reusable(sock: socket.socket) -> None:
    # SO_REUSEADDR: a port whose last connection sits in TIME_WAIT may listen again;
    # SO_REUSEPORT: the listening socket and the outgoing ones share the relay port (the
    # claim keeps every other worker off it)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def _listen(af: int, ip: str, port: int) -> tuple[socket.socket, _PortClaim] | None:
    """A listening socket on (ip, port) and its claim; None when the port is taken (here or by
    another worker) or descriptors ran out."""
    claim = _PortClaim.take(af, port)
    if claim is None:
        return None
    try:
        sock = socket.socket(af, socket.SOCK_STREAM)
    except OSError as exc:
        claim.release()
        if exc.errno in _OUT_OF_DESCRIPTORS:
            return None
        raise
    try:
        _reusable(sock)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
        return sock, claim
    except OSError as exc:
        sock.close()
        claim.release()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EMFILE, errno.ENFILE):
            return None
        raise


class TcpRelay:
    """One TCP relay transport address (implements turn.types.TcpRelayHandle)."""

    def __init__(
        self,
        pool: TcpRelayPool,
        sock: socket.socket,
        advertised: Addr,
        key: tuple[int, str, int],
        claim: _PortClaim,
    ) -> None:
        self.pool = pool
        self.sock = sock
        self.claim = claim
        self.address = advertised
        self.key = key
        pool.held.add(key)
        self.allocation: Allocation | None = None
        self.sendto: Callable[[bytes | memoryview, Addr], object] = _drop
        self.sendmsg: Callable[..., int] | None = None
        self.peers: set[PeerConnection] = set()
        self._accepting = False
        self.closed = False

    def attach(self, allocation: Allocation | None) -> None:
        self.allocation = allocation
        if allocation is not None and not self._accepting and not self.closed:
            self.pool.loop.add_reader(self.sock.fileno(), self._accept)
            self._accepting = True

    def channel_bound(self, allocation: Allocation, channel: Channel) -> None:
        """No channels on a TCP relay (ChannelBind is refused)."""

    def channel_unbound(self, channel: Channel) -> None:
        """No channels on a TCP relay."""

    def set_dont_fragment(self) -> bool:
        return False  # refused before a TCP relay opens (RFC 6062 5.1)

    def connect(self, peer: Addr, connection_id: int) -> PeerConnection:
        conn = PeerConnection(self, connection_id, peer, outgoing=True)
        conn.start_connect()
        return conn

    def _accept(self) -> None:
        alloc = self.allocation
        pool = self.pool
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, or the connection reset meanwhile
                return
            peer: Addr = (str(addr[0]), int(addr[1]))
            gate = gate_for(pool.server)
            if alloc is None or not gate.admit_total(pool.server.config.admin):
                sock.close()
                continue
            conn = PeerConnection(self, 0, peer, outgoing=False)
            conn.admitted = True
            verdict = pool.server.tcp.accepted(alloc, peer, conn, pool.now())
            if verdict is None:  # no permission, over the cap, or the allocation is gone
                conn.admitted = False
                gate.release_total()
                sock.close()
                continue
            conn.connection_id, outputs = verdict
            conn.adopt(sock)
            pool.send(outputs, alloc.listener)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._accepting:
            self.pool.loop.remove_reader(self.sock.fileno())
            self._accepting = False
        self.allocation = None
        self.sock.close()
        self.claim.release()
        self.pool.held.discard(self.key)
        for conn in list(self.peers):
            conn.close()


def _connecting_socket(af: int, local: Addr) -> socket.socket:
    """A non-blocking TCP socket bound to `local` (port 0: the kernel's choice)."""
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if local[1]:
            _reusable(sock)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(local)
    except OSError:
        sock.close()
        raise
    return sock


class PeerConnection(asyncio.Protocol):
    """One TCP connection to a peer (implements turn.types.PeerStream)."""

    def __init__(self, relay: TcpRelay, connection_id: int, peer: Addr, *, outgoing: bool) -> None:
        self.relay = relay
        self.pool = relay.pool
        self.connection_id = connection_id
        self.peer = peer
        self.outgoing = outgoing
        self.listener = relay.allocation.listener if relay.allocation is not None else ""
        self.transport: asyncio.Transport | None = None
        self.data: StreamConnection | None = None  # the client's data connection, once bound
        self.admitted = False  # counted in the gate
        self.closed = False
        self.task: asyncio.Future[None] | None = None  # held: a task may not be collected
        # once bound: the state machine's counts of this connection (the cluster's figures,
        # the allocation's totals) and the listener's wire counters (its data connection's)
        self.traffic = Traffic("")
        self.counters = ListenerCounters()
        relay.peers.add(self)
        self.pool.peers.add(self)

    # -- opening ------------------------------------------------------------------------------

    def start_connect(self) -> None:
        pool = self.pool
        gate = gate_for(pool.server)
        if not gate.admit_total(pool.server.config.admin):
            pool.loop.call_soon(self._failed)  # not now: the Connect is still being handled
            return
        self.admitted = True
        self.task = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        af, bind_ip, port = self.relay.key
        loop = self.pool.loop
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                try:  # from the relayed transport address (RFC 6062 5.2)
                    sock = _connecting_socket(af, (bind_ip, port))
                    await loop.sock_connect(sock, self.peer)
                except OSError as exc:
                    # that address's last connection to this peer lingers in TIME_WAIT (or
                    # the port cannot be shared): a kernel-chosen port rather than a 447
                    if exc.errno not in (errno.EADDRNOTAVAIL, errno.EADDRINUSE):
                        raise
                    if sock is not None:
                        sock.close()
                    sock = _connecting_socket(af, (bind_ip, 0))
                    await loop.sock_connect(sock, self.peer)
            if self.closed:
                raise ConnectionAbortedError
            await loop.create_connection(lambda: self, sock=sock)
        except (OSError, TimeoutError, asyncio.CancelledError):
            if sock is not None:
                sock.close()
            self._failed()

    def adopt(self, sock: socket.socket) -> None:
        """An accepted connection: under a transport, read nothing until bound."""

        async def wrap() -> None:
            try:
                await self.pool.loop.connect_accepted_socket(lambda: self, sock)
            except OSError:
                sock.close()
                self._failed()

        self.task = asyncio.ensure_future(wrap())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.closed:
            self.transport.abort()
            return
        if self.data is None:
            self.transport.pause_reading()  # until ConnectionBind
        if self.outgoing:
            server = self.pool.server
            self.pool.send(server.tcp.connected(self.connection_id, self.pool.now()), self.listener)

    # -- PeerStream ---------------------------------------------------------------------------

    def bind(self, data_link: Sink) -> None:
        data = cast(StreamConnection, data_link)
        self.data = data
        data.raw_link = self
        record = self.pool.server.tcp.connections.get(self.connection_id)
        if record is not None:
            self.traffic = record.traffic
        self.counters = self.pool.relays.counters.get(self.listener) or self.counters
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        """Closed by the state machine (allocation gone, unbound too long, rules changed)."""
        if self.closed:
            return
        self.closed = True
        self._release()
        if self.transport is not None:
            self.transport.abort()
        elif self.task is not None:
            self.task.cancel()
        data, self.data = self.data, None
        if data is not None:
            data.raw_link = None
            data.abort()

    # -- bytes both ways ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        link = self.data
        stream = link.stream if link is not None else None
        if stream is None or stream.is_closing():
            return
        stream.write(data)
        size = len(data)  # a read is one "packet": TCP has no datagrams
        self.traffic.in_packets += 1
        self.traffic.in_bytes += size
        self.counters.tx_packets += 1
        self.counters.tx_bytes += size

    def from_client(self, data: bytes) -> None:
        """Bytes of the bound data connection: to the peer as they are."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            size = len(data)
            self.traffic.out_packets += 1
            self.traffic.out_bytes += size
            self.counters.rx_packets += 1
            self.counters.rx_bytes += size

    def pause_writing(self) -> None:  # the peer reads slowly: stop reading the client
        link = self.data
        if link is not None and link.stream is not None:
            link.stream.pause_reading()

    def resume_writing(self) -> None:
        link = self.data
        if link is not None and link.stream is not None:
            link.stream.resume_reading()

    def client_paused(self) -> None:  # the client reads slowly: stop reading the peer
        if self.transport is not None:
            self.transport.pause_reading()

    def client_resumed(self) -> None:
        if self.transport is not None and self.data is not None:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # the peer is done: close (TCP half-close is not relayed)

    # -- ending -------------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()

    def client_gone(self) -> None:
        """The data connection closed: so does the peer connection."""
        self.data = None
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows
        else:
            self._ended()

    def _failed(self) -> None:
        self._ended()

    def _ended(self) -> None:
        """Closed from outside (peer, network, data connection): the state machine is told."""
        if self.closed:
            self._release()
            return
        self.closed = True
        self._release()
        data, self.data = self.data, None
        if data is not None:
            data.raw_link = None
            data.abort()
        self.pool.send(self.pool.server.tcp.closed(self.connection_id), self.listener)

    def _release(self) -> None:
        if self.admitted:
            self.admitted = False
            gate_for(self.pool.server).release_total()
        self.relay.peers.discard(self)
        self.pool.peers.discard(self)
