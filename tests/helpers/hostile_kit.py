"""Helpers for the hostile-input tests: a fake relay factory for the sans-IO state machine,
a message builder, a corpus of real requests, and a small UDP TURN client for real sockets."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from stunner_dp import stun
from stunner_dp.config import AdminConfig, AuthConfig, ClusterConfig, ListenerConfig, StunnerConfig
from stunner_dp.testing import DEFAULT_PASSWORD, DEFAULT_USERNAME
from stunner_dp.turn.allocation import Allocation
from stunner_dp.turn.auth import ephemeral_password, long_term_key
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr, Context

NOW = 1_700_000_000.0
REALM = "stunner.l7mp.io"  # stunnerd's default realm: the size users will really run with
USER, PASSWORD = "user-1", "pass-1"
KEY = long_term_key(USER, REALM, PASSWORD)
SOFTWARE = "stunner-dp hostile-test"
RELAY_IP = "198.51.100.1"
OWNER: Addr = ("192.0.2.10", 40000)  # has an allocation in `loaded_server`
STRANGER: Addr = ("192.0.2.66", 40666)  # has none
PEER: Addr = ("93.184.216.34", 7000)  # permitted, channel 0x4000
OTHER_PEER: Addr = ("93.184.216.35", 7001)  # global, not permitted
CHANNEL = 0x4000
# ephemeral (TURN REST API) auth: the server `new_server(ephemeral=True)` holds this secret
REST_SECRET = "hostile-rest-secret"
REST_USER = f"{int(NOW) + 86400}:alice"  # good for a day after NOW


def rest_key(username: str, realm: str = REALM, secret: str = REST_SECRET) -> bytes:
    """The long-term key of a TURN REST API username."""
    return long_term_key(username, realm, ephemeral_password(secret, username))


REST_KEY = rest_key(REST_USER)
# usernames a REST API parser must survive: not-ASCII digits, no timestamp, expired, huge,
# empty parts, control characters
HOSTILE_REST_USERS = (
    "\u00b2:x",
    "1\u00b2:alice",
    "\u0663\u0663\u0663:alice",
    "\uff11\uff12:alice",
    "alice",
    ":",
    "::::",
    f"{int(NOW) - 1}:alice",
    "9" * 400 + ":alice",
    f"alice:{int(NOW) + 60}",
    "0:0:0",
    "evil\x00\x1b[31m:1",
)

Attrs = list[tuple[int, bytes]]


# -- the state machine without sockets -----------------------------------------------------


@dataclass(eq=False)
class FakeRelay:
    factory: FakeRelays
    address: Addr
    sent: list[tuple[bytes, Addr]] = field(default_factory=list)
    allocation: Allocation | None = None
    closed: bool = False
    dont_fragment: bool = False

    def sendto(self, data: bytes, addr: Addr) -> None:
        self.sent.append((bytes(data), addr))

    def attach(self, allocation: Allocation | None) -> None:
        self.allocation = allocation

    def channel_bound(self, allocation: Allocation, channel: object) -> None:
        pass

    def set_dont_fragment(self) -> bool:
        self.dont_fragment = True
        return True

    def channel_unbound(self, channel: object) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.factory.in_use.discard(self.address[1])


class FakeRelays:
    """A RelayFactory handing out made-up ports from a fixed-size range."""

    def __init__(self, low: int = 30000, high: int = 30099) -> None:
        self.low, self.high = low, high
        self.in_use: set[int] = set()

    def open(
        self, listener: ListenerConfig, family: int, *, even: bool = False, pair: bool = False
    ) -> tuple[FakeRelay, FakeRelay | None] | None:
        step = 2 if even or pair else 1
        for port in range(self.low + (self.low & 1 if step == 2 else 0), self.high + 1, step):
            want = (port, port + 1) if pair else (port,)
            if any(p in self.in_use or p > self.high for p in want):
                continue
            self.in_use.update(want)
            first = FakeRelay(self, (RELAY_IP, port))
            return first, FakeRelay(self, (RELAY_IP, port + 1)) if pair else None
        return None


class FakeLink:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Addr]] = []

    def sendto(self, data: bytes, addr: Addr) -> None:
        self.sent.append((bytes(data), addr))


def sm_config(
    admin: AdminConfig | None = None, realm: str = REALM, *, ephemeral: bool = False
) -> StunnerConfig:
    auth = (
        AuthConfig(type="ephemeral", realm=realm, secret=REST_SECRET)
        if ephemeral
        else AuthConfig(type="static", realm=realm, username=USER, password=PASSWORD)
    )
    return StunnerConfig(
        admin=admin or AdminConfig(),
        auth=auth,
        listeners=(
            ListenerConfig(name="udp", protocol="TURN-UDP", address=RELAY_IP, routes=("pub",)),
            ListenerConfig(name="tcp", protocol="TURN-TCP", address=RELAY_IP, routes=("pub",)),
        ),
        clusters=(ClusterConfig(name="pub", endpoints=("0.0.0.0/0", "::/0")),),
    )


def new_server(
    admin: AdminConfig | None = None, realm: str = REALM, *, ephemeral: bool = False
) -> TurnServer:
    return TurnServer(
        sm_config(admin, realm, ephemeral=ephemeral),
        FakeRelays(),
        nonce_secret=b"s" * 32,
        software=SOFTWARE,
    )


def ctx(client: Addr = OWNER, listener: str = "udp", link: Any = None) -> Context:
    transport = "tcp" if listener == "tcp" else "udp"
    return Context(listener, transport, client, link or FakeLink())


def build(
    method: int,
    attrs: Callable[[bytes], Attrs] | Attrs = (),
    *,
    cls: int = stun.CLASS_REQUEST,
    key: bytes | None = None,
    nonce: str = "",
    username: str = USER,
    realm: str = REALM,
    fingerprint: bool = False,
    tid: bytes | None = None,
) -> bytes:
    """One message; `attrs` may be a function of the transaction id (for XOR addresses).
    With `key`, USERNAME/REALM/NONCE and MESSAGE-INTEGRITY are added."""
    tid = tid or os.urandom(12)
    body = list(attrs(tid) if callable(attrs) else attrs)
    if key is not None:
        body += [
            (stun.ATTR_USERNAME, stun.encode_text(username)),
            (stun.ATTR_REALM, stun.encode_text(realm)),
            (stun.ATTR_NONCE, stun.encode_text(nonce)),
        ]
    return stun.encode_message(method, cls, tid, body, integrity_key=key, fingerprint=fingerprint)


def peer_attr(peer: Addr) -> Callable[[bytes], Attrs]:
    return lambda tid: [(stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid))]


UDP = [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(stun.TRANSPORT_UDP))]


def method_bodies() -> dict[str, tuple[int, Callable[[bytes], Attrs]]]:
    """A typical body of every request method (and Send), by name."""
    return {
        "Binding": (stun.METHOD_BINDING, lambda tid: []),
        "Allocate": (stun.METHOD_ALLOCATE, lambda tid: list(UDP)),
        "Allocate-even": (
            stun.METHOD_ALLOCATE,
            lambda tid: [*UDP, (stun.ATTR_EVEN_PORT, stun.encode_even_port(True))],
        ),
        "Refresh": (stun.METHOD_REFRESH, lambda tid: [(stun.ATTR_LIFETIME, stun.encode_u32(900))]),
        "Refresh-0": (stun.METHOD_REFRESH, lambda tid: [(stun.ATTR_LIFETIME, stun.encode_u32(0))]),
        "CreatePermission": (stun.METHOD_CREATE_PERMISSION, peer_attr(OTHER_PEER)),
        "ChannelBind": (
            stun.METHOD_CHANNEL_BIND,
            lambda tid: [
                (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(0x4001)),
                *peer_attr(OTHER_PEER)(tid),
            ],
        ),
    }


def corpus(nonce: str) -> list[bytes]:
    """Real messages of every method: unsigned, signed right, signed with a wrong key and with
    a bad nonce, with and without FINGERPRINT; Send indications and ChannelData; bare headers."""
    out: list[bytes] = []
    wrong = long_term_key(USER, REALM, "not-the-password")
    for method, attrs in method_bodies().values():
        for fp in (False, True):
            out.append(build(method, attrs, fingerprint=fp))
            out.append(build(method, attrs, key=KEY, nonce=nonce, fingerprint=fp))
        out.append(build(method, attrs, key=wrong, nonce=nonce))
        out.append(build(method, attrs, key=KEY, nonce="A" * 22))
        out.append(build(method, attrs, key=KEY, nonce=nonce, username="someone-else"))
        out.append(build(method))  # a bare 20-byte header
    for peer in (PEER, OTHER_PEER):
        tid = os.urandom(12)
        send = [
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)),
            (stun.ATTR_DATA, b"x" * 40),
        ]
        out.append(build(stun.METHOD_SEND, send, cls=stun.CLASS_INDICATION, tid=tid))
    out.append(stun.encode_channel_data(CHANNEL, b"media" * 10))
    out.append(stun.encode_channel_data(0x4001, b"media"))
    return out


def rest_corpus(nonce: str) -> list[bytes]:
    """Requests of every method signed by TURN REST API users: the good one, and each of
    HOSTILE_REST_USERS signed with the password the secret gives it."""
    out: list[bytes] = []
    for method, attrs in method_bodies().values():
        out.append(build(method, attrs, key=REST_KEY, nonce=nonce, username=REST_USER))
        for user in HOSTILE_REST_USERS:
            out.append(build(method, attrs, key=rest_key(user), nonce=nonce, username=user))
    return out


def loaded_server(
    admin: AdminConfig | None = None, *, ephemeral: bool = False
) -> tuple[TurnServer, Allocation]:
    """A server where OWNER holds an allocation with a permission for PEER and channel
    0x4000 bound to it (with `ephemeral`, made by REST_USER)."""
    turn = new_server(admin, ephemeral=ephemeral)
    key, username = (REST_KEY, REST_USER) if ephemeral else (KEY, USER)
    c = ctx(OWNER)
    nonce = turn.nonce_for(c, NOW)
    for method, attrs in (
        (stun.METHOD_ALLOCATE, UDP),
        (
            stun.METHOD_CHANNEL_BIND,
            lambda tid: [
                (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(CHANNEL)),
                *peer_attr(PEER)(tid),
            ],
        ),
    ):
        data = build(method, attrs, key=key, nonce=nonce, username=username)
        out = turn.handle_stun(c, data, NOW)
        assert out and stun.parse_message(out[0][2]).cls == stun.CLASS_SUCCESS
    turn.drain_events()
    return turn, turn.allocations["udp"][OWNER]


def snapshot(turn: TurnServer) -> Any:
    """Everything an unauthenticated message must not change."""
    allocs = {}
    for name, table in turn.allocations.items():
        for client, a in table.items():
            allocs[(name, client)] = (
                a.expires,
                sorted((ip, p.expires, p.ports.ranges) for ip, p in a.permissions.items()),
                sorted((n, c.peer, c.expires) for n, c in a.bindings.items()),
                a.relay.address,
            )
    return allocs, dict(turn.user_allocations), sorted(turn.reservations)


def validly_signed(data: bytes, key: bytes = KEY) -> bool:
    try:
        msg = stun.parse_message(data)
    except stun.StunError:
        return False
    return msg.has(stun.ATTR_MESSAGE_INTEGRITY) and msg.check_integrity(key)


def validly_signed_rest(data: bytes) -> bool:
    """Signed with the key REST_SECRET gives its own USERNAME (whether or not that username
    is a valid one)."""
    try:
        msg = stun.parse_message(data)
        raw = msg.get(stun.ATTR_USERNAME)
        username = stun.decode_text(raw) if raw is not None else None
    except stun.StunError:
        return False
    if username is None or not msg.has(stun.ATTR_MESSAGE_INTEGRITY):
        return False
    return msg.check_integrity(rest_key(username))


# -- a UDP TURN client on real sockets -----------------------------------------------------


class _Proto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.pending: dict[bytes, asyncio.Future[stun.Message]] = {}
        self.other: asyncio.Queue[tuple[bytes, Addr]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if stun.is_stun(data):
            try:
                msg = stun.parse_message(data)
            except stun.StunError:
                msg = None
            if msg is not None and msg.cls in (stun.CLASS_SUCCESS, stun.CLASS_ERROR):
                fut = self.pending.pop(msg.transaction_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                    return
        self.other.put_nowait((data, (str(addr[0]), int(addr[1]))))


class UdpTurn:
    """A TURN client over UDP that can bind any local address (127.0.0.x)."""

    def __init__(self, server: Addr, local: Addr = ("127.0.0.1", 0)) -> None:
        self.server, self.local = server, local
        self.proto = _Proto()
        self.transport: asyncio.DatagramTransport | None = None
        self.nonce, self.realm = "", ""
        self.username, self.key = DEFAULT_USERNAME, b""

    async def __aenter__(self) -> UdpTurn:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self.proto, local_addr=self.local, remote_addr=self.server
        )
        self.transport = cast(asyncio.DatagramTransport, transport)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    @property
    def local_address(self) -> Addr:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def ask(
        self,
        method: int,
        attrs: Callable[[bytes], Attrs] | Attrs = (),
        *,
        auth: bool = True,
        timeout: float = 2.0,
        **kw: Any,
    ) -> stun.Message:
        tid = os.urandom(12)
        if auth:
            kw.setdefault("key", self.key)
            kw.setdefault("nonce", self.nonce)
            kw.setdefault("realm", self.realm)
            kw.setdefault("username", self.username)
        fut: asyncio.Future[stun.Message] = asyncio.get_running_loop().create_future()
        self.proto.pending[tid] = fut
        self.send(build(method, attrs, tid=tid, **kw))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.proto.pending.pop(tid, None)

    async def login(
        self, username: str = DEFAULT_USERNAME, password: str = DEFAULT_PASSWORD
    ) -> stun.Message:
        first = await self.ask(stun.METHOD_ALLOCATE, UDP, auth=False)
        assert code(first) == 401
        self.realm = stun.decode_text(first.get(stun.ATTR_REALM) or b"")
        self.nonce = stun.decode_text(first.get(stun.ATTR_NONCE) or b"")
        self.username, self.key = username, long_term_key(username, self.realm, password)
        return first

    async def allocate(
        self, username: str = DEFAULT_USERNAME, password: str = DEFAULT_PASSWORD
    ) -> stun.Message:
        await self.login(username, password)
        return await self.ask(stun.METHOD_ALLOCATE, UDP)

    async def permit(self, *peers: Addr) -> stun.Message:
        def attrs(tid: bytes) -> Attrs:
            return [(stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(p, tid)) for p in peers]

        return await self.ask(stun.METHOD_CREATE_PERMISSION, attrs)

    async def bind(self, channel: int, peer: Addr) -> stun.Message:
        return await self.ask(
            stun.METHOD_CHANNEL_BIND,
            lambda tid: [
                (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(channel)),
                (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)),
            ],
        )

    def send_indication(self, peer: Addr, data: bytes) -> None:
        tid = os.urandom(12)
        attrs = [
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)),
            (stun.ATTR_DATA, data),
        ]
        self.send(build(stun.METHOD_SEND, attrs, cls=stun.CLASS_INDICATION, tid=tid))

    async def received(self, timeout: float) -> list[bytes]:
        """Everything unsolicited that arrives within `timeout` seconds."""
        out: list[bytes] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (left := end - loop.time()) > 0:
            try:
                data, _ = await asyncio.wait_for(self.proto.other.get(), left)
            except TimeoutError:
                break
            out.append(data)
        return out


def code(msg: stun.Message) -> int:
    if msg.cls == stun.CLASS_SUCCESS:
        return 0
    value = msg.get(stun.ATTR_ERROR_CODE)
    assert value is not None
    return stun.decode_error_code(value)[0]


def relayed(msg: stun.Message) -> Addr:
    value = msg.get(stun.ATTR_XOR_RELAYED_ADDRESS)
    assert value is not None, code(msg)
    return stun.decode_xor_address(value, msg.transaction_id)


class PeerSocket(asyncio.DatagramProtocol):
    """A UDP peer bound to a given address; records what arrives."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Addr]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((data, (str(addr[0]), int(addr[1]))))

    @property
    def address(self) -> Addr:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def sendto(self, data: bytes, addr: Addr) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def open_peer(host: str = "127.0.0.1", port: int = 0) -> PeerSocket:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(PeerSocket, local_addr=(host, port))
    return proto
