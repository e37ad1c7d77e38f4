"""TCP and TLS listeners: RFC 8656 stream framing, STUN and ChannelData interleaved.

An allocation made over a stream lives as long as its connection (RFC 8656 3.1)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from stunner_dp import stun
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr, Context

from .counters import ListenerCounters
from .listener import dispatch_stun, send_outputs

MAX_FRAME = 65536 + 4
WRITE_BUFFER_LIMIT = 1 << 20  # past this a slow client loses media, not the server's memory


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
        self.closed = False
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

    def close(self) -> None:
        self.closed = True
        if self.asyncio_server is not None:
            self.asyncio_server.close()
        for conn in list(self.connections):
            conn.abort()


class StreamConnection(asyncio.Protocol):
    def __init__(self, listener: StreamListener) -> None:
        self.listener = listener
        self.buffer = bytearray()
        self.stream: asyncio.Transport | None = None  # asyncio's, not the TURN transport
        self.client: Addr = ("", 0)
        self.ctx: Context | None = None
        self.sendto: Callable[[bytes | memoryview, Addr], object] = self._write
        self.sendmsg: Callable[..., int] | None = None  # a stream has no datagrams to batch

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not an isinstance check: uvloop's TCPTransport does not derive from asyncio.Transport
        self.stream = cast(asyncio.Transport, transport)
        if self.listener.closed:  # a TLS handshake that finished after its listener stopped
            self.stream.abort()
            return
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1]))
        self.ctx = Context(self.listener.name, self.listener.transport, self.client, self)
        self.listener.connections.add(self)
        self.listener.connections_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        self.listener.server.remove_client(self.listener.name, self.client, "connection closed")
        self.listener.on_events()

    def abort(self) -> None:
        if self.stream is not None:
            self.stream.abort()

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

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        listener = self.listener
        server = listener.server
        ctx = self.ctx
        assert ctx is not None
        while buf:
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
                dispatch_stun(
                    server, ctx, frame, listener.now(), listener.counters, listener.on_events
                )
