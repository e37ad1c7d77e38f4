"""RFC 6062 TCP relays: the TCP allocations of a `TurnServer`, their peer connections, and the
Connect and ConnectionBind requests. Sans-IO like the server: the shell's `TcpRelayFactory`
opens the sockets and reports back through `connected`, `closed` and `accepted`."""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import Protocol

from stunner_dp import stun
from stunner_dp.config import ListenerConfig, StunnerConfig
from stunner_dp.stun import ErrorCode, Message
from stunner_dp.turn.access import OwnAddresses, PeerAccess, PortSet
from stunner_dp.turn.allocation import Allocation, Traffic
from stunner_dp.turn.families import normalize_peer
from stunner_dp.turn.requests import Authenticated, Reject
from stunner_dp.turn.types import (
    STREAM_TRANSPORTS,
    Addr,
    Context,
    Output,
    PeerStream,
    TcpRelayFactory,
    TcpRelayHandle,
)

# RFC 6062: a Connect's peer has this long to answer; a peer connection this long to be bound
TCP_CONNECT_TIMEOUT = 30.0
TCP_BIND_TIMEOUT = 30.0


@dataclass(slots=True, eq=False)
class TcpPeerConnection:
    """One peer connection of a TCP allocation (RFC 6062), from the Connect or the accept
    that began it until it closes."""

    connection_id: int
    allocation: Allocation
    peer: Addr
    deadline: float  # Connect: its answer is due; accepted or connected: ConnectionBind is due
    stream: PeerStream | None = None
    # a Connect still waiting for its peer: the request to answer, and the key to sign it with
    pending: tuple[Context, Message, bytes] | None = None
    bound: bool = False
    # the bytes relayed (the shell counts them; raw, so not `framed`): the peer's cluster's
    # figures, and the allocation's totals once it closes
    traffic: Traffic = dataclasses.field(default_factory=lambda: Traffic(""))


class TcpHost(Protocol):
    """What of its `TurnServer` the TCP side uses: the live config and peer rules, the
    allocations, and the server's own checks and answers (so a 403 or an error response is the
    same, with the same event, as for any other request)."""

    config: StunnerConfig
    access: PeerAccess
    software: str
    allocations: dict[str, dict[Addr, Allocation]]

    def _allocation(self, ctx: Context, auth: Authenticated) -> Allocation: ...

    def _peer(self, alloc: Allocation, value: bytes, tid: bytes) -> Addr: ...

    def _judge(self, ctx: Context, peer: Addr, *, tcp: bool = False) -> tuple[PortSet, str]: ...

    def _deny(self, ctx: Context, peer: Addr, reason: str = ...) -> Reject: ...

    def _own_addresses(self) -> OwnAddresses: ...

    def _peer_ports(self, listener: str, ip: str, *, tcp: bool = False) -> PortSet | None: ...

    def _response(
        self, msg: Message, cls: int, attrs: list[tuple[int, bytes]], key: bytes | None = None
    ) -> bytes: ...

    def _error(
        self,
        ctx: Context,
        msg: Message,
        code: ErrorCode,
        reason: str = "",
        attrs: list[tuple[int, bytes]] | None = None,
        *,
        key: bytes | None = None,
        quiet: bool = False,
    ) -> bytes: ...


class TcpAllocations:
    """The TCP allocations of one `TurnServer` (its `tcp`) and every peer connection by id."""

    def __init__(self, host: TcpHost) -> None:
        self._host = host
        # the shell's TCP relays (None: REQUESTED-TRANSPORT TCP is 442), the TCP allocations
        # with their peer connections by id, and every peer connection by id
        self.relays: TcpRelayFactory | None = None
        self.allocations: dict[Allocation, dict[int, TcpPeerConnection]] = {}
        self.connections: dict[int, TcpPeerConnection] = {}
        # the relayed transport address of each TCP allocation: a Connect may reach those
        self.relay_addresses: dict[Addr, Allocation] = {}
        # seconds a peer connection may wait for its ConnectionBind (the shell may shorten it)
        self.bind_timeout = TCP_BIND_TIMEOUT

    # -- allocations --------------------------------------------------------------------------

    def open_relay(self, listener: ListenerConfig, family: int) -> TcpRelayHandle:
        assert self.relays is not None  # `_check_allocate` asked
        relay = self.relays.open_tcp(listener, family)
        if relay is None:
            raise Reject(ErrorCode.INSUFFICIENT_CAPACITY, "No relay port free")
        return relay

    def add_allocation(self, alloc: Allocation) -> None:
        """A TCP allocation is made on its relay: no peer connections yet."""
        self.allocations[alloc] = {}
        self.relay_addresses[normalize_peer(alloc.relay.address[:2])] = alloc

    def close_allocation(self, alloc: Allocation) -> None:
        """The allocation ends: so do its peer and data connections (RFC 6062 5.1)."""
        conns = self.allocations.pop(alloc, None)
        if conns is not None:
            key = normalize_peer(alloc.relay.address[:2])
            if self.relay_addresses.get(key) is alloc:
                del self.relay_addresses[key]
        for conn in list((conns or {}).values()):
            self._close(conn)

    def expire(self, now: float) -> None:
        """Peer connections nobody bound within TCP_BIND_TIMEOUT close (RFC 6062 5.3); a
        Connect still waiting is the shell's (its connect times out into `closed`)."""
        late = [c for c in self.connections.values() if c.pending is None and c.deadline <= now]
        for conn in late:
            self._close(conn)

    def revalidate(self, alloc: Allocation) -> None:
        """After a config or DNS change: close the peer connections the rules no longer allow."""
        host = self._host
        for conn in list(self.allocations[alloc].values()):
            ports = host._peer_ports(alloc.listener, conn.peer[0], tcp=True)
            own = host._own_addresses().owns(*conn.peer, with_relays=False)
            if ports is None or conn.peer[1] not in ports or own:
                self._close(conn)

    # -- requests -----------------------------------------------------------------------------

    def connect(self, ctx: Context, msg: Message, auth: Authenticated, now: float) -> bytes:
        """Connect (RFC 6062 5.2): open a TCP connection to the peer. Answered later, by
        `connected` (CONNECTION-ID) or `closed` (447); b"" here means no answer yet."""
        host = self._host
        alloc = host._allocation(ctx, auth)
        conns = self.allocations.get(alloc)
        if conns is None:
            raise Reject(ErrorCode.BAD_REQUEST, "Connect on a UDP allocation")
        raw_peer = msg.get(stun.ATTR_XOR_PEER_ADDRESS)
        if raw_peer is None:
            raise Reject(ErrorCode.BAD_REQUEST, "Missing XOR-PEER-ADDRESS")
        peer = host._peer(alloc, raw_peer, msg.transaction_id)
        if peer[1] == 0:
            raise Reject(ErrorCode.BAD_REQUEST, "Peer port 0")
        ports, cluster = self._judge_connect(ctx, alloc, peer)
        if peer[1] not in ports:
            raise host._deny(ctx, peer)
        if any(conn.peer == peer for conn in conns.values()):  # connected or connecting
            raise Reject(ErrorCode.CONNECTION_ALREADY_EXISTS)
        if not self._room(conns):
            raise Reject(ErrorCode.INSUFFICIENT_CAPACITY, "Connection limit reached")
        conn = TcpPeerConnection(
            self._new_connection_id(),
            alloc,
            peer,
            deadline=now + TCP_CONNECT_TIMEOUT,
            pending=(ctx, msg, auth.key),
            traffic=Traffic(cluster),
        )
        self._add(conn)
        relay: TcpRelayHandle = alloc.relay  # type: ignore[assignment]  # a TCP allocation's
        conn.stream = relay.connect(peer, conn.connection_id)
        return b""

    def _judge_connect(self, ctx: Context, alloc: Allocation, peer: Addr) -> tuple[PortSet, str]:
        """A Connect's peer: of our own addresses only the relayed transport address of another
        live TCP allocation (two clients meeting through two TCP relays: neither relay hands
        what it accepts to anything but its own client, so nothing chains), and only where the
        clusters allow it; every other own address is 403, as for UDP."""
        host = self._host
        if host._own_addresses().owns(*peer):
            other = self.relay_addresses.get(peer)
            ports = host.access.ports_for(ctx.listener, peer[0])
            if other is None or other is alloc or ports is None:
                raise host._deny(ctx, peer, "Forbidden: the peer is this server")
            return ports, host.access.cluster_for(ctx.listener, peer[0])
        return host._judge(ctx, peer, tcp=True)

    def connection_bind(
        self, ctx: Context, msg: Message, auth: Authenticated, now: float
    ) -> list[tuple[int, bytes]]:
        """ConnectionBind (RFC 6062 5.4) on a new data connection: it carries the peer
        connection's bytes raw once this answer has left."""
        if ctx.transport not in STREAM_TRANSPORTS:
            raise Reject(ErrorCode.BAD_REQUEST, "ConnectionBind needs a TCP or TLS connection")
        if ctx.client in self._host.allocations.get(ctx.listener, {}):
            raise Reject(ErrorCode.BAD_REQUEST, "ConnectionBind on a control connection")
        raw_id = msg.get(stun.ATTR_CONNECTION_ID)
        if raw_id is None:
            raise Reject(ErrorCode.BAD_REQUEST, "Missing CONNECTION-ID")
        conn = self.connections.get(stun.decode_u32(raw_id))
        if conn is None or conn.bound or conn.pending is not None or conn.stream is None:
            raise Reject(ErrorCode.BAD_REQUEST, "Unknown CONNECTION-ID")
        alloc = conn.allocation
        if alloc.listener != ctx.listener or alloc.client[0] != ctx.client[0]:
            raise Reject(ErrorCode.BAD_REQUEST, "CONNECTION-ID of another client")
        if alloc.username != auth.username:
            raise Reject(ErrorCode.WRONG_CREDENTIALS)
        conn.bound = True
        conn.deadline = math.inf
        conn.stream.bind(ctx.link)
        return []

    # -- the shell's reports ------------------------------------------------------------------

    def connected(self, connection_id: int, now: float) -> list[Output]:
        """The shell: a Connect's peer connection is up. The Connect's answer, with its
        CONNECTION-ID; ConnectionBind is due within `bind_timeout`."""
        conn = self.connections.get(connection_id)
        if conn is None or conn.pending is None:
            return []
        ctx, msg, key = conn.pending
        conn.pending = None
        conn.deadline = now + self.bind_timeout
        attrs = [(stun.ATTR_CONNECTION_ID, stun.encode_u32(connection_id))]
        if self._host.software:
            attrs.append((stun.ATTR_SOFTWARE, self._host.software.encode()))
        return [(ctx.link, ctx.client, self._host._response(msg, stun.CLASS_SUCCESS, attrs, key))]

    def closed(self, connection_id: int) -> list[Output]:
        """The shell: a peer connection failed or closed (either side, or its data
        connection). A Connect still waiting for it gets its 447."""
        conn = self.connections.get(connection_id)
        if conn is None:
            return []
        self._forget(conn)
        if conn.pending is None:
            return []
        ctx, msg, key = conn.pending
        code = ErrorCode.CONNECTION_TIMEOUT_OR_FAILURE
        return [(ctx.link, ctx.client, self._host._error(ctx, msg, code, key=key))]

    def accepted(
        self, alloc: Allocation, peer: Addr, stream: PeerStream, now: float
    ) -> tuple[int, list[Output]] | None:
        """The shell: a peer connected to `alloc`'s TCP relay (RFC 6062 5.3). With a permission
        for it, a ConnectionAttempt to the client and the connection's id; None: close it."""
        conns = self.allocations.get(alloc)
        if conns is None:
            return None
        peer = normalize_peer(peer[:2])
        perm = alloc.permissions.get(peer[0])
        if perm is None or peer[1] not in perm.ports or not self._room(conns):
            return None
        if any(conn.peer == peer for conn in conns.values()):
            return None
        conn = TcpPeerConnection(
            self._new_connection_id(),
            alloc,
            peer,
            deadline=now + self.bind_timeout,
            stream=stream,
            traffic=Traffic(perm.cluster),
        )
        self._add(conn)
        tid = secrets.token_bytes(12)
        attrs = [
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)),
            (stun.ATTR_CONNECTION_ID, stun.encode_u32(conn.connection_id)),
        ]
        attempt = stun.encode_message(
            stun.METHOD_CONNECTION_ATTEMPT, stun.CLASS_INDICATION, tid, attrs
        )
        return conn.connection_id, [(alloc.link, alloc.client, attempt)]

    # -- peer connections ---------------------------------------------------------------------

    def _new_connection_id(self) -> int:
        while True:  # 2^32 ids, few live: a clash is rare, and it never loops long
            cid = secrets.randbits(32)
            if cid and cid not in self.connections:
                return cid

    def _add(self, conn: TcpPeerConnection) -> None:
        self.connections[conn.connection_id] = conn
        self.allocations[conn.allocation][conn.connection_id] = conn

    def _forget(self, conn: TcpPeerConnection) -> None:
        if self.connections.pop(conn.connection_id, None) is None:
            return
        conns = self.allocations.get(conn.allocation)
        if conns is not None:
            conns.pop(conn.connection_id, None)
        # its counts stay in the allocation's totals, as a retired permission's do
        t = conn.traffic
        if t.out_packets or t.in_packets:
            retired = conn.allocation.retired
            total = retired.setdefault((t.cluster, t.framed), Traffic(t.cluster, t.framed))
            total.out_packets += t.out_packets
            total.out_bytes += t.out_bytes
            total.in_packets += t.in_packets
            total.in_bytes += t.in_bytes

    def _room(self, conns: dict[int, TcpPeerConnection]) -> bool:
        """A peer connection is a TCP relay's channel: max_channels_per_allocation caps them
        (0: unlimited); the stream listeners' connection caps bound them all together."""
        cap = self._host.config.admin.max_channels_per_allocation
        return not cap or len(conns) < cap

    def _close(self, conn: TcpPeerConnection) -> None:
        self._forget(conn)
        if conn.stream is not None:
            conn.stream.close()
