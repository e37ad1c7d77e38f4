"""The UDP listener: STUN/TURN from clients on one port, ChannelData relayed inline."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from stunner_dp.turn.allocation import Allocation
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr, Context

from .counters import ListenerCounters
from .listener import dispatch_stun
from .relay import READ_BATCH, RECV_SIZE
from .sockets import bind_udp

if TYPE_CHECKING:
    from .forwarder import ForwarderControl

__all__ = ["UdpListener", "bind_udp"]  # bind_udp lives in .sockets (the supervisor binds too)


class UdpListener:
    """Reads a listener socket. ChannelData from a client with an allocation goes straight to
    the relay socket; everything else is handed to the state machine."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        sock: socket.socket,
        server: TurnServer,
        on_events: Callable[[], None],
        now: Callable[[], float],
        counters: ListenerCounters,
        forwarder: ForwarderControl | None = None,
    ) -> None:
        self.name = name
        self.transport = "udp"
        self._loop = loop
        self._sock = sock
        self._server = server
        self._on_events = on_events
        self._now = now
        # the Sink for our clients
        self.sendto: Callable[[bytes | memoryview, Addr], object] = sock.sendto
        self.sendmsg: Callable[..., int] | None = sock.sendmsg
        self.counters = counters
        self._table = server.allocations.setdefault(name, {})
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        # IPv6 sockets (the dual-stack "::" one too) report (host, port, flowinfo, scope_id)
        self._ipv6 = sock.family == socket.AF_INET6
        # the compiled forwarder's thread reads the socket when it can, else the loop does
        self._forwarder = forwarder
        if forwarder is None or not forwarder.watch(sock, False, self.receive):
            self._forwarder = None
            loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def sock(self) -> socket.socket:
        """The listener socket (the offload control plane reads its local address)."""
        return self._sock

    @property
    def connections_open(self) -> int:
        return len(self._server.allocations.get(self.name, {}))  # no connections: allocations

    @property
    def connections_total(self) -> int:
        return self.counters.allocations_total

    def close(self) -> None:
        if self._forwarder is not None:
            self._forwarder.unwatch(self._sock)
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        # Its allocations answer and relay through this socket: they end with it (a restarted
        # listener starts afresh, as a TCP one whose connections are aborted does).
        for alloc in list(self._table.values()):
            if alloc.link is self:
                self._server.delete(alloc, "listener stopped")
        self._server.drop_reservations(self.name)

    def _on_readable(self) -> None:
        # recvfrom_into a buffer we own: recvfrom(n) would allocate n bytes per datagram and
        # shrink them; here the payload is sent on as a memoryview slice, never copied.
        recvfrom_into = self._sock.recvfrom_into
        buf, view = self._buffer, self._view
        table = self._table
        ipv6 = self._ipv6
        for _ in range(READ_BATCH):
            try:
                nbytes, client = recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if ipv6:
                # Tables key on (host, port): flowinfo is not part of the client's address.
                # A link-local client's scope id is dropped too (replies then leave by the
                # route's interface). An IPv4 client on "::" stays ::ffff:a.b.c.d throughout.
                client = (client[0], client[1])
            if nbytes >= 4 and 0x40 <= buf[0] <= 0x7F:
                self._relay_channel_data(table.get(client), view, nbytes)
                continue
            self._slow_path(bytes(view[:nbytes]), client)

    def receive(self, data: bytes, client: Addr) -> None:
        """A datagram the compiled forwarder handed back: what the read loop does with it."""
        if len(data) >= 4 and 0x40 <= data[0] <= 0x7F:
            self._relay_channel_data(self._table.get(client), memoryview(data), len(data))
        else:
            self._slow_path(data, client)

    def _relay_channel_data(self, alloc: Allocation | None, frame: memoryview, nbytes: int) -> None:
        if alloc is not None:
            chan = alloc.channels.get((frame[0] << 8) | frame[1])
            size = (frame[2] << 8) | frame[3]
            if chan is not None and size <= nbytes - 4:
                try:
                    chan.relay.sendto(frame[4 : 4 + size], chan.peer)
                except OSError:
                    self.counters.dropped += 1  # send buffer full or peer unreachable
                    return
                chan.out_packets += 1
                chan.out_bytes += size
                return
        self.counters.dropped += 1

    def _slow_path(self, data: bytes, client: Addr) -> None:
        ctx = Context(self.name, "udp", client, self)
        dispatch_stun(self._server, ctx, data, self._now(), self.counters, self._on_events)
