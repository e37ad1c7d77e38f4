"""RFC 5780 NAT behaviour discovery: a TURN-UDP listener with a second address and port.

The listener's own socket is a plain `UdpListener` (its ChannelData hot path untouched); three
small sockets beside it, (address, alternate port), (alternate address, port) and (alternate
address, alternate port), answer Binding only. Every Binding goes through the state machine,
which picks the socket to answer from (CHANGE-REQUEST) among the four registered here.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from stunner_dp.config import ListenerConfig
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr, Context, DiscoveryLink, DiscoveryLinks

from .counters import ListenerCounters
from .listener import dispatch_stun
from .relay import READ_BATCH, RECV_SIZE
from .sockets import bind_udp
from .udp import UdpListener

__all__ = ["BindingResponder", "NatDiscoveryListener"]


class BindingResponder:
    """One alternate socket: Binding requests go to the state machine, everything else is
    dropped unread (these addresses serve no TURN)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        sock: socket.socket,
        server: TurnServer,
        on_events: Callable[[], None],
        now: Callable[[], float],
        counters: ListenerCounters,
    ) -> None:
        self.name = name
        self._loop = loop
        self._sock = sock
        self._server = server
        self._on_events = on_events
        self._now = now
        self._counters = counters
        self.sendto: Callable[[bytes | memoryview, Addr], object] = sock.sendto
        self.sendmsg: Callable[..., int] | None = None
        local = sock.getsockname()
        self.address: Addr = (str(local[0]), int(local[1]))
        loop.add_reader(sock.fileno(), self._on_readable)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _on_readable(self) -> None:
        recvfrom = self._sock.recvfrom
        for _ in range(READ_BATCH):
            try:
                data, source = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if len(data) < 20 or data[0] != 0x00 or data[1] != 0x01:  # not a Binding request
                self._counters.dropped += 1
                continue
            ctx = Context(self.name, "udp", (source[0], source[1]), self)
            dispatch_stun(self._server, ctx, data, self._now(), self._counters, self._on_events)


class NatDiscoveryListener(UdpListener):
    """A `UdpListener` whose Binding answers follow RFC 5780, over the four sockets."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: ListenerConfig,
        sock: socket.socket,
        server: TurnServer,
        on_events: Callable[[], None],
        now: Callable[[], float],
        counters: ListenerCounters,
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(loop, config.name, sock, server, on_events, now, counters)
        nat = config.nat_discovery
        assert nat is not None
        port = self.port
        self._responders: list[BindingResponder] = []
        try:
            for host, alt_port in (
                (config.address, nat.alternate_port),
                (nat.alternate_address, port),
                (nat.alternate_address, nat.alternate_port),
            ):
                alt = bind_udp(host, alt_port, reuse_port=reuse_port)
                self._responders.append(
                    BindingResponder(loop, config.name, alt, server, on_events, now, counters)
                )
        except BaseException:
            self.close()
            raise
        other_port, other_ip, both = self._responders
        links: DiscoveryLinks = (
            DiscoveryLink((config.address, port), self),
            DiscoveryLink(other_port.address, other_port),
            DiscoveryLink(other_ip.address, other_ip),
            DiscoveryLink(both.address, both),
        )
        server.set_discovery_links(config.name, links)

    @property
    def alternate_sockets(self) -> list[Addr]:
        """Where the three alternate sockets are bound (for /status and tests)."""
        return [r.address for r in self._responders]

    def close(self) -> None:
        self._server.set_discovery_links(self.name, None)
        for responder in self._responders:
            responder.close()
        self._responders = []
        super().close()
