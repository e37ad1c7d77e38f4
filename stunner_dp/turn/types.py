"""The seams between the TURN state machine and the network shell.

The state machine never does I/O. It is handed opaque *sinks* (how to reach a client, a relay
socket) and returns what to send through which sink; the shell carries it out. Relay sockets are
opened through a `RelayFactory` because binding a port is the one thing an Allocate cannot
finish without the operating system; tests pass a factory that only hands out numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from stunner_dp.config import ListenerConfig
    from stunner_dp.turn.allocation import Allocation, Channel

Addr = tuple[str, int]
"""An (ip text, port) pair; IPv6 addresses from sockets may carry flow info and scope id too."""


class Transport(StrEnum):
    """The socket kind under TURN, as `ListenerConfig.transport` spells it; each member equals
    its string, so config values and metrics labels compare and print alike."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"
    DTLS = "dtls"


# the stream transports: ChannelData is padded to 4 bytes on them, and they carry RFC 6062
STREAM_TRANSPORTS = frozenset({Transport.TCP, Transport.TLS})


class Sink(Protocol):
    """Something the shell can send a datagram or a stream frame through.

    `sendto` is an attribute, not a method, so that a UDP socket's own bound `sendto` can serve
    as it is: the hot path then costs one C call, not a Python frame and a C call."""

    sendto: Callable[[bytes | memoryview, Addr], object]
    # A datagram socket's own sendmsg, for GSO batches of frames; None for stream links.
    sendmsg: Callable[..., int] | None


class RelayHandle(Sink, Protocol):
    """One relay transport address: a UDP socket bound in the listener's relay port range."""

    @property
    def address(self) -> Addr:
        """The address advertised to the client in XOR-RELAYED-ADDRESS."""
        ...

    def attach(self, allocation: Allocation | None) -> None:
        """Route datagrams that arrive on this socket to `allocation` (None detaches)."""
        ...

    def channel_bound(self, allocation: Allocation, channel: Channel) -> None:
        """`channel` may carry media now (bound, and its peer permitted): called synchronously
        by the state machine before the answer that makes it usable leaves (the kernel fast
        path installs its entry here)."""
        ...

    def channel_unbound(self, channel: Channel) -> None:
        """`channel` may no longer carry media (expired, its permission gone or revoked, the
        allocation deleted): called at once, before its counters are summed up; whatever
        relays it outside this process stops here and folds its counts into `channel`."""
        ...

    def set_dont_fragment(self) -> bool:
        """DONT-FRAGMENT (RFC 8656 7.2): send this relay's datagrams with the DF bit (IPv4),
        unfragmented (IPv6). False when the socket cannot: the Allocate then gets 420."""
        ...

    def close(self) -> None: ...


class RelayFactory(Protocol):
    def open(
        self, listener: ListenerConfig, family: int, *, even: bool = False, pair: bool = False
    ) -> tuple[RelayHandle, RelayHandle | None] | None:
        """Bind a relay port in the listener's range: an even one when `even`; with `pair` also
        the next port (held for a later RESERVATION-TOKEN). None when no port is free."""
        ...


class PeerStream(Protocol):
    """One TCP connection between a TCP relay and a peer (RFC 6062), opened by a Connect or
    accepted on the relay's listening socket. It reads nothing until `bind`: what the peer
    sends first waits in the kernel for the client's data connection."""

    def bind(self, data_link: Sink) -> None:
        """ConnectionBind succeeded on the data connection `data_link`: from the next loop
        turn, bytes flow raw both ways between it and the peer (no STUN framing)."""
        ...

    def close(self) -> None:
        """Close the peer connection and, once bound, its data connection."""
        ...


class TcpRelayHandle(RelayHandle, Protocol):
    """A TCP relay transport address (RFC 6062): a listening socket in the relay port range.
    Its datagram side (`sendto`, channels) is inert: TCP allocations carry no channels."""

    def connect(self, peer: Addr, connection_id: int) -> PeerStream:
        """Start a TCP connection to `peer` from the relay address. The outcome comes back later
        as `TurnServer.tcp.connected(connection_id)` or `tcp.closed(connection_id)`."""
        ...


class TcpRelayFactory(Protocol):
    def open_tcp(self, listener: ListenerConfig, family: int) -> TcpRelayHandle | None:
        """Listen on a TCP port in the listener's relay range; None when no port is free.
        Connections accepted there reach `TurnServer.tcp.accepted`."""
        ...


@dataclass(slots=True, frozen=True)
class Context:
    """Where a message came from: the listener, its transport and the client's address."""

    listener: str
    transport: str  # a Transport (or the same plain string)
    client: Addr
    link: Sink  # how to answer this client (the UDP listener socket or the TCP connection)


@dataclass(slots=True, frozen=True)
class DiscoveryLink:
    """RFC 5780: one of a NAT-discovery listener's four sockets, and the transport address its
    answers leave from (RESPONSE-ORIGIN)."""

    address: Addr
    sink: Sink


DiscoveryLinks = tuple[DiscoveryLink, DiscoveryLink, DiscoveryLink, DiscoveryLink]
"""A NAT-discovery listener's sockets, indexed by (other IP) << 1 | (other port): the listener's
own, its address on the alternate port, the alternate address on its port, and both changed.
The shell registers them (`TurnServer.set_discovery_links`); Binding answers pick one."""

Output = tuple[Sink, Addr, bytes]
"""One thing to send: through this sink, to this address, these bytes."""
