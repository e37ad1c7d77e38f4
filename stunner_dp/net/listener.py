"""What every listener is to the `Server` (UDP, TCP/TLS, DTLS), and the slow path they share.

The media fast paths stay in each listener (`UdpListener._on_readable` relays ChannelData
without a call); a STUN message from a client, on any transport, takes `dispatch_stun`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Context, Output, Sink

from .counters import ListenerCounters


class Listener(Protocol):
    """A running listener, as the `Server` drives and reports it."""

    @property
    def name(self) -> str: ...

    @property
    def transport(self) -> str:
        """ "udp" | "tcp" | "tls" | "dtls"."""
        ...

    @property
    def counters(self) -> ListenerCounters: ...

    @property
    def port(self) -> int:
        """The port it is bound to (the configured one, or the kernel's pick for 0)."""
        ...

    @property
    def connections_open(self) -> int:
        """Clients it holds now: TCP/TLS connections, DTLS associations (handshakes in
        progress included); UDP, which has no connections, its allocations."""
        ...

    @property
    def connections_total(self) -> int:
        """Clients since it started: connections accepted, DTLS handshakes completed; UDP its
        allocations made (counted across restarts, as its counters are)."""
        ...

    def close(self) -> None:
        """Stop listening; the allocations made through it end with it."""
        ...


def send_outputs(outputs: list[Output], link: Sink, counters: ListenerCounters) -> None:
    """Send what the state machine returned. What goes back through `link` (the client's link)
    counts as sent by the listener; a send the kernel refuses is a drop."""
    for sink, addr, payload in outputs:
        if sink is link:  # a STUN answer; media to the peer goes via the relay
            counters.tx_packets += 1
            counters.tx_bytes += len(payload)
        try:
            sink.sendto(payload, addr)
        except OSError:
            counters.dropped += 1


def dispatch_stun(
    server: TurnServer,
    ctx: Context,
    data: bytes,
    now: float,
    counters: ListenerCounters,
    on_events: Callable[[], None],
) -> None:
    """The slow path of every listener: one STUN message from a client, counted, handled,
    answered; then the events it raised are handed on."""
    counters.rx_packets += 1
    counters.rx_bytes += len(data)
    send_outputs(server.handle_stun(ctx, data, now), ctx.link, counters)
    if server.events:
        on_events()
