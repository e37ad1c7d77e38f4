"""The TURN server state machine (RFC 8656 over RFC 8489): bytes in, bytes out, no I/O.

`TurnServer.handle_stun` takes one STUN message from a client and returns what to send where.
Media takes the shell's hot path instead (see `allocation.py`); `handle_channel_data` and
`handle_peer_data` here are the same rules written plainly, for stream transports and tests.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from stunner_dp import stun
from stunner_dp.config import ListenerConfig, StunnerConfig
from stunner_dp.stun import ErrorCode, Message, StunError, data_indication
from stunner_dp.turn import discovery
from stunner_dp.turn import events as ev
from stunner_dp.turn.access import OwnAddresses, PeerAccess, PortSet
from stunner_dp.turn.allocation import Allocation, Traffic
from stunner_dp.turn.auth import (
    OFFERED_ALGORITHMS,
    Credentials,
    Nonces,
    NonceState,
    nonce_binding,
    quota_user,
)
from stunner_dp.turn.families import address_family, normalize_peer, relay_families
from stunner_dp.turn.ratelimit import (
    AuthFailureLimiter,
    Limits,
    LocalLimits,
    UnauthLimiter,
    Verdict,
)
from stunner_dp.turn.requests import Authenticated, Handler, Reject
from stunner_dp.turn.tcp_allocations import TcpAllocations
from stunner_dp.turn.types import (
    STREAM_TRANSPORTS,
    Addr,
    Context,
    DiscoveryLinks,
    Output,
    RelayFactory,
    RelayHandle,
    Sink,
)

DEFAULT_LIFETIME = 600
MAX_LIFETIME = 3600
RESERVATION_LIFETIME = 30.0
STUN_ONLY = "none"  # auth.type of STUNner's STUN server mode
# RFC 8656 narrowed channel numbers to 0x4000-0x4FFF; RFC 5766 clients (coturn's uclient among
# them) pick from 0x4000-0x7FFF, and pion/turn (STUNner), coturn and libwebrtc accept it all.
CHANNEL_MAX = 0x7FFF


@dataclass(slots=True, frozen=True)
class AllocateRequest:
    """An Allocate that passed its checks: what opening its relay and answering it take."""

    listener: ListenerConfig
    family: int  # of the relay address: REQUESTED-ADDRESS-FAMILY's, else IPv4 when offered
    token: bytes | None  # RESERVATION-TOKEN: take the port reserved under it
    even: bool  # EVEN-PORT: an even port
    reserve: bool  # EVEN-PORT's R bit: and reserve the next one
    quota_user: str
    lifetime: int
    extra: tuple[tuple[int, bytes], ...]  # attributes for the answer (ADDRESS-ERROR-CODE)
    dont_fragment: bool = False  # DONT-FRAGMENT: the relay sends with DF set
    tcp: bool = False  # REQUESTED-TRANSPORT TCP: a TCP relay (RFC 6062)
    additional: bool = False  # ADDITIONAL-ADDRESS-FAMILY: an IPv6 relay too (dual allocation)


# What a challenge offers (our order of preference) and what a request may pick from it.
OFFERED_PASSWORD_ALGORITHMS = stun.encode_password_algorithms(
    [(alg, b"") for alg in OFFERED_ALGORITHMS]
)
OFFERED_CHOICES = {stun.encode_password_algorithm(alg): alg for alg in OFFERED_ALGORITHMS}


def _signed_with(msg: Message, key: bytes) -> bool:
    """Is the request signed with this key? MESSAGE-INTEGRITY-SHA256 when it has one (RFC 8489
    9.2.4 checks it first), else MESSAGE-INTEGRITY."""
    if msg.integrity_sha256_offset >= 0:
        return msg.check_integrity_sha256(key)
    return msg.check_integrity(key)


class TurnServer:
    def __init__(
        self,
        config: StunnerConfig,
        relays: RelayFactory,
        *,
        nonce_secret: bytes,
        access: PeerAccess | None = None,
        software: str = "",
        alternate_server: Addr | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.relays = relays
        # where quotas and rate limits count: this process, or every worker of the dataplane
        self.limits = limits or LocalLimits()
        self.nonces = Nonces(nonce_secret)
        self.software = software
        self.alternate_server = alternate_server
        self.draining = False
        # listener name -> client address -> allocation: the shell's first hot-path lookup
        self.allocations: dict[str, dict[Addr, Allocation]] = {}
        self.user_allocations: Counter[str] = Counter()
        # (listener, token) -> reserved port: a token is good only where it was issued
        self.reservations: dict[tuple[str, bytes], tuple[RelayHandle, float]] = {}
        # (listener, cluster, framed) -> counts of deleted allocations
        self.retired: dict[tuple[str, str, bool], Traffic] = {}
        self.events: list[ev.Event] = []
        self.malformed = 0
        # abuse counters, plain ints for the metrics: requests dropped by the per-IP limit on
        # unauthenticated answers, failed authentications, 401s sent unchecked to a locked user
        self.rate_limited = 0
        self.auth_failures = 0
        self.auth_locked = 0
        self.internal_errors = 0  # requests dropped by an unexpected exception (a bug)
        self.unauth_limiter = UnauthLimiter(config.admin.unauth_rate_per_ip, self.limits)
        self.auth_limiter = AuthFailureLimiter(
            config.admin.auth_failures_per_user, limits=self.limits
        )
        # RFC 6062: the TCP allocations, their peer connections and the shell's TCP relays
        self.tcp = TcpAllocations(self)
        self._handlers: dict[int, Handler] = {
            stun.METHOD_ALLOCATE: self._allocate,
            stun.METHOD_REFRESH: self._refresh,
            stun.METHOD_CREATE_PERMISSION: self._create_permission,
            stun.METHOD_CHANNEL_BIND: self._channel_bind,
            stun.METHOD_CONNECT: self.tcp.connect,
            stun.METHOD_CONNECTION_BIND: self.tcp.connection_bind,
        }
        self.config = config
        self.credentials = Credentials(config.auth)
        self.access = access or PeerAccess.from_config(config)
        self._listeners = {listener.name: listener for listener in config.listeners}
        self._own = OwnAddresses()
        self._own_config: StunnerConfig | None = None  # the config `_own` was built from
        self._host_ips: tuple[str, ...] = ()  # the host's addresses (`set_host_addresses`)
        # RFC 5780: listener name -> its four sockets, registered by the shell
        self.discovery: dict[str, DiscoveryLinks] = {}

    # -- configuration ------------------------------------------------------------------------

    def update_config(self, config: StunnerConfig, access: PeerAccess | None = None) -> None:
        """Apply a new config live: credentials, limits, clusters and routes. Permissions and
        channels that the new rules no longer allow are revoked at once; allocations of
        listeners that are gone are deleted."""
        self.config = config
        self.credentials = Credentials(config.auth)
        self.access = access or PeerAccess.from_config(config)
        self._listeners = {listener.name: listener for listener in config.listeners}
        if self.unauth_limiter.rate != config.admin.unauth_rate_per_ip:
            self.unauth_limiter = UnauthLimiter(config.admin.unauth_rate_per_ip, self.limits)
        if self.auth_limiter.limit != config.admin.auth_failures_per_user:
            self.auth_limiter = AuthFailureLimiter(
                config.admin.auth_failures_per_user, limits=self.limits
            )
        for name in [n for n in self.allocations if n not in self._listeners]:
            for alloc in list(self.allocations[name].values()):
                self.delete(alloc, "listener removed")
            del self.allocations[name]
            self.drop_reservations(name)
        self.revalidate()

    def revalidate(self) -> None:
        """Hold every permission against the current peer rules (after a config change or a
        DNS update)."""
        for table in self.allocations.values():
            for alloc in table.values():
                keep = {}
                tcp = alloc in self.tcp.allocations
                for ip in alloc.permissions:
                    ports = self._peer_ports(alloc.listener, ip, tcp=tcp)
                    if ports is not None:
                        keep[ip] = ports
                alloc.revoke(keep)
                if alloc in self.tcp.allocations:
                    self.tcp.revalidate(alloc)

    # -- entry points -------------------------------------------------------------------------

    def handle_stun(self, ctx: Context, data: bytes, now: float) -> list[Output]:
        """One STUN message from a client: what to send where. Never raises: a bug that some
        input reaches costs that packet (dropped, counted in `internal_errors`, reported as a
        `RequestFailed` event whose log is rate limited), not the server."""
        try:
            return self._handle_stun(ctx, data, now)
        except Exception as exc:
            self.internal_errors += 1
            self.events.append(ev.RequestFailed(ctx.listener, ctx.client, exc))
            return []

    def _handle_stun(self, ctx: Context, data: bytes, now: float) -> list[Output]:
        try:
            msg = stun.parse_message(data)
        except StunError:
            self.malformed += 1
            return []
        if msg.cls == stun.CLASS_REQUEST:
            # Answers to unauthenticated requests are rate limited per source IP, so a spoofed
            # source cannot make us a reflector: unsigned requests pay before any work, signed
            # ones only when they fail authentication. Not on streams: their source finished a
            # handshake (it is not spoofed) and a dropped answer there is never retransmitted.
            limited = ctx.transport not in STREAM_TRANSPORTS
            signed = msg.integrity_offset >= 0 or msg.integrity_sha256_offset >= 0
            if limited and not signed and not self.unauth_limiter.allow(ctx.client[0], now):
                self.rate_limited += 1
                return []
            sink: Sink = ctx.link
            links = self.discovery.get(ctx.listener)
            if links is not None and (
                msg.method == stun.METHOD_BINDING or ctx.link is not links[0].sink
            ):
                sink, response = self._discovery_request(ctx, msg, links)
                authenticated = False
            else:
                response, authenticated = self._request(ctx, msg, now)
            if (
                limited
                and signed
                and not authenticated
                and not self.unauth_limiter.allow(ctx.client[0], now)
            ):
                self.rate_limited += 1
                return []
            if not response:  # a Connect: answered once its peer connection is up or failed
                return []
            return [(sink, ctx.client, response)]
        if msg.cls == stun.CLASS_INDICATION and msg.method == stun.METHOD_SEND:
            return self._send_indication(ctx, msg)
        return []  # responses, and indications a server never acts on

    def handle_channel_data(self, ctx: Context, data: bytes) -> list[Output]:
        alloc = self.allocations.get(ctx.listener, {}).get(ctx.client)
        if alloc is None:
            return []
        try:
            number, payload = stun.parse_channel_data(data, CHANNEL_MAX)
        except StunError:
            self.malformed += 1
            return []
        chan = alloc.channels.get(number)
        if chan is None:
            return []
        chan.out_packets += 1
        chan.out_bytes += len(payload)
        return [(chan.relay, chan.peer, payload)]

    def handle_peer_data(self, alloc: Allocation, peer: Addr, data: bytes) -> list[Output]:
        chan = alloc.peer_channels.get(peer)
        if chan is not None:
            chan.in_packets += 1
            chan.in_bytes += len(data)
            frame = stun.encode_channel_data(
                chan.number, data, pad=alloc.transport in STREAM_TRANSPORTS, max_channel=CHANNEL_MAX
            )
            return [(alloc.link, alloc.client, frame)]
        perm = alloc.permissions.get(peer[0])
        if perm is None or peer[1] not in perm.ports:
            return []
        perm.in_packets += 1
        perm.in_bytes += len(data)
        return [(alloc.link, alloc.client, data_indication(peer, data))]

    def expire(self, now: float) -> None:
        """Run the timers: allocations, permissions, channels and port reservations."""
        if self.tcp.connections:
            self.tcp.expire(now)
        for token in [t for t, (_, exp) in self.reservations.items() if exp <= now]:
            self.reservations.pop(token)[0].close()
        for table in self.allocations.values():
            for alloc in list(table.values()):
                if alloc.expires <= now:
                    self.delete(alloc, "expired")
                elif alloc.soonest <= now:
                    alloc.expire(now)

    def drop_reservations(self, listener: str) -> None:
        """Free the ports reserved by RESERVATION-TOKENs of a listener that stops or goes."""
        for key in [k for k in self.reservations if k[0] == listener]:
            self.reservations.pop(key)[0].close()

    def remove_client(self, listener: str, client: Addr, reason: str) -> None:
        """The client's connection is gone (TCP/TLS): so is its allocation (RFC 8656 3.1)."""
        alloc = self.allocations.get(listener, {}).get(client)
        if alloc is not None:
            self.delete(alloc, reason)

    def delete(self, alloc: Allocation, reason: str) -> None:
        table = self.allocations.get(alloc.listener, {})
        if table.get(alloc.client) is not alloc:
            return
        del table[alloc.client]
        self.user_allocations[alloc.quota_user] -= 1
        if self.user_allocations[alloc.quota_user] <= 0:
            del self.user_allocations[alloc.quota_user]
        self.limits.release(alloc.quota_user)
        alloc.release()  # channels stop relaying (in the kernel too) before the counts are summed
        self.tcp.close_allocation(alloc)
        for relay in alloc.relays:
            relay.attach(None)
            relay.close()
        for t in alloc.traffic():
            key = (alloc.listener, t.cluster, t.framed)
            total = self.retired.setdefault(key, Traffic(t.cluster, t.framed))
            total.out_packets += t.out_packets
            total.out_bytes += t.out_bytes
            total.in_packets += t.in_packets
            total.in_bytes += t.in_bytes
        self.events.append(ev.AllocationDeleted(alloc, reason))

    def close(self) -> None:
        """Delete every allocation and free every port (server shutdown)."""
        for table in self.allocations.values():
            for alloc in list(table.values()):
                self.delete(alloc, "server stopped")
        for handle, _ in self.reservations.values():
            handle.close()
        self.reservations.clear()

    def drain_events(self) -> list[ev.Event]:
        out, self.events = self.events, []
        return out

    @property
    def allocation_count(self) -> int:
        return sum(len(t) for t in self.allocations.values())

    def all_allocations(self) -> list[Allocation]:
        return [a for t in self.allocations.values() for a in t.values()]

    # -- requests -----------------------------------------------------------------------------

    def _request(self, ctx: Context, msg: Message, now: float) -> tuple[bytes, bool]:
        """The response, and whether the request passed authentication."""
        unknown = msg.unknown_required(stun.KNOWN_ATTRIBUTES)  # each type once
        if unknown:
            attrs = [(stun.ATTR_UNKNOWN_ATTRIBUTES, stun.encode_unknown_attributes(unknown))]
            return self._error(ctx, msg, ErrorCode.UNKNOWN_ATTRIBUTE, attrs=attrs), False
        if msg.method == stun.METHOD_BINDING:
            # a dual-stack socket's IPv4 client (::ffff:a.b.c.d) is told its IPv4 address
            mapped = stun.encode_xor_address(normalize_peer(ctx.client[:2]), msg.transaction_id)
            binding = [(stun.ATTR_XOR_MAPPED_ADDRESS, mapped)]
            return self._response(msg, stun.CLASS_SUCCESS, binding), False
        handler = self._handlers.get(msg.method)
        if handler is None:
            return self._error(ctx, msg, ErrorCode.BAD_REQUEST, "Unknown method"), False
        if self.credentials.type == STUN_ONLY:
            return self._refuse_turn(ctx, msg, now), False
        auth = self._authenticate(ctx, msg, now)
        if isinstance(auth, bytes):
            return auth, False
        return self._handle(ctx, msg, handler, auth, now), True

    def _handle(
        self, ctx: Context, msg: Message, handler: Handler, auth: Authenticated, now: float
    ) -> bytes:
        """Run an authenticated request's handler; a `Reject` becomes a signed error."""
        try:
            attrs = handler(ctx, msg, auth, now)
        except Reject as rej:
            return self._error(ctx, msg, rej.code, rej.reason, rej.attrs, key=auth.key)
        except StunError as exc:  # a malformed attribute in an otherwise good request
            return self._error(ctx, msg, ErrorCode.BAD_REQUEST, f"Bad Request: {exc}", key=auth.key)
        if isinstance(attrs, bytes):
            return attrs
        if self.software:
            attrs.append((stun.ATTR_SOFTWARE, self.software.encode()))
        return self._response(msg, stun.CLASS_SUCCESS, attrs, key=auth.key)

    def _authenticate(self, ctx: Context, msg: Message, now: float) -> Authenticated | bytes:
        """RFC 8489 9.2.4, in its order (but the nonce is checked before the MAC: cheaper)."""
        realm = self.credentials.realm
        if msg.integrity_offset < 0 and msg.integrity_sha256_offset < 0:
            return self._challenge(ctx, msg, ErrorCode.UNAUTHORIZED, now)
        raw_user, raw_hash, raw_realm, raw_nonce = (
            msg.get(stun.ATTR_USERNAME),
            msg.get(stun.ATTR_USERHASH),
            msg.get(stun.ATTR_REALM),
            msg.get(stun.ATTR_NONCE),
        )
        if (raw_user is None and raw_hash is None) or raw_realm is None or raw_nonce is None:
            return self._error(
                ctx, msg, ErrorCode.BAD_REQUEST, "Missing USERNAME or USERHASH, REALM or NONCE"
            )
        try:
            client_realm = stun.decode_text(raw_realm)
            nonce = stun.decode_text(raw_nonce)
            if raw_user is not None:
                username = stun.decode_text(raw_user, stun.MAX_USERNAME_BYTES)
            else:  # USERHASH (14.4): only a user we can list has one; else 401 below
                username = self.credentials.username_for_hash(bytes(raw_hash or b"")) or ""
        except StunError:
            return self._error(
                ctx, msg, ErrorCode.BAD_REQUEST, "Malformed USERNAME, REALM or NONCE"
            )
        algorithm = self._password_algorithm(msg, nonce)
        if isinstance(algorithm, str):  # a bid-down attempt or a broken client: 400 (9.2.4)
            return self._error(ctx, msg, ErrorCode.BAD_REQUEST, algorithm)
        # bound to the client's address: one captured elsewhere and replayed here is stale
        if self.nonces.check(nonce, now, self._request_binding(ctx, msg)) is not NonceState.OK:
            return self._challenge(ctx, msg, ErrorCode.STALE_NONCE, now)
        quser = quota_user(username, self.credentials.type)
        if self.auth_limiter.locked(quser, ctx.client, now) and not self._on_own_allocation(
            ctx, msg, username
        ):
            self.auth_locked += 1  # too many failures for this user: 401, key not checked
            return self._challenge(ctx, msg, ErrorCode.UNAUTHORIZED, now)
        found = self.credentials.lookup(username, now, algorithm)
        reason = "unknown USERHASH" if raw_user is None and not username else found.reason
        # One MAC per accepted secret whatever the username: an unknown user is checked against
        # decoy keys, so it costs (and times) what a wrong password does.
        signed_by = [k for k in found.check_keys if _signed_with(msg, k)]
        key = signed_by[0] if found.keys and signed_by else None
        if key is None and not found.expired:
            # Requests on an allocation may keep using the credentials that made it (RFC 8656
            # 7.3), so rotating the password or secret does not strand live calls.
            alloc = self.allocations.get(ctx.listener, {}).get(ctx.client)
            if alloc is not None and alloc.username == username and _signed_with(msg, alloc.key):
                key = alloc.key
        if client_realm != realm:  # another realm: 401 with ours, whatever the key
            key, reason = None, reason or "realm mismatch"
        if key is not None and username:
            return Authenticated(username, key)
        self.auth_failures += 1
        self.auth_limiter.failed(quser, ctx.client, now)
        reason = reason or "wrong password"
        self.events.append(ev.AuthFailed(ctx.listener, ctx.client, username, reason))
        return self._challenge(ctx, msg, ErrorCode.UNAUTHORIZED, now)

    @staticmethod
    def _password_algorithm(msg: Message, nonce: str) -> int | str:
        """The password algorithm of a request (RFC 8489 9.2.4), or why it is a 400. With our
        nonce cookie's "Password algorithms" bit, PASSWORD-ALGORITHMS must come back exactly as
        we sent it and PASSWORD-ALGORITHM be one of its entries: a man in the middle who
        removed SHA-256 from our offer is caught here. Neither attribute: MD5, as an RFC 5389
        client (every browser) does."""
        raw_list = msg.get(stun.ATTR_PASSWORD_ALGORITHMS)
        raw_choice = msg.get(stun.ATTR_PASSWORD_ALGORITHM)
        features = stun.nonce_features(nonce)
        if features is None or not features & stun.SECURITY_FEATURE_PASSWORD_ALGORITHMS:
            # not our nonce (438 follows); or a cookie without the bit, which we never issue
            return stun.PASSWORD_ALGORITHM_MD5
        if raw_list is None and raw_choice is None:
            return stun.PASSWORD_ALGORITHM_MD5
        if raw_list is None or raw_choice is None:
            return "PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS go together"
        if raw_list != OFFERED_PASSWORD_ALGORITHMS:
            return "PASSWORD-ALGORITHMS differs from the list offered"
        if raw_choice not in OFFERED_CHOICES:
            return "PASSWORD-ALGORITHM is not one of PASSWORD-ALGORITHMS"
        return OFFERED_CHOICES[raw_choice]

    def _on_own_allocation(self, ctx: Context, msg: Message, username: str) -> bool:
        """Is this a request on the client's allocation, signed with the key that made it?
        Those are never locked out: a guesser on the same address ends nobody's call."""
        alloc = self.allocations.get(ctx.listener, {}).get(ctx.client)
        return alloc is not None and alloc.username == username and _signed_with(msg, alloc.key)

    def set_discovery_links(self, listener: str, links: DiscoveryLinks | None) -> None:
        """RFC 5780 for `listener`: its four sockets (None: NAT discovery off)."""
        if links is None:
            self.discovery.pop(listener, None)
        else:
            self.discovery[listener] = links

    def _discovery_request(
        self, ctx: Context, msg: Message, links: DiscoveryLinks
    ) -> tuple[Sink, bytes]:
        """A request to a NAT-discovery listener (RFC 5780): Binding is answered with
        RESPONSE-ORIGIN and OTHER-ADDRESS from the socket CHANGE-REQUEST picks; the three
        alternate sockets answer Binding only. Errors leave from the socket asked."""
        arrived = discovery.arrival(links, ctx.link)
        if arrived is None or msg.method != stun.METHOD_BINDING:
            reason = "Only Binding on the NAT-discovery addresses"
            return ctx.link, self._error(ctx, msg, ErrorCode.BAD_REQUEST, reason)
        unknown = msg.unknown_required(discovery.KNOWN_ATTRIBUTES)
        if unknown:
            attrs = [(stun.ATTR_UNKNOWN_ATTRIBUTES, stun.encode_unknown_attributes(unknown))]
            return ctx.link, self._error(ctx, msg, ErrorCode.UNKNOWN_ATTRIBUTE, attrs=attrs)
        try:
            answer = discovery.binding_answer(links, arrived, ctx.client, msg)
        except StunError as exc:
            return ctx.link, self._error(ctx, msg, ErrorCode.BAD_REQUEST, f"Bad Request: {exc}")
        return answer.sink, self._response(msg, stun.CLASS_SUCCESS, answer.attrs)

    def _dont_fragment(self, ctx: Context, relay: RelayHandle, new_token: bytes | None) -> None:
        """DONT-FRAGMENT asked: set DF on the relay, or refuse as RFC 8656 7.2 says (the
        attribute treated as unknown: 420), freeing the ports just opened."""
        if relay.set_dont_fragment():
            return
        relay.close()
        if new_token is not None:
            self.reservations.pop((ctx.listener, new_token))[0].close()
        unknown = stun.encode_unknown_attributes([stun.ATTR_DONT_FRAGMENT])
        raise Reject(ErrorCode.UNKNOWN_ATTRIBUTE, attrs=[(stun.ATTR_UNKNOWN_ATTRIBUTES, unknown)])

    def _refuse_turn(self, ctx: Context, msg: Message, now: float) -> bytes:
        """auth.type none: no TURN at all, so no relay is ever opened. Answered as stunnerd
        (pion/turn without an auth handler) does: an unsigned request earns the usual 401
        challenge, a signed one 400 Bad Request, which no client retries."""
        if msg.integrity_offset < 0 and msg.integrity_sha256_offset < 0:
            return self._challenge(ctx, msg, ErrorCode.UNAUTHORIZED, now)
        return self._error(ctx, msg, ErrorCode.BAD_REQUEST, "STUN only: no TURN here", quiet=True)

    def _challenge(self, ctx: Context, msg: Message, code: ErrorCode, now: float) -> bytes:
        # Kept small on purpose: answers to unauthenticated requests must not amplify. The
        # RFC 8489 parts (the nonce cookie, 12 bytes of PASSWORD-ALGORITHMS) are ignored by an
        # RFC 5389 client, which goes on with MD5 and MESSAGE-INTEGRITY.
        attrs = [
            (stun.ATTR_REALM, self.credentials.realm.encode()),
            (stun.ATTR_NONCE, self.nonce_for(ctx, now).encode()),
            (stun.ATTR_PASSWORD_ALGORITHMS, OFFERED_PASSWORD_ALGORITHMS),
        ]
        return self._error(ctx, msg, code, attrs=attrs, quiet=True)

    @staticmethod
    def _nonce_binding(ctx: Context) -> bytes:
        return nonce_binding(ctx.transport, ctx.client)

    def nonce_for(self, ctx: Context, now: float) -> str:
        """The nonce a challenge to this client would carry now (for tests and tools)."""
        return self.nonces.issue(now, self._nonce_binding(ctx), self._security_features())

    def _security_features(self) -> int:
        features = stun.SECURITY_FEATURE_PASSWORD_ALGORITHMS
        if self.credentials.supports_userhash:
            features |= stun.SECURITY_FEATURE_USERNAME_ANONYMITY
        return features

    def _allocation(self, ctx: Context, auth: Authenticated) -> Allocation:
        alloc = self.allocations.get(ctx.listener, {}).get(ctx.client)
        if alloc is None:
            raise Reject(ErrorCode.ALLOCATION_MISMATCH)
        if alloc.username != auth.username:
            raise Reject(ErrorCode.WRONG_CREDENTIALS)
        return alloc

    def _allocate(self, ctx: Context, msg: Message, auth: Authenticated, now: float) -> bytes:
        existing = self.allocations.setdefault(ctx.listener, {}).get(ctx.client)
        if existing is not None:
            if existing.transaction_id == msg.transaction_id:
                return existing.success_response  # a retransmission: the same answer
            raise Reject(ErrorCode.ALLOCATION_MISMATCH)
        request = self._check_allocate(ctx, msg, auth)
        try:
            if not request.tcp:
                relay, new_token = self._open_relay(ctx, request, now)
            else:
                relay, new_token = self.tcp.open_relay(request.listener, request.family), None
            if request.dont_fragment:
                self._dont_fragment(ctx, relay, new_token)
        except BaseException:
            self.limits.release(request.quota_user)
            raise
        other, refused = self._open_additional(request) if request.additional else (None, None)
        if refused is not None:
            request = dataclasses.replace(request, extra=(*request.extra, refused))
        return self._allocated(ctx, msg, auth, request, relay, new_token, now, other)

    def _open_additional(
        self, request: AllocateRequest
    ) -> tuple[RelayHandle | None, tuple[int, bytes] | None]:
        """A dual allocation's IPv6 relay, or the ADDRESS-ERROR-CODE of its partial success
        (RFC 8656 7.2: the IPv4 relay stands, the answer says why the IPv6 one does not)."""
        code = ErrorCode.INSUFFICIENT_CAPACITY
        opened = self.relays.open(request.listener, stun.FAMILY_IPV6, even=request.even)
        if opened is not None:
            other = opened[0]
            if not request.dont_fragment or other.set_dont_fragment():
                return other, None
            other.close()
            code = ErrorCode.SERVER_ERROR
        refused = stun.encode_address_error_code(stun.FAMILY_IPV6, code)
        return None, (stun.ATTR_ADDRESS_ERROR_CODE, refused)

    def _check_allocate(self, ctx: Context, msg: Message, auth: Authenticated) -> AllocateRequest:
        """Hold an Allocate against the protocol, the listener and the limits."""
        listener = self._listeners.get(ctx.listener)
        if listener is None:
            raise Reject(ErrorCode.SERVER_ERROR, "Listener is gone")
        raw_transport = msg.get(stun.ATTR_REQUESTED_TRANSPORT)
        if raw_transport is None:
            raise Reject(ErrorCode.BAD_REQUEST, "Missing REQUESTED-TRANSPORT")
        requested = stun.decode_requested_transport(raw_transport)
        # RFC 6062 TCP relays only for a client on TCP or TLS, and when the shell has them
        tcp = (
            requested == stun.TRANSPORT_TCP
            and ctx.transport in STREAM_TRANSPORTS
            and self.tcp.relays is not None
        )
        if requested != stun.TRANSPORT_UDP and not tcp:
            raise Reject(ErrorCode.UNSUPPORTED_TRANSPORT_PROTOCOL)
        if self.draining and self.alternate_server is not None:
            raise Reject(
                ErrorCode.TRY_ALTERNATE,
                attrs=[(stun.ATTR_ALTERNATE_SERVER, stun.encode_address(self.alternate_server))],
            )
        raw_even = msg.get(stun.ATTR_EVEN_PORT)
        token = msg.get(stun.ATTR_RESERVATION_TOKEN)
        raw_family = msg.get(stun.ATTR_REQUESTED_ADDRESS_FAMILY)
        raw_additional = msg.get(stun.ATTR_ADDITIONAL_ADDRESS_FAMILY)
        if tcp and (
            raw_even is not None
            or token is not None
            or raw_additional is not None
            or msg.get(stun.ATTR_DONT_FRAGMENT) is not None
        ):  # RFC 6062 5.1 (and one TCP relay, of one family)
            raise Reject(
                ErrorCode.BAD_REQUEST,
                "EVEN-PORT, RESERVATION-TOKEN, DONT-FRAGMENT or ADDITIONAL-ADDRESS-FAMILY "
                "with REQUESTED-TRANSPORT TCP",
            )
        if token is not None and (raw_even is not None or raw_family is not None):
            raise Reject(
                ErrorCode.BAD_REQUEST,
                "RESERVATION-TOKEN with EVEN-PORT or REQUESTED-ADDRESS-FAMILY",
            )
        if raw_family is not None and raw_additional is not None:
            raise Reject(ErrorCode.BAD_REQUEST, "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together")
        if token is not None and raw_additional is not None:
            raise Reject(ErrorCode.BAD_REQUEST, "RESERVATION-TOKEN with ADDITIONAL-ADDRESS-FAMILY")
        family, additional, extra = self._relay_family(listener, raw_family, raw_additional)
        quser = quota_user(auth.username, self.credentials.type)
        lifetime = self._lifetime(msg, initial=True)
        # counted in the ledger now (all workers share it); `_allocate` gives it back if the
        # relay cannot open
        admin = self.config.admin
        verdict = self.limits.acquire(quser, admin.user_quota, admin.max_allocations)
        if verdict is Verdict.QUOTA:
            raise Reject(ErrorCode.ALLOCATION_QUOTA_REACHED)
        if verdict is Verdict.CAPACITY:
            raise Reject(ErrorCode.INSUFFICIENT_CAPACITY, "Server allocation limit reached")
        return AllocateRequest(
            listener=listener,
            family=family,
            token=token,
            even=raw_even is not None,
            reserve=raw_even is not None and stun.decode_even_port(raw_even),
            quota_user=quser,
            lifetime=lifetime,
            extra=tuple(extra),
            dont_fragment=msg.get(stun.ATTR_DONT_FRAGMENT) is not None,
            tcp=tcp,
            additional=additional,
        )

    @staticmethod
    def _relay_family(
        listener: ListenerConfig, raw_family: bytes | None, raw_additional: bytes | None
    ) -> tuple[int, bool, list[tuple[int, bytes]]]:
        """The relay family an Allocate gets (RFC 8656 7.2, RFC 6156): REQUESTED-ADDRESS-FAMILY's
        whichever family the client came over, 440 only when the listener offers no such relay;
        without it IPv4 (an IPv6-only listener: IPv6). With ADDITIONAL-ADDRESS-FAMILY an IPv6
        relay too, or ADDRESS-ERROR-CODE 440 for it when the listener has none."""
        families = relay_families(listener)
        if raw_family is not None:
            family = stun.decode_family(raw_family)
            if family not in families:
                raise Reject(ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED)
        else:
            family = stun.FAMILY_IPV4 if stun.FAMILY_IPV4 in families else stun.FAMILY_IPV6
        if raw_additional is None:
            return family, False, []
        if stun.decode_family(raw_additional) != stun.FAMILY_IPV6:
            raise Reject(ErrorCode.BAD_REQUEST, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")
        if family == stun.FAMILY_IPV4 and stun.FAMILY_IPV6 in families:
            return family, True, []
        # one family only: the relay of the one offered, and the other refused in the answer
        missing = stun.FAMILY_IPV6 if family == stun.FAMILY_IPV4 else stun.FAMILY_IPV4
        refused = stun.encode_address_error_code(missing, ErrorCode.ADDRESS_FAMILY_NOT_SUPPORTED)
        return family, False, [(stun.ATTR_ADDRESS_ERROR_CODE, refused)]

    def _open_relay(
        self, ctx: Context, request: AllocateRequest, now: float
    ) -> tuple[RelayHandle, bytes | None]:
        """The relay port: the one reserved under the request's token, or a new one (and with
        EVEN-PORT's R bit the next one reserved, under the new token returned)."""
        if request.token is not None:
            reserved = self.reservations.pop((ctx.listener, request.token), None)
            if reserved is None:
                raise Reject(
                    ErrorCode.INSUFFICIENT_CAPACITY, "Unknown or expired RESERVATION-TOKEN"
                )
            return reserved[0], None
        opened = self.relays.open(
            request.listener, request.family, even=request.even, pair=request.reserve
        )
        if opened is None:
            raise Reject(ErrorCode.INSUFFICIENT_CAPACITY, "No relay port free")
        relay, spare = opened
        if spare is None:
            return relay, None
        new_token = secrets.token_bytes(8)
        self.reservations[(ctx.listener, new_token)] = (spare, now + RESERVATION_LIFETIME)
        return relay, new_token

    def _allocated(
        self,
        ctx: Context,
        msg: Message,
        auth: Authenticated,
        request: AllocateRequest,
        relay: RelayHandle,
        new_token: bytes | None,
        now: float,
        other: RelayHandle | None = None,
    ) -> bytes:
        """Make the allocation on its relay (a dual one on two) and answer, keeping the answer
        for retransmits."""
        alloc = Allocation(
            listener=ctx.listener,
            transport=ctx.transport,
            client=ctx.client,
            link=ctx.link,
            username=auth.username,
            quota_user=request.quota_user,
            relay=relay,
            expires=now + request.lifetime,
            transaction_id=msg.transaction_id,
            key=auth.key,
            created=now,
            other_relay=other,
        )
        for each in alloc.relays:
            each.attach(alloc)
            self._own_relay(each.address)
        self.allocations[ctx.listener][ctx.client] = alloc
        if request.tcp:
            self.tcp.add_allocation(alloc)
        self.user_allocations[request.quota_user] += 1
        attrs = [
            (
                stun.ATTR_XOR_RELAYED_ADDRESS,
                stun.encode_xor_address(relay.address[:2], msg.transaction_id),
            ),
            (stun.ATTR_LIFETIME, stun.encode_u32(request.lifetime)),
        ]
        if other is not None:  # RFC 8656 7.2: the IPv6 relayed address, after the IPv4 one
            relayed6 = stun.encode_xor_address(other.address[:2], msg.transaction_id)
            attrs.insert(1, (stun.ATTR_XOR_RELAYED_ADDRESS, relayed6))
        if new_token is not None:
            attrs.append((stun.ATTR_RESERVATION_TOKEN, new_token))
        attrs.append(
            (
                stun.ATTR_XOR_MAPPED_ADDRESS,
                stun.encode_xor_address(normalize_peer(ctx.client[:2]), msg.transaction_id),
            )
        )
        attrs.extend(request.extra)
        software = [(stun.ATTR_SOFTWARE, self.software.encode())] if self.software else []
        alloc.success_response = self._response(
            msg, stun.CLASS_SUCCESS, attrs + software, key=auth.key
        )
        self.events.append(ev.AllocationCreated(alloc))
        return alloc.success_response

    def _lifetime(self, msg: Message, *, initial: bool) -> int:
        raw = msg.get(stun.ATTR_LIFETIME)
        if raw is None:
            return DEFAULT_LIFETIME
        asked = stun.decode_u32(raw)
        if asked == 0 and not initial:
            return 0
        return max(DEFAULT_LIFETIME, min(asked, MAX_LIFETIME))

    def _refresh(
        self, ctx: Context, msg: Message, auth: Authenticated, now: float
    ) -> list[tuple[int, bytes]]:
        alloc = self._allocation(ctx, auth)
        raw_family = msg.get(stun.ATTR_REQUESTED_ADDRESS_FAMILY)
        family_relay = None
        if raw_family is not None:
            family = stun.decode_family(raw_family)
            family_relay = next(
                (r for r in alloc.relays if address_family(r.address[0]) == family), None
            )
            if family_relay is None:  # RFC 8656 8.2: not a family of this allocation
                raise Reject(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
        lifetime = self._lifetime(msg, initial=False)
        if lifetime == 0 and family_relay is not None and alloc.other_relay is not None:
            # RFC 8656 8.2: a dual allocation deletes that family's relay; the other lives on
            alloc.drop_relay(family_relay)
            family_relay.attach(None)
            family_relay.close()
        elif lifetime == 0:
            self.delete(alloc, "refresh")
        else:
            alloc.expires = now + lifetime
            self.events.append(ev.AllocationRefreshed(alloc, lifetime))
        return [(stun.ATTR_LIFETIME, stun.encode_u32(lifetime))]

    def _own_addresses(self) -> OwnAddresses:
        """This server's own transport addresses, rebuilt when the config changes (with the
        relays in use, whose ports a reload may have left outside the new ranges)."""
        if self._own_config is not self.config:
            relays = [r.address for a in self.all_allocations() for r in a.relays]
            relays += [handle.address for handle, _ in self.reservations.values()]
            ips, ports = [ip for ip, _ in relays], [port for _, port in relays]
            ips += self._host_ips
            self._own = OwnAddresses.from_config(self.config, ips, ports)
            self._own_config = self.config
        return self._own

    def set_host_addresses(self, ips: Iterable[str]) -> None:
        """The host's interface addresses (a second NIC, a docker bridge, the pod IP), which
        no config names: ours too, so no permission reaches our ports there. The shell reads
        them at start and on each reload; permissions to a new one lose our ports."""
        self._host_ips = tuple(ips)
        own = self._own_addresses()
        if [ip for ip in self._host_ips if own.add_ip(ip)]:
            self.revalidate()

    def _own_relay(self, address: Addr) -> None:
        """A relay opened on `address`: its IP is ours (a wildcard listener's relays advertise
        the host's address, which no config names); permissions to it lose our ports."""
        if self._own_addresses().add_ip(address[0]):
            self.revalidate()

    def _peer_ports(self, listener: str, ip: str, *, tcp: bool = False) -> PortSet | None:
        """The ports of `ip` a permission may reach via `listener`: what the clusters allow,
        less this server's own ports when `ip` is ours (a TCP allocation's: less only the
        listener and public ports, see `OwnAddresses`); None when that leaves none."""
        ports = self.access.ports_for(listener, ip)
        if ports is None:
            return None
        return self._own_addresses().peer_ports(ip, ports, with_relays=not tcp) or None

    def _peer(self, alloc: Allocation, value: bytes, tid: bytes) -> Addr:
        """Decode a XOR-PEER-ADDRESS and hold it against the family and the peer rules."""
        peer = normalize_peer(stun.decode_xor_address(value, tid))
        if alloc.relay_for(peer[0]) is None:  # no relay of the peer's family (RFC 8656 443)
            raise Reject(ErrorCode.PEER_ADDRESS_FAMILY_MISMATCH)
        return peer

    def _judge(self, ctx: Context, peer: Addr, *, tcp: bool = False) -> tuple[PortSet, str]:
        """The ports a permission for the peer's IP reaches, and the cluster its traffic counts
        for; 403 when no rule allows the peer or it is one of our own transport addresses
        (relaying there would chain allocations into each other, or feed our listeners). A TCP
        allocation's permission may name our relay ports (a peer connection from another TCP
        relay of ours: what it accepts goes only to its client, see `OwnAddresses`)."""
        if self._own_addresses().owns(*peer, with_relays=not tcp):
            raise self._deny(ctx, peer, "Forbidden: the peer is this server")
        ports = self._peer_ports(ctx.listener, peer[0], tcp=tcp)
        if ports is None:
            raise self._deny(ctx, peer)
        return ports, self.access.cluster_for(ctx.listener, peer[0])

    def _deny(
        self, ctx: Context, peer: Addr, reason: str = "Forbidden: no route to peer"
    ) -> Reject:
        clusters = self.access.clusters_for(ctx.listener)
        self.events.append(ev.PermissionDenied(ctx.listener, ctx.client, peer, clusters))
        return Reject(ErrorCode.FORBIDDEN, reason)

    def _create_permission(
        self, ctx: Context, msg: Message, auth: Authenticated, now: float
    ) -> list[tuple[int, bytes]]:
        alloc = self._allocation(ctx, auth)
        values = msg.get_all(stun.ATTR_XOR_PEER_ADDRESS)
        if not values:
            raise Reject(ErrorCode.BAD_REQUEST, "Missing XOR-PEER-ADDRESS")
        cap = self.config.admin.max_permissions_per_allocation  # 0: unlimited
        if cap and len(values) > cap:  # refused before any peer is judged: judging costs
            raise Reject(ErrorCode.INSUFFICIENT_CAPACITY, "More peers than the permission limit")
        grants = []
        tcp = alloc in self.tcp.allocations
        for value in values:
            peer = self._peer(alloc, value, msg.transaction_id)
            ports, cluster = self._judge(ctx, peer, tcp=tcp)
            grants.append((peer[0], ports, cluster))
        fresh = {ip for ip, _, _ in grants if ip not in alloc.permissions}
        if cap and len(alloc.permissions) + len(fresh) > cap:
            raise Reject(ErrorCode.INSUFFICIENT_CAPACITY, "Permission limit reached")
        for ip, ports, cluster in grants:
            alloc.install_permission(ip, ports, cluster, now)
        return []

    def _channel_bind(
        self, ctx: Context, msg: Message, auth: Authenticated, now: float
    ) -> list[tuple[int, bytes]]:
        alloc = self._allocation(ctx, auth)
        if alloc in self.tcp.allocations:  # RFC 6062 5.1: no channels on a TCP relay
            raise Reject(ErrorCode.BAD_REQUEST, "ChannelBind on a TCP allocation")
        raw_number = msg.get(stun.ATTR_CHANNEL_NUMBER)
        raw_peer = msg.get(stun.ATTR_XOR_PEER_ADDRESS)
        if raw_number is None or raw_peer is None:
            raise Reject(ErrorCode.BAD_REQUEST, "Missing CHANNEL-NUMBER or XOR-PEER-ADDRESS")
        number = stun.decode_channel_number(raw_number)
        if not stun.CHANNEL_MIN <= number <= CHANNEL_MAX:
            raise Reject(ErrorCode.BAD_REQUEST, "Channel number out of range")
        peer = self._peer(alloc, raw_peer, msg.transaction_id)
        if peer[1] == 0:  # no datagram can be sent to port 0
            raise Reject(ErrorCode.BAD_REQUEST, "Peer port 0")
        bound = alloc.bindings.get(number)
        if bound is not None and bound.peer != peer:
            raise Reject(ErrorCode.BAD_REQUEST, "Channel bound to another peer")
        other = alloc.channel_of_peer(peer)
        if other is not None and other.number != number:
            raise Reject(ErrorCode.BAD_REQUEST, "Peer bound to another channel")
        if bound is None and alloc.hold_conflict(number, peer, now):
            raise Reject(
                ErrorCode.BAD_REQUEST,
                "Channel or peer held for 5 minutes after its binding expired",
            )
        ports, cluster = self._judge(ctx, peer)
        if peer[1] not in ports:
            raise self._deny(ctx, peer)
        max_channels = self.config.admin.max_channels_per_allocation  # 0: unlimited
        if bound is None and max_channels and len(alloc.bindings) >= max_channels:
            raise Reject(ErrorCode.INSUFFICIENT_CAPACITY, "Channel limit reached")
        max_perms = self.config.admin.max_permissions_per_allocation
        if peer[0] not in alloc.permissions and max_perms and len(alloc.permissions) >= max_perms:
            raise Reject(ErrorCode.INSUFFICIENT_CAPACITY, "Permission limit reached")
        alloc.bind_channel(number, peer, cluster, now)
        alloc.install_permission(peer[0], ports, cluster, now)
        return []

    def _send_indication(self, ctx: Context, msg: Message) -> list[Output]:
        alloc = self.allocations.get(ctx.listener, {}).get(ctx.client)
        raw_peer, data = msg.get(stun.ATTR_XOR_PEER_ADDRESS), msg.get(stun.ATTR_DATA)
        if alloc is None or raw_peer is None or data is None or alloc in self.tcp.allocations:
            return []
        if msg.unknown_required(stun.KNOWN_ATTRIBUTES):  # RFC 8489 14: discard it
            return []
        try:
            peer = normalize_peer(stun.decode_xor_address(raw_peer, msg.transaction_id))
        except StunError:
            return []
        perm = alloc.permissions.get(peer[0])
        relay = alloc.relay_for(peer[0])
        if perm is None or peer[1] not in perm.ports or relay is None:
            return []
        perm.out_packets += 1
        perm.out_bytes += len(data)
        return [(relay, peer, data)]

    def _request_binding(self, ctx: Context, msg: Message) -> bytes:
        """What the request's nonce must be bound to: the client's address; for a
        ConnectionBind, the control connection's (RFC 6062 clients sign it with the nonce they
        hold, and the data connection is new: another port, the same client IP)."""
        raw_id = msg.get(stun.ATTR_CONNECTION_ID)
        if msg.method == stun.METHOD_CONNECTION_BIND and raw_id is not None and len(raw_id) == 4:
            conn = self.tcp.connections.get(stun.decode_u32(raw_id))
            if conn is not None and conn.allocation.client[0] == ctx.client[0]:
                return nonce_binding(conn.allocation.transport, conn.allocation.client)
        return self._nonce_binding(ctx)

    # -- responses ----------------------------------------------------------------------------

    def _response(
        self, msg: Message, cls: int, attrs: list[tuple[int, bytes]], key: bytes | None = None
    ) -> bytes:
        # signed with the algorithm the request was checked with (RFC 8489 9.2.4): SHA-256
        # when it carried MESSAGE-INTEGRITY-SHA256, else HMAC-SHA1
        sha256 = msg.integrity_sha256_offset >= 0
        return stun.encode_message(
            msg.method,
            cls,
            msg.transaction_id,
            attrs,
            integrity_key=None if sha256 else key,
            integrity_sha256_key=key if sha256 else None,
            fingerprint=msg.fingerprint_offset >= 0,
        )

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
    ) -> bytes:
        reason = reason or code.reason
        if not quiet:
            method = stun.method_name(msg.method)
            rejected = ev.RequestRejected(ctx.listener, ctx.client, method, int(code), reason)
            self.events.append(rejected)
        body = [(stun.ATTR_ERROR_CODE, stun.encode_error_code(code, reason)), *(attrs or [])]
        return self._response(msg, stun.CLASS_ERROR, body, key)
