"""TCP and TLS listeners: RFC 8656 stream framing, STUN and ChannelData interleaved.

An allocation made over a stream lives as long as its connection (RFC 8656 3.1).

Every connection holds a descriptor, so a client that connects and stays silent costs the
server one of the descriptors its relays and health checks need. Defences, as a connection
meets them:

- At accept (before any TLS handshake), a `ConnectionGate` shared by the server's stream
  listeners counts connections per source IP (`admin.max_connections_per_ip`) and in total
  (`admin.max_connections`, and never more than half the descriptors left after FD_RESERVE at
  start); past a cap the connection is closed at once.
- TLS is started by the connection itself after that check (`loop.start_tls`), so a silent
  TLS client is counted and closed like a TCP one.
- A connection without an allocation whose last STUN message (or its accept, or the end of its
  allocation) is `admin.connection_idle_timeout` seconds old is closed by a sweep once a second.
  The sweep reads a timestamp the slow path writes: ChannelData costs nothing more.

Behind a load balancer that SNATs, a listener with `proxy_protocol: true` takes the client's
address from a PROXY protocol header (v1 or v2, `net/proxy_protocol.py`), read before TLS: a
connection from outside `proxy_protocol_trusted`, or whose header is malformed, missing or not
whole within PROXY_HEADER_TIMEOUT, is closed and counted. The per-IP cap counts the LB's
address until the header names the client, then the client's.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import weakref
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Protocol, cast

from stunner_dp import stun
from stunner_dp.config import AdminConfig
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr, Context

from .counters import ListenerCounters
from .fds import FD_RESERVE, fd_soft_limit, open_fds
from .listener import dispatch_stun, send_outputs
from .proxy_protocol import ProxyHeaderError, parse_header

MAX_FRAME = 65536 + 4
WRITE_BUFFER_LIMIT = 1 << 20  # past this a slow client loses media, not the server's memory
SWEEP = 1.0  # seconds between idle checks
TLS_HANDSHAKE_TIMEOUT = 10.0  # a backstop: the idle sweep closes a silent handshake sooner
FD_SHARE = 2  # stream connections get at most 1/FD_SHARE of the descriptors free at start
PROXY_HEADER_TIMEOUT = 5.0  # seconds a PROXY-protocol connection has to send its header


@functools.lru_cache(maxsize=64)
def trusted_networks(ranges: tuple[str, ...]) -> tuple[IPv4Network | IPv6Network, ...]:
    """listeners[].proxy_protocol_trusted as networks (validated by the config parser)."""
    return tuple(ip_network(text, strict=False) for text in ranges)


def is_trusted(ip: str, networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    """Whether a connection from `ip` may carry a PROXY header (IPv4-mapped folded)."""
    try:
        addr: IPv4Address | IPv6Address = ip_address(ip.partition("%")[0])
    except ValueError:
        return False
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def stream_fd_budget() -> int | None:
    """How many stream connections the open-file limit leaves room for, with the other half
    of what is free (after FD_RESERVE) kept for relay sockets. None when unlimited."""
    soft = fd_soft_limit()
    if soft is None:
        return None
    return max(1, (soft - open_fds() - FD_RESERVE) // FD_SHARE)


def _feed(raw: asyncio.Transport, data: bytes) -> None:
    """Give bytes read from `raw` to the protocol now under it (a BufferedProtocol: the TLS
    protocol of start_tls, in asyncio and in uvloop), as if it had read them itself."""
    # uvloop's TLS protocol has the BufferedProtocol methods without deriving from the class
    protocol = cast(asyncio.BufferedProtocol, raw.get_protocol())
    if raw.is_closing() or not hasattr(protocol, "buffer_updated"):
        return
    view = memoryview(data)
    while view:
        buf = memoryview(protocol.get_buffer(len(view))).cast("B")
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


class ConnectionGate:
    """The TCP/TLS connections of one server, all its stream listeners together: counted per
    source IP and in total, against the admin caps and the descriptor budget."""

    def __init__(self, fd_budget: int | None) -> None:
        self.fd_budget = fd_budget
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self.refused_total = 0  # turned away by max_connections or the descriptor budget
        self.refused_per_ip = 0  # turned away by max_connections_per_ip

    def total_cap(self, admin: AdminConfig) -> int | None:
        caps = [c for c in (admin.max_connections, self.fd_budget) if c]
        return min(caps) if caps else None

    def admit(self, ip: str, admin: AdminConfig) -> bool:
        cap = self.total_cap(admin)
        if cap is not None and self.total >= cap:
            self.refused_total += 1
            return False
        held = self.per_ip.get(ip, 0)
        if admin.max_connections_per_ip and held >= admin.max_connections_per_ip:
            self.refused_per_ip += 1
            return False
        self.total += 1
        self.per_ip[ip] = held + 1
        return True

    def admit_total(self, admin: AdminConfig) -> bool:
        """A TCP relay's peer connection (RFC 6062): counted in the total only, as its peer
        is not a client (many allocations may reach one peer IP)."""
        cap = self.total_cap(admin)
        if cap is not None and self.total >= cap:
            self.refused_total += 1
            return False
        self.total += 1
        return True

    def release_total(self) -> None:
        self.total -= 1

    def release(self, ip: str) -> None:
        self.total -= 1
        held = self.per_ip.get(ip, 1) - 1
        if held > 0:
            self.per_ip[ip] = held
        else:
            self.per_ip.pop(ip, None)


_GATES: weakref.WeakKeyDictionary[TurnServer, ConnectionGate] = weakref.WeakKeyDictionary()


def gate_for(server: TurnServer) -> ConnectionGate:
    """The gate every stream listener of `server` shares (made with the first of them)."""
    gate = _GATES.get(server)
    if gate is None:
        gate = _GATES[server] = ConnectionGate(stream_fd_budget())
    return gate


class RawLink(Protocol):
    """The peer connection a bound RFC 6062 data connection carries (net/tcp_relay.py)."""

    def from_client(self, data: bytes) -> None: ...

    def client_gone(self) -> None: ...

    def client_paused(self) -> None: ...

    def client_resumed(self) -> None: ...


class StreamListener:
    """Shared state of one TCP/TLS listener; each connection is a `StreamConnection`."""

    def __init__(
        self,
        name: str,
        transport: str,
        server: TurnServer,
        on_events: Callable[[], None],
        now: Callable[[], float],
        counters: ListenerCounters,
    ) -> None:
        self.name = name
        self.transport = transport
        self.server = server
        self.on_events = on_events
        self.now = now
        self.connections: set[StreamConnection] = set()
        self.connections_total = 0
        self.counters = counters
        self.asyncio_server: asyncio.Server | None = None
        self.tls: ssl.SSLContext | None = None  # TURN-TLS: each connection starts TLS itself
        self.gate = gate_for(server)
        self.refused = 0  # connections closed at accept by a cap
        self.idle_closed = 0  # connections closed by the idle sweep
        self.closed = False
        self._sweeper: asyncio.TimerHandle | None = None
        server.allocations.setdefault(name, {})

    @property
    def port(self) -> int:
        assert self.asyncio_server is not None
        return int(self.asyncio_server.sockets[0].getsockname()[1])

    @property
    def connections_open(self) -> int:
        return len(self.connections)

    def protocol(self) -> StreamConnection:
        return StreamConnection(self)

    def proxy_trusted(self) -> tuple[IPv4Network | IPv6Network, ...] | None:
        """The sources that may send a PROXY header; None: this listener takes none. Read
        from the live config at each accept, so a change applies to the next connection."""
        lis = self.server.config.listener(self.name)
        if lis is None or not lis.proxy_protocol:
            return None
        return trusted_networks(lis.proxy_protocol_trusted)

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.asyncio_server is not None:
            self.asyncio_server.close()
        for conn in list(self.connections):
            conn.abort()

    def start_sweeper(self) -> None:
        if self._sweeper is None and not self.closed:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP, self._sweep)

    def _sweep(self) -> None:
        """Close the connections without an allocation that have been silent too long. One
        that has an allocation is stamped active, so its idle time starts when that ends."""
        self._sweeper = None
        if self.closed:
            return
        timeout = self.server.config.admin.connection_idle_timeout
        if timeout and self.connections:
            now = self.now()
            table = self.server.allocations.get(self.name, {})
            for conn in list(self.connections):
                if conn.client in table or conn.raw_link is not None:
                    conn.last_active = now
                elif now - conn.last_active >= timeout:
                    self.idle_closed += 1
                    conn.abort()
        self.start_sweeper()


class StreamConnection(asyncio.Protocol):
    def __init__(self, listener: StreamListener) -> None:
        self.listener = listener
        self.buffer = bytearray()
        self.stream: asyncio.Transport | None = None  # asyncio's, not the TURN transport
        self.raw: asyncio.Transport | None = None  # the TCP transport under TLS
        self.client: Addr = ("", 0)
        self.ctx: Context | None = None  # set once the stream is up (after TLS)
        self.admitted = False  # counted by the gate, until it is gone
        self._tls_task: asyncio.Future[None] | None = None  # held: a task may not be collected
        self.early: bytearray | None = None  # TLS bytes read before start_tls took over
        self.proxy: bytearray | None = None  # bytes of a PROXY header still being read
        self._proxy_timer: asyncio.TimerHandle | None = None
        self.last_active = 0.0  # listener.now() of the last STUN message (slow path only)
        self.sendto: Callable[[bytes | memoryview, Addr], object] = self._write
        self.sendmsg: Callable[..., int] | None = None  # a stream has no datagrams to batch
        # RFC 6062: a bound data connection carries its peer connection's bytes raw, no STUN
        self.raw_link: RawLink | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not an isinstance check: uvloop's TCPTransport does not derive from asyncio.Transport
        raw = cast(asyncio.Transport, transport)
        listener = self.listener
        if listener.closed:  # accepted after its listener stopped
            raw.abort()
            return
        peer = raw.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1]))
        trusted = listener.proxy_trusted()
        if trusted is not None and not is_trusted(self.client[0], trusted):
            listener.counters.proxy_untrusted += 1
            raw.abort()
            return
        # behind a PROXY header this is the LB's address, replaced once the header is read
        if not listener.gate.admit(self.client[0], listener.server.config.admin):
            listener.refused += 1
            raw.abort()
            return
        self.admitted = True
        self.raw = raw
        self.last_active = listener.now()
        listener.connections.add(self)
        listener.start_sweeper()
        if trusted is not None:
            self.proxy = bytearray()
            loop = asyncio.get_running_loop()
            self._proxy_timer = loop.call_later(PROXY_HEADER_TIMEOUT, self._proxy_late)
        else:
            self._start_stream(raw, b"")

    def _start_stream(self, raw: asyncio.Transport, first: bytes) -> None:
        """TURN on the connection from here: `first` is what came after a PROXY header."""
        tls = self.listener.tls
        if tls is None:
            self._up(raw)
            if first:
                self.data_received(first)
        else:
            self.early = bytearray(first)
            self._tls_task = asyncio.ensure_future(self._start_tls(raw, tls))

    def _proxy_data(self, data: bytes) -> None:
        """Bytes before the PROXY header is whole: once it is, the client is who it names."""
        assert self.proxy is not None and self.raw is not None
        buf = self.proxy
        buf += data
        try:
            header = parse_header(buf)
        except ProxyHeaderError:
            self._proxy_refuse()
            return
        if header is None:
            return
        self.proxy = None
        self._cancel_proxy_timer()
        listener = self.listener
        source = header.source  # None: the LB's own connection (a health check), served as is
        if source is not None and source != self.client:
            listener.gate.release(self.client[0])
            if not listener.gate.admit(source[0], listener.server.config.admin):
                self.admitted = False  # released already
                listener.connections.discard(self)
                listener.refused += 1
                self.raw.abort()
                return
            self.client = source
        self._start_stream(self.raw, bytes(buf[header.length :]))

    def _proxy_late(self) -> None:
        self._proxy_timer = None
        if self.proxy is not None:
            self._proxy_refuse()

    def _proxy_refuse(self) -> None:
        """A malformed, missing or late header: the connection is closed, TLS never begins."""
        self.proxy = None
        self._cancel_proxy_timer()
        self.listener.counters.proxy_malformed += 1
        self.abort()

    def _cancel_proxy_timer(self) -> None:
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
            self._proxy_timer = None

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        starting = asyncio.ensure_future(
            loop.start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT
            )
        )
        # One turn of the loop: start_tls has put its TLS protocol under the transport and
        # queued that protocol's connection_made. uvloop may have read the ClientHello into
        # this protocol already (it reads in the loop turn that accepted); hand it over next.
        await asyncio.sleep(0)
        early, self.early = self.early, None
        if early:
            loop.call_soon(_feed, raw, bytes(early))
        try:
            tls = await starting
        except (OSError, TimeoutError, RuntimeError, asyncio.CancelledError):
            # a failed or aborted handshake: our connection_lost is not called for it
            raw.abort()
            self._gone()
            return
        if tls is None or not self.admitted:  # closed while the handshake ran
            raw.abort()
            self._gone()
            return
        self._up(tls)

    def _up(self, stream: asyncio.Transport) -> None:
        listener = self.listener
        self.stream = stream
        self.ctx = Context(listener.name, listener.transport, self.client, self)
        listener.connections_total += 1
        if self.buffer:  # TLS data that came with the handshake's last flight
            self.data_received(b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        self._cancel_proxy_timer()
        if not self.admitted:
            return
        self.admitted = False
        listener = self.listener
        listener.connections.discard(self)
        listener.gate.release(self.client[0])
        raw_link, self.raw_link = self.raw_link, None
        if raw_link is not None:
            raw_link.client_gone()
        if self.ctx is not None:
            listener.server.remove_client(listener.name, self.client, "connection closed")
            listener.on_events()

    def abort(self) -> None:
        transport = self.stream or self.raw
        if transport is not None:
            transport.abort()

    def _write(self, data: bytes | memoryview, addr: Addr) -> None:
        # The relay hot path hands us a view of its shared receive buffer; a transport may
        # queue what it cannot send at once, so it must get bytes of its own.
        data = bytes(data)
        stream = self.stream
        if stream is None or stream.is_closing():
            return
        if stream.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self.listener.counters.dropped += 1
            return
        stream.write(data)
        if len(data) & 3:  # ChannelData over a stream is padded to 4 bytes (RFC 8656 12.5)
            stream.write(b"\0" * (4 - (len(data) & 3)))

    def pause_writing(self) -> None:
        if self.raw_link is not None:  # the client reads slowly: its peer waits
            self.raw_link.client_paused()

    def resume_writing(self) -> None:
        if self.raw_link is not None:
            self.raw_link.client_resumed()

    def data_received(self, data: bytes) -> None:
        if self.raw_link is not None:  # a bound RFC 6062 data connection
            self.raw_link.from_client(data)
            return
        if self.proxy is not None:  # a PROXY header first, in the clear even before TLS
            self._proxy_data(data)
            return
        if self.early is not None:  # ciphertext, before start_tls replaced this protocol
            self.early += data
            if self.raw is not None:
                self.raw.pause_reading()
            return
        buf = self.buffer
        buf += data
        ctx = self.ctx
        if ctx is None:  # TLS records decrypted before start_tls returned: kept for _up
            return
        listener = self.listener
        server = listener.server
        while buf:
            if self.raw_link is not None:  # ConnectionBind just bound it: the rest is raw
                rest = bytes(buf)
                buf.clear()
                self.raw_link.from_client(rest)
                return
            try:
                size = stun.stream_frame_length(buf)
            except stun.StunError:
                self.abort()  # not STUN, not ChannelData: the stream cannot be resynchronised
                return
            if size is None or len(buf) < size:
                if size is not None and size > MAX_FRAME:
                    self.abort()
                return
            frame = bytes(buf[:size])
            del buf[:size]
            if 0x40 <= frame[0] <= 0x7F:  # ChannelData raises no events
                send_outputs(server.handle_channel_data(ctx, frame), self, listener.counters)
            else:
                now = self.last_active = listener.now()
                dispatch_stun(server, ctx, frame, now, listener.counters, listener.on_events)
