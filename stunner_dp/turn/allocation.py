"""An allocation: a relay address, its permissions and channels, and their lifetimes.

The shell's hot path reads three dicts of an allocation directly and nothing else:

- `channels`: channel number -> Channel, for ChannelData from the client;
- `peer_channels`: peer address -> Channel, for datagrams from a peer with a bound channel;
- `permissions`: peer IP -> Permission, for datagrams from other permitted peers.

They hold only what may flow *now*: a channel whose peer lost its permission is taken out of
the first two until the permission is renewed, so the hot path needs no expiry check.

Every change of the live channels is told to the relay handle (`channel_bound` /
`channel_unbound`, kept in `announced`), synchronously: the kernel fast path installs and
removes its entries there, so it never relays a channel that the hot-path dicts would not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stunner_dp.turn.access import PortSet
from stunner_dp.turn.types import Addr, RelayHandle, Sink

PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
CHANNEL_HOLD = 300.0  # after a binding expires, neither side may pair otherwise (RFC 8656 12)


@dataclass(slots=True, eq=False)
class Traffic:
    """Payload counters, bumped as plain integers on the hot path and read at scrape time.
    `out` is towards the peer (from the client), `in` towards the client."""

    cluster: str
    framed: bool = False  # True for channels: each packet carried a 4-byte ChannelData header
    out_packets: int = 0
    out_bytes: int = 0
    in_packets: int = 0
    in_bytes: int = 0


@dataclass(slots=True, eq=False)
class Permission(Traffic):
    ports: PortSet = PortSet.ANY
    expires: float = 0.0


@dataclass(slots=True, eq=False)
class Channel(Traffic):
    framed: bool = True
    number: int = 0
    peer: Addr = ("", 0)
    expires: float = 0.0
    # the allocation's relay of the peer's family: what the client's ChannelData leaves from
    relay: RelayHandle = field(kw_only=True)


@dataclass(slots=True, eq=False)
class Allocation:
    listener: str
    transport: str
    client: Addr
    link: Sink  # how to reach the client
    username: str
    quota_user: str
    relay: RelayHandle
    expires: float
    transaction_id: bytes  # of the Allocate that made it, to answer a retransmission alike
    success_response: bytes = b""
    key: bytes = b""  # the long-term key, needed to sign responses to later requests
    created: float = 0.0
    # a dual allocation's second relay (ADDITIONAL-ADDRESS-FAMILY, RFC 8656): the IPv6 one
    other_relay: RelayHandle | None = None
    channels: dict[int, Channel] = field(default_factory=dict)
    peer_channels: dict[Addr, Channel] = field(default_factory=dict)
    permissions: dict[str, Permission] = field(default_factory=dict)
    bindings: dict[int, Channel] = field(default_factory=dict)  # all bound channels, live or not
    held: dict[int, tuple[Addr, float]] = field(default_factory=dict)  # expired: (peer, until)
    # when the first permission or channel expires, or earlier: an install lowers it to the new
    # expiry, a renewal leaves it (the timer's `expire` then sets it exactly), so an install
    # costs O(1), not a pass over every permission (a CreatePermission with n peers: O(n))
    soonest: float = math.inf
    # expired entries' counts, by (cluster, framed), so churn does not grow a list
    retired: dict[tuple[str, bool], Traffic] = field(default_factory=dict)
    # the live channels the relay handle was told of (channel_bound, not yet channel_unbound)
    announced: dict[int, Channel] = field(default_factory=dict)

    @property
    def relay_addr(self) -> Addr:
        return self.relay.address

    @property
    def relays(self) -> tuple[RelayHandle, ...]:
        """The primary relay, and a dual allocation's other one."""
        return (self.relay,) if self.other_relay is None else (self.relay, self.other_relay)

    def relay_for(self, ip: str) -> RelayHandle | None:
        """The relay of `ip`'s family (peers of each family leave from their own); None when
        the allocation has none of that family (RFC 8656: 443)."""
        for relay in self.relays:
            if (":" in relay.address[0]) == (":" in ip):
                return relay
        return None

    def drop_relay(self, relay: RelayHandle) -> None:
        """A dual allocation gives up one family (a Refresh of it with LIFETIME 0): its
        permissions and channels go with it; the caller closes the relay."""
        if self.other_relay is None:
            return
        keep = self.other_relay if relay is self.relay else self.relay
        for ip in [ip for ip in self.permissions if self.relay_for(ip) is relay]:
            self._retire(self.permissions.pop(ip))
        for num in [n for n, c in self.bindings.items() if c.relay is relay]:
            self._retire(self.bindings.pop(num))
        self.relay, self.other_relay = keep, None
        self._sync_channels()
        self._recount_soonest()

    # -- permissions and channels (slow path) -------------------------------------------------

    def install_permission(self, ip: str, ports: PortSet, cluster: str, now: float) -> None:
        perm = self.permissions.get(ip)
        if perm is None:
            self.permissions[ip] = Permission(cluster=cluster, ports=ports)
            perm = self.permissions[ip]
        perm.ports = ports
        perm.expires = now + PERMISSION_LIFETIME
        self.soonest = min(self.soonest, perm.expires)
        # only the channels to this IP can go live or (new ports) stop
        if self.bindings and any(c.peer[0] == ip for c in self.bindings.values()):
            self._sync_channels()

    def bind_channel(self, number: int, peer: Addr, cluster: str, now: float) -> None:
        chan = self.bindings.get(number)
        if chan is None:
            relay = self.relay_for(peer[0]) or self.relay  # the server checked the family
            chan = Channel(cluster=cluster, number=number, peer=peer, relay=relay)
            self.bindings[number] = chan
        chan.expires = now + CHANNEL_LIFETIME
        self.soonest = min(self.soonest, chan.expires)
        self._sync_channels()

    def channel_of_peer(self, peer: Addr) -> Channel | None:
        for chan in self.bindings.values():
            if chan.peer == peer:
                return chan
        return None

    def expire(self, now: float) -> None:
        """Drop permissions and channels whose time is up (the allocation itself is the
        server's business)."""
        for ip in [ip for ip, p in self.permissions.items() if p.expires <= now]:
            self._retire(self.permissions.pop(ip))
        for num in [n for n, c in self.bindings.items() if c.expires <= now]:
            gone = self.bindings.pop(num)
            self.held[num] = (gone.peer, now + CHANNEL_HOLD)
            self._retire(gone)
        for num in [n for n, (_, until) in self.held.items() if until <= now]:
            del self.held[num]
        self._sync_channels()
        self._recount_soonest()

    def hold_conflict(self, number: int, peer: Addr, now: float) -> bool:
        """Would binding `number` to `peer` re-pair a channel number or a peer within five
        minutes of its binding's expiry? (Late packets of the old pairing would go astray.)"""
        for held_number, (held_peer, until) in self.held.items():
            if until > now and (held_number == number) != (held_peer == peer):
                return True
        return False

    def revoke(self, keep: dict[str, PortSet]) -> list[str]:
        """After a config change: keep only permissions whose peer IP is still reachable (with
        its new port set), and channels whose peer port is still allowed. Returns the IPs
        dropped."""
        dropped = [ip for ip in self.permissions if ip not in keep]
        for ip in dropped:
            self._retire(self.permissions.pop(ip))
        for ip, perm in self.permissions.items():
            perm.ports = keep[ip]
        for num in [n for n, c in self.bindings.items() if not self._peer_allowed(c.peer)]:
            self._retire(self.bindings.pop(num))
        self._sync_channels()
        self._recount_soonest()
        return dropped

    def _peer_allowed(self, peer: Addr) -> bool:
        perm = self.permissions.get(peer[0])
        return perm is not None and peer[1] in perm.ports

    def release(self) -> None:
        """The allocation ends: no channel of it may carry media any more."""
        for chan in list(self.announced.values()):
            self._unannounce(chan)
        self.channels = {}
        self.peer_channels = {}

    def _unannounce(self, chan: Channel) -> None:
        if self.announced.get(chan.number) is chan:
            del self.announced[chan.number]
            chan.relay.channel_unbound(chan)

    def _sync_channels(self) -> None:
        """Rebuild the hot-path channel views from the bindings that hold a permission, and
        tell the relay handle what changed. O(channels)."""
        live = [c for c in self.bindings.values() if self._peer_allowed(c.peer)]
        self.channels = {c.number: c for c in live}
        self.peer_channels = {c.peer: c for c in live}
        for chan in [c for n, c in self.announced.items() if self.channels.get(n) is not c]:
            self._unannounce(chan)
        for number, chan in self.channels.items():
            if number not in self.announced:
                self.announced[number] = chan
                chan.relay.channel_bound(self, chan)

    def _recount_soonest(self) -> None:
        """Note the next permission, channel or hold expiry exactly (so the timer need not look
        inside). O(permissions + channels): after expiry and revocation only."""
        self.soonest = min(
            min((p.expires for p in self.permissions.values()), default=math.inf),
            min((c.expires for c in self.bindings.values()), default=math.inf),
            min((until for _, until in self.held.values()), default=math.inf),
        )

    # -- accounting ----------------------------------------------------------------------------

    def _retire(self, gone: Traffic) -> None:
        if isinstance(gone, Channel):  # its counts from outside this process first
            self._unannounce(gone)
        key = (gone.cluster, gone.framed)
        total = self.retired.setdefault(key, Traffic(gone.cluster, gone.framed))
        total.out_packets += gone.out_packets
        total.out_bytes += gone.out_bytes
        total.in_packets += gone.in_packets
        total.in_bytes += gone.in_bytes

    def traffic(self) -> list[Traffic]:
        """Every counter this allocation has, live and retired."""
        out: list[Traffic] = list(self.retired.values())
        out.extend(self.permissions.values())
        out.extend(self.bindings.values())
        return out

    def totals(self) -> tuple[int, int, int, int]:
        """(out packets, out bytes, in packets, in bytes) over the allocation's life."""
        op = ob = ip_ = ib = 0
        for t in self.traffic():
            op += t.out_packets
            ob += t.out_bytes
            ip_ += t.in_packets
            ib += t.in_bytes
        return op, ob, ip_, ib
