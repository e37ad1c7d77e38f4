"""RFC 6062 TCP relays in the state machine: Allocate with REQUESTED-TRANSPORT TCP, Connect,
ConnectionAttempt, ConnectionBind, the 30 s timeouts, peer rules, caps and teardown. The TCP
relay factory here only records what the shell would do."""

from __future__ import annotations

from dataclasses import dataclass, field

from helpers.turn_harness import (
    CLIENT,
    PEER,
    PEER2,
    RELAY_IP,
    T0,
    Client,
    Harness,
    assert_success,
    error_code,
    make_config,
)

from stunner_dp import stun
from stunner_dp.config import AdminConfig, ListenerConfig
from stunner_dp.stun import Message
from stunner_dp.turn.allocation import Allocation, Channel
from stunner_dp.turn.tcp_allocations import TCP_BIND_TIMEOUT
from stunner_dp.turn.types import Addr, Output, Sink

TCP_TRANSPORT = [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(6))]


@dataclass(eq=False)
class FakeStream:
    peer: Addr
    connection_id: int
    bound_to: Sink | None = None
    closed: bool = False

    def bind(self, data_link: Sink) -> None:
        self.bound_to = data_link

    def close(self) -> None:
        self.closed = True


@dataclass(eq=False)
class FakeTcpRelay:
    address: Addr
    allocation: Allocation | None = None
    closed: bool = False
    streams: list[FakeStream] = field(default_factory=list)
    sendmsg: None = None

    def sendto(self, data: bytes | memoryview, addr: Addr) -> None:
        raise AssertionError("a TCP relay sends no datagrams")

    def attach(self, allocation: Allocation | None) -> None:
        self.allocation = allocation

    def channel_bound(self, allocation: Allocation, channel: Channel) -> None: ...

    def channel_unbound(self, channel: Channel) -> None: ...

    def set_dont_fragment(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def connect(self, peer: Addr, connection_id: int) -> FakeStream:
        stream = FakeStream(peer, connection_id)
        self.streams.append(stream)
        return stream


class FakeTcpRelays:
    def __init__(self) -> None:
        self.opened: list[FakeTcpRelay] = []

    def open_tcp(self, listener: ListenerConfig, family: int) -> FakeTcpRelay:
        relay = FakeTcpRelay((RELAY_IP, 40000 + len(self.opened)))
        self.opened.append(relay)
        return relay


def tcp_harness(admin: AdminConfig | None = None) -> tuple[Harness, FakeTcpRelays]:
    h = Harness(make_config(admin=admin) if admin else None)
    relays = FakeTcpRelays()
    h.server.tcp.relays = relays
    return h, relays


def tcp_client(h: Harness, addr: Addr = CLIENT) -> Client:
    c = h.client(addr, listener="tcp")
    assert_success(c.allocate(TCP_TRANSPORT), stun.METHOD_ALLOCATE)
    return c


def peer_attr(c: Client, peer: Addr, tid: bytes) -> tuple[int, bytes]:
    return (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid))


def connect(c: Client, peer: Addr = PEER, now: float = T0) -> tuple[bytes, list[Output]]:
    tid = b"c" * 12
    return tid, c.send(c.build(stun.METHOD_CONNECT, [peer_attr(c, peer, tid)], tid=tid), now)


def answer(outputs: list[Output]) -> Message:
    assert len(outputs) == 1, outputs
    return stun.parse_message(outputs[0][2])


def connection_id(msg: Message) -> int:
    raw = msg.get(stun.ATTR_CONNECTION_ID)
    assert raw is not None
    return stun.decode_u32(raw)


def connection_bind(data: Client, cid: int, now: float = T0) -> Message:
    attrs = [(stun.ATTR_CONNECTION_ID, stun.encode_u32(cid))]
    return data.transact(data.build(stun.METHOD_CONNECTION_BIND, attrs), now)


def data_client(h: Harness, control: Client, port: int = 40001) -> Client:
    """A new connection from the control connection's client IP, holding its nonce."""
    data = h.client((control.ctx.client[0], port), listener="tcp")
    data.realm, data.nonce = control.realm, control.nonce
    return data


def test_tcp_relay_only_over_tcp_and_only_with_a_shell_that_has_them() -> None:
    h, relays = tcp_harness()
    udp = h.client(listener="udp")
    assert error_code(udp.allocate(TCP_TRANSPORT)) == 442  # a UDP control connection
    plain = Harness()  # no TCP relays in this shell
    assert error_code(plain.client(listener="tcp").allocate(TCP_TRANSPORT)) == 442
    assert relays.opened == []
    c = tcp_client(h)
    assert relays.opened[0].allocation is h.allocation(c)


def test_tcp_relay_refuses_even_port_and_dont_fragment() -> None:
    h, relays = tcp_harness()
    c = h.client(listener="tcp")
    even = [*TCP_TRANSPORT, (stun.ATTR_EVEN_PORT, b"\x00")]
    assert error_code(c.allocate(even)) == 400
    df = [*TCP_TRANSPORT, (stun.ATTR_DONT_FRAGMENT, b"")]
    assert error_code(c.allocate(df)) == 400
    assert relays.opened == []


def test_connect_answers_when_the_peer_connection_is_up_then_connection_bind() -> None:
    h, relays = tcp_harness()
    c = tcp_client(h)
    tid, outputs = connect(c)
    assert outputs == []  # not yet: the shell connects first
    stream = relays.opened[0].streams[0]
    assert stream.peer == PEER
    ok = answer(h.server.tcp.connected(stream.connection_id, T0 + 1))
    assert_success(ok, stun.METHOD_CONNECT)
    assert ok.transaction_id == tid and ok.check_integrity(c.key)
    assert connection_id(ok) == stream.connection_id
    data = data_client(h, c)
    assert_success(connection_bind(data, stream.connection_id, T0 + 2), stun.METHOD_CONNECTION_BIND)
    assert stream.bound_to is data.ctx.link
    # bound: the bind timeout no longer applies
    h.server.expire(T0 + 2 + 2 * TCP_BIND_TIMEOUT)
    assert not stream.closed
    # a second ConnectionBind for it is refused
    again = data_client(h, c, 40002)
    assert error_code(connection_bind(again, stream.connection_id, T0 + 3)) == 400


def test_connect_failure_is_447_and_a_second_connect_446() -> None:
    h, relays = tcp_harness()
    c = tcp_client(h)
    connect(c)
    _, outputs = connect(c)  # the same peer while the first is connecting
    assert error_code(answer(outputs)) == 446
    stream = relays.opened[0].streams[0]
    failed = answer(h.server.tcp.closed(stream.connection_id))
    assert error_code(failed) == 447 and failed.method == stun.METHOD_CONNECT
    _, outputs = connect(c)  # gone: the peer may be tried again
    assert outputs == [] and len(relays.opened[0].streams) == 2
    assert h.server.tcp.closed(12345) == []  # unknown ids cost nothing


def test_connect_holds_to_the_peer_rules() -> None:
    h, relays = tcp_harness()
    c = tcp_client(h)
    _, outputs = connect(c, ("127.0.0.1", 6000))  # the local cluster allows 5000-5099 only
    assert error_code(answer(outputs)) == 403
    _, outputs = connect(c, (RELAY_IP, 3478))  # our own listener
    assert error_code(answer(outputs)) == 403
    assert relays.opened[0].streams == []


def test_unbound_connection_closes_after_30_seconds() -> None:
    h, relays = tcp_harness()
    c = tcp_client(h)
    connect(c)
    stream = relays.opened[0].streams[0]
    h.server.tcp.connected(stream.connection_id, T0)
    h.server.expire(T0 + TCP_BIND_TIMEOUT - 1)
    assert not stream.closed
    h.server.expire(T0 + TCP_BIND_TIMEOUT)
    assert stream.closed and h.server.tcp.connections == {}
    data = data_client(h, c)  # the id is gone: so is the control connection's nonce binding
    assert error_code(connection_bind(data, stream.connection_id, T0 + 31)) == 438


def test_peer_initiated_needs_a_permission_then_connection_attempt() -> None:
    h, _ = tcp_harness()
    c = tcp_client(h)
    alloc = h.allocation(c)
    incoming = FakeStream(PEER, 0)
    assert h.server.tcp.accepted(alloc, PEER, incoming, T0) is None  # no permission
    assert_success(c.create_permission(PEER), stun.METHOD_CREATE_PERMISSION)
    verdict = h.server.tcp.accepted(alloc, PEER, incoming, T0)
    assert verdict is not None
    cid, outputs = verdict
    sink, addr, raw = outputs[0]
    assert sink is c.ctx.link and addr == c.ctx.client
    attempt = stun.parse_message(raw)
    assert (attempt.method, attempt.cls) == (stun.METHOD_CONNECTION_ATTEMPT, stun.CLASS_INDICATION)
    assert connection_id(attempt) == cid
    raw_peer = attempt.get(stun.ATTR_XOR_PEER_ADDRESS)
    assert raw_peer is not None
    assert stun.decode_xor_address(raw_peer, attempt.transaction_id) == PEER
    # the wrong user, or another client IP, cannot bind it
    stranger = h.client(("192.0.2.99", 40001), listener="tcp")
    stranger.fetch_nonce()
    assert error_code(connection_bind(stranger, cid)) == 400
    data = data_client(h, c)
    assert_success(connection_bind(data, cid), stun.METHOD_CONNECTION_BIND)
    assert incoming.bound_to is data.ctx.link


def test_channels_and_send_are_refused_on_a_tcp_allocation() -> None:
    h, _ = tcp_harness()
    c = tcp_client(h)
    assert error_code(c.channel_bind(0x4000, PEER)) == 400
    assert_success(c.create_permission(PEER), stun.METHOD_CREATE_PERMISSION)
    assert c.send_indication(PEER, b"x") == []


def test_connect_on_a_udp_allocation_is_400() -> None:
    h, _ = tcp_harness()
    c = h.client(listener="tcp")
    assert_success(c.allocate(), stun.METHOD_ALLOCATE)
    _, outputs = connect(c)
    assert error_code(answer(outputs)) == 400


def test_the_per_allocation_cap_bounds_connections() -> None:
    h, _ = tcp_harness(AdminConfig(max_channels_per_allocation=1))
    c = tcp_client(h)
    connect(c, PEER)
    _, outputs = connect(c, PEER2)
    assert error_code(answer(outputs)) == 508
    assert_success(c.create_permission(PEER2), stun.METHOD_CREATE_PERMISSION)
    assert h.server.tcp.accepted(h.allocation(c), PEER2, FakeStream(PEER2, 0), T0) is None


def test_allocation_end_closes_its_connections_and_relay() -> None:
    h, relays = tcp_harness()
    c = tcp_client(h)
    connect(c, PEER)
    connect(c, PEER2)
    relay = relays.opened[0]
    h.server.remove_client("tcp", c.ctx.client, "connection closed")
    assert relay.closed and all(s.closed for s in relay.streams)
    assert h.server.tcp.connections == {} and h.server.tcp.allocations == {}


def test_config_revocation_closes_what_the_rules_no_longer_allow() -> None:
    h, relays = tcp_harness()
    c = tcp_client(h)
    local = ("127.0.0.1", 5050)
    connect(c, local)
    connect(c, PEER)
    first, second = relays.opened[0].streams
    config = make_config(
        clusters=(
            make_config().clusters[0],
            type(make_config().clusters[1])(name="local", endpoints=("127.0.0.1:<6000-6099>",)),
        )
    )
    h.server.update_config(config)
    assert first.closed and not second.closed
    assert list(h.server.tcp.connections) == [second.connection_id]
