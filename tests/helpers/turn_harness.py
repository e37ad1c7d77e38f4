"""A sans-IO harness for the TURN state machine: fake clock, fake relay factory, test clients.

Nothing here opens a socket. The clock is the `now` value each call passes; the relay factory
hands out `FakeRelay` handles with made-up ports and records which are open; a `Client` builds
requests with `stunner_dp.stun.encode_message`, runs the long-term credential dance (401 ->
REALM/NONCE -> signed request) and parses what the server answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stunner_dp import stun
from stunner_dp.config import (
    AdminConfig,
    AuthConfig,
    ClusterConfig,
    ListenerConfig,
    StunnerConfig,
)
from stunner_dp.net.relay import family_address
from stunner_dp.stun import Message
from stunner_dp.turn.allocation import Allocation, Channel
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr, Context, Output

T0 = 1_700_000_000.0  # the fake clock's start: a realistic Unix time, for ephemeral usernames
REALM = "turn.example.test"
USER = "user-1"
PASSWORD = "pass-1"
SECRET = "rest-api-secret"

RELAY_IP = "198.51.100.1"  # advertised relay address of the IPv4 listener
RELAY_IP6 = "2001:db8::1"  # and of the IPv6 one
CLIENT = ("192.0.2.10", 40000)
PEER = ("93.184.216.34", 7000)  # a global address: the wildcard cluster covers it
PEER2 = ("8.8.4.4", 7001)
LOCAL_PEER = ("127.0.0.1", 5050)  # inside the "local" cluster's 5000-5099 port window

Attrs = Sequence[tuple[int, bytes]]


# -- config --------------------------------------------------------------------------------


def make_config(
    *,
    auth: AuthConfig | None = None,
    admin: AdminConfig | None = None,
    listeners: tuple[ListenerConfig, ...] | None = None,
    clusters: tuple[ClusterConfig, ...] | None = None,
) -> StunnerConfig:
    """Listeners "udp" (IPv4), "tcp" (IPv4) and "udp6" (IPv6), each routed to the clusters
    "public" (global peers only) and "local" (127.0.0.1, peer ports 5000-5099)."""
    if listeners is None:
        routes = ("public", "local")
        listeners = (
            ListenerConfig(name="udp", protocol="TURN-UDP", address=RELAY_IP, routes=routes),
            ListenerConfig(name="tcp", protocol="TURN-TCP", address=RELAY_IP, routes=routes),
            ListenerConfig(name="udp6", protocol="TURN-UDP", address=RELAY_IP6, routes=routes),
        )
    if clusters is None:
        clusters = (
            ClusterConfig(name="public", endpoints=("0.0.0.0/0", "::/0")),
            ClusterConfig(name="local", endpoints=("127.0.0.1:<5000-5099>",)),
        )
    return StunnerConfig(
        admin=admin or AdminConfig(),
        auth=auth or AuthConfig(type="static", realm=REALM, username=USER, password=PASSWORD),
        listeners=listeners,
        clusters=clusters,
    )


def ephemeral_auth(secret: str = SECRET) -> AuthConfig:
    return AuthConfig(type="ephemeral", realm=REALM, secret=secret)


def rest_password(secret: str, username: str) -> str:
    """The TURN REST API password: base64(HMAC-SHA1(secret, username))."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def lt_key(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


# -- the fake relay factory -------------------------------------------------------------------


class FakeLink:
    """A client-side sink: the server only hands it back in its outputs."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Addr]] = []
        self.sendto = lambda data, addr: self.sent.append((data, addr))


class FakeRelay:
    """A relay handle with a made-up port; records attach/close, and the channel_bound /
    channel_unbound calls (the kernel fast path's install/remove): `offloaded` is what an
    offload would relay now, (channel number, peer) -> Channel."""

    def __init__(self, factory: FakeRelayFactory, address: Addr) -> None:
        self._factory = factory
        self._address = address
        self.attached: Allocation | None = None
        self.close_count = 0
        self.sent: list[tuple[bytes, Addr]] = []
        self.sendto = lambda data, addr: self.sent.append((data, addr))
        self.offload_calls: list[tuple[str, int, Addr]] = []  # ("bound"/"unbound", number, peer)
        self.offloaded: dict[tuple[int, Addr], Channel] = {}
        self.dont_fragment = False  # DONT-FRAGMENT set on it

    def channel_bound(self, allocation: Allocation, channel: Channel) -> None:
        key = (channel.number, channel.peer)
        assert key not in self.offloaded, f"channel {key} announced twice"
        assert self in allocation.relays
        self.offloaded[key] = channel
        self.offload_calls.append(("bound", *key))

    def set_dont_fragment(self) -> bool:
        self.dont_fragment = True
        return True

    def channel_unbound(self, channel: Channel) -> None:
        key = (channel.number, channel.peer)
        assert self.offloaded.pop(key, None) is channel, f"channel {key} was not announced"
        self.offload_calls.append(("unbound", *key))

    @property
    def address(self) -> Addr:
        return self._address

    @property
    def port(self) -> int:
        return self._address[1]

    @property
    def closed(self) -> bool:
        return self.close_count > 0

    def attach(self, allocation: Allocation | None) -> None:
        self.attached = allocation

    def close(self) -> None:
        self.close_count += 1
        self._factory.open_ports.discard(self.port)


@dataclass
class OpenCall:
    listener: str
    family: int
    even: bool
    pair: bool


@dataclass
class FakeRelayFactory:
    """Hands out ports counting up from `first_port`; `exhausted` makes every open fail."""

    first_port: int = 31001  # odd on purpose: EVEN-PORT must skip it
    exhausted: bool = False
    refused_families: set[int] = field(default_factory=set)  # opens of these families fail
    calls: list[OpenCall] = field(default_factory=list)
    handles: list[FakeRelay] = field(default_factory=list)
    open_ports: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._next = self.first_port

    def open(
        self, listener: ListenerConfig, family: int, *, even: bool = False, pair: bool = False
    ) -> tuple[FakeRelay, FakeRelay | None] | None:
        self.calls.append(OpenCall(listener.name, family, even, pair))
        if self.exhausted or family in self.refused_families:
            return None
        port = self._next
        if even and port % 2:
            port += 1
        self._next = port + (2 if pair else 1)
        ip = family_address(listener, family)
        relay = self._handle((ip, port))
        spare = self._handle((ip, port + 1)) if pair else None
        return relay, spare

    def _handle(self, address: Addr) -> FakeRelay:
        handle = FakeRelay(self, address)
        self.handles.append(handle)
        self.open_ports.add(address[1])
        return handle

    def by_port(self, port: int) -> FakeRelay:
        return next(h for h in self.handles if h.port == port)


# -- the harness and its clients --------------------------------------------------------------


class Harness:
    def __init__(
        self,
        config: StunnerConfig | None = None,
        *,
        software: str = "",
        alternate_server: Addr | None = None,
    ) -> None:
        self.config = config or make_config()
        self.relays = FakeRelayFactory()
        self.server = TurnServer(
            self.config,
            self.relays,
            nonce_secret=b"nonce-secret-for-tests-0123456789",
            software=software,
            alternate_server=alternate_server,
        )

    def client(
        self,
        addr: Addr = CLIENT,
        *,
        listener: str = "udp",
        username: str = USER,
        password: str = PASSWORD,
    ) -> Client:
        return Client(self, addr, listener, username, password)

    def allocation(self, client: Client) -> Allocation:
        return self.server.allocations[client.ctx.listener][client.ctx.client]

    def has_allocation(self, client: Client) -> bool:
        return client.ctx.client in self.server.allocations.get(client.ctx.listener, {})

    def events(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.server.events if isinstance(e, kind)]


class Client:
    def __init__(
        self, harness: Harness, addr: Addr, listener: str, username: str, password: str
    ) -> None:
        self.h = harness
        self.server = harness.server
        transport = "tcp" if listener == "tcp" else "udp"
        self.ctx = Context(listener=listener, transport=transport, client=addr, link=FakeLink())
        self.username = username
        self.password = password
        self.realm: str | None = None
        self.nonce: bytes | None = None

    @property
    def key(self) -> bytes:
        return lt_key(self.username, self.realm or REALM, self.password)

    # raw I/O

    def send(self, data: bytes, now: float = T0) -> list[Output]:
        return self.server.handle_stun(self.ctx, data, now)

    def transact(self, data: bytes, now: float = T0) -> Message:
        """Send one request; exactly one answer must come back, to this client."""
        outputs = self.send(data, now)
        assert len(outputs) == 1, outputs
        sink, addr, raw = outputs[0]
        assert sink is self.ctx.link
        assert addr == self.ctx.client
        return stun.parse_message(raw)

    # requests

    def build(
        self,
        method: int,
        attrs: Attrs = (),
        *,
        tid: bytes | None = None,
        auth: bool = True,
        cls: int = stun.CLASS_REQUEST,
        fingerprint: bool = True,
        key: bytes | None = None,
        username: str | None = None,
        nonce: bytes | None = None,
    ) -> bytes:
        tid = tid or os.urandom(12)
        body = list(attrs)
        integrity = None
        if auth:
            assert self.nonce is not None, "no nonce yet: call fetch_nonce() first"
            body += [
                (stun.ATTR_USERNAME, (self.username if username is None else username).encode()),
                (stun.ATTR_REALM, (self.realm or REALM).encode()),
                (stun.ATTR_NONCE, self.nonce if nonce is None else nonce),
            ]
            integrity = self.key if key is None else key
        return stun.encode_message(
            method, cls, tid, body, integrity_key=integrity, fingerprint=fingerprint
        )

    def fetch_nonce(self, now: float = T0) -> Message:
        """The first leg of the long-term credential dance: an unsigned Allocate earns 401."""
        resp = self.transact(self.build(stun.METHOD_ALLOCATE, UDP_TRANSPORT, auth=False), now)
        assert error_code(resp) == 401
        self.learn(resp)
        return resp

    def learn(self, resp: Message) -> None:
        realm, nonce = resp.get(stun.ATTR_REALM), resp.get(stun.ATTR_NONCE)
        assert realm is not None and nonce is not None
        self.realm = realm.decode()
        self.nonce = nonce

    def request(
        self, method: int, attrs: Attrs = (), *, now: float = T0, tid: bytes | None = None, **kw
    ) -> Message:
        if self.nonce is None:
            self.fetch_nonce(now)
        return self.transact(self.build(method, attrs, tid=tid, **kw), now)

    def allocate(self, attrs: Attrs | None = None, *, now: float = T0, **kw) -> Message:
        return self.request(
            stun.METHOD_ALLOCATE, UDP_TRANSPORT if attrs is None else attrs, now=now, **kw
        )

    def refresh(self, lifetime: int | None = None, *, now: float = T0, **kw) -> Message:
        attrs = [] if lifetime is None else [(stun.ATTR_LIFETIME, stun.encode_u32(lifetime))]
        return self.request(stun.METHOD_REFRESH, attrs, now=now, **kw)

    def create_permission(self, *peers: Addr, now: float = T0, **kw) -> Message:
        tid = os.urandom(12)
        attrs = [(stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(p, tid)) for p in peers]
        return self.request(stun.METHOD_CREATE_PERMISSION, attrs, now=now, tid=tid, **kw)

    def channel_bind(self, number: int, peer: Addr, *, now: float = T0, **kw) -> Message:
        tid = os.urandom(12)
        attrs = [
            (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(number)),
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)),
        ]
        return self.request(stun.METHOD_CHANNEL_BIND, attrs, now=now, tid=tid, **kw)

    def send_indication(self, peer: Addr, data: bytes, *, now: float = T0) -> list[Output]:
        tid = os.urandom(12)
        attrs = [
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)),
            (stun.ATTR_DATA, data),
        ]
        msg = stun.encode_message(stun.METHOD_SEND, stun.CLASS_INDICATION, tid, attrs)
        return self.send(msg, now)

    def channel_data(self, number: int, payload: bytes) -> list[Output]:
        return self.server.handle_channel_data(self.ctx, stun.encode_channel_data(number, payload))


UDP_TRANSPORT = [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(17))]


# -- reading answers ------------------------------------------------------------------------


def error_code(msg: Message) -> int:
    assert msg.cls == stun.CLASS_ERROR, f"expected an error response, got class {msg.cls:#x}"
    raw = msg.get(stun.ATTR_ERROR_CODE)
    assert raw is not None
    return stun.decode_error_code(raw)[0]


def assert_success(msg: Message, method: int) -> None:
    if msg.cls == stun.CLASS_ERROR:
        raise AssertionError(
            f"error {stun.decode_error_code(msg.get(stun.ATTR_ERROR_CODE) or b'')}"
        )
    assert msg.cls == stun.CLASS_SUCCESS
    assert msg.method == method


def xor_address(msg: Message, attr: int) -> Addr:
    raw = msg.get(attr)
    assert raw is not None, f"attribute {attr:#06x} missing"
    return stun.decode_xor_address(raw, msg.transaction_id)


def lifetime_of(msg: Message) -> int:
    raw = msg.get(stun.ATTR_LIFETIME)
    assert raw is not None
    return stun.decode_u32(raw)


def attr_types(msg: Message) -> list[int]:
    return [t for t, _ in msg.attributes]


def allocated(h: Harness | None = None, **kw: Any) -> tuple[Harness, Client]:
    """A harness (a new one unless given) with one client that holds an allocation, and no
    events yet."""
    h = h or Harness()
    c = h.client(**kw)
    assert_success(c.allocate(now=T0), stun.METHOD_ALLOCATE)
    h.server.events.clear()
    return h, c
