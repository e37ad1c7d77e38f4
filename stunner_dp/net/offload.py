"""The control plane of the kernel fast path (issue 10): which channels the eBPF program relays.

`Server` owns one `OffloadController` while `admin.offload_engine` asks for it and the engine
loads (stunner_dp.offload). The state machine tells each relay handle, synchronously, when a
channel may carry media and when it may not any more (`RelayHandle.channel_bound` /
`channel_unbound`, see turn/allocation.py); `RelaySocket` hands both to the controller, which
installs or removes the channel's kernel entries there. So an entry exists exactly while the
Python hot path would relay that channel: it is installed before the ChannelBind success
leaves and removed at the permission's or the channel's expiry, on revocation by a config or
DNS change, and when the allocation is deleted (Refresh 0, expiry, listener stop, shutdown).

Only UDP allocations whose client link is a `UdpListener` are offloaded; everything else (TCP,
TLS, DTLS, Send/Data indications, mixed address families) stays in Python.

**Addresses** (kernel-offload.md pitfall 5). The forward key holds the listener *port*, so the
client → peer direction needs no local IP. The reverse rewrite puts a source address on the
ChannelData to the client and needs the relay IP the peer sends to. Listener and relay
sockets may be bound to the wildcard, and the hot paths read with plain `recvfrom_into`
(no IP_PKTINFO). Each address is learned once per binding, off the hot path:

- listener IP: the socket's bound address when it is concrete; else the listener's configured
  `address` when it is one of this host's; else the source address the kernel picks toward the
  client (`getsockname()` of a UDP socket connected to it, cached per client IP), which is the
  address Python's own wildcard socket answers from;
- relay IP: the relay socket's bound address when concrete, else the source the kernel picks
  toward the peer (cached per peer IP), again what Python's wildcard socket sends from.

**Counters**. The program counts per entry in a per-CPU map. `fold()` (called by
`Server.stats()` at scrape time) adds what is new since the last read into the channel's own
`Traffic`, so `stunner_listener_*`, `stunner_cluster_*` and `stunner_bytes_*` include the
offloaded packets, attributed to the channel's cluster; removing an entry folds its last
counts first, so nothing vanishes with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from stunner_dp.config import ListenerConfig, StunnerConfig
from stunner_dp.observe.logs import get_logger
from stunner_dp.observe.stats import OffloadPassStats, OffloadStats
from stunner_dp.offload import PASS_REASONS, ChannelHandle, OffloadEngine, OffloadError
from stunner_dp.offload import offload_unavailable_reason as _unavailable
from stunner_dp.turn.allocation import Allocation, Channel
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Transport

from .counters import InstallFailures
from .relay import RelayPool
from .udp import UdpListener

log = get_logger("offload")

XDP_NOT_SUPPORTED = "XDP offload is not supported, using TC"
REASON_MAX = 300  # characters of a load failure's reason in its log line
SOURCE_CACHE_MAX = 4096  # route-source answers kept (client and peer IPs), cleared when full

__all__ = [
    "XDP_NOT_SUPPORTED",
    "OffloadController",
    "OffloadSwitch",
    "offload_unavailable_reason",
    "wanted_engine",
]


def offload_unavailable_reason() -> str | None:
    """Why the kernel fast path cannot load on this host (None: it should)."""
    return _unavailable()


def wanted_engine(setting: str) -> str | None:
    """What `admin.offload_engine` asks for: "TC", "Auto" or None (off). XDP is served as TC."""
    if setting == "None":
        return None
    return "Auto" if setting == "Auto" else "TC"


@dataclass(slots=True)
class _Entry:
    handle: ChannelHandle
    channel: Channel
    # what of the kernel's counts is already in `channel`: fwd/rev packets and bytes
    seen: list[int] = field(default_factory=lambda: [0, 0, 0, 0])


class OffloadController:
    """The loaded engine and the channels installed in it. Not thread-safe (one loop)."""

    def __init__(
        self,
        engine: OffloadEngine,
        listener_config: Callable[[str], ListenerConfig | None],
    ) -> None:
        self.engine = engine
        self._listener_config = listener_config
        self._entries: dict[Channel, _Entry] = {}
        self._sources: dict[tuple[int, str], str] = {}
        self._local: dict[str, bool] = {}
        self.installs = 0
        self._failures = InstallFailures("channel not offloaded: the user-space path relays it")
        # kernel-relayed totals, for stunner_offload_*: tx to peers, rx from peers
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0

    @classmethod
    def load(
        cls,
        interfaces: Iterable[str],
        listener_config: Callable[[str], ListenerConfig | None],
    ) -> OffloadController:
        """Load and attach; raises OffloadError with the reason when it cannot."""
        engine = OffloadEngine.load(list(interfaces) or None)
        return cls(engine, listener_config)

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def install_failures(self) -> int:
        return self._failures.count

    def handle(self, channel: Channel) -> ChannelHandle | None:
        """The engine's handle of `channel`'s entry, None when it is not offloaded."""
        entry = self._entries.get(channel)
        return None if entry is None else entry.handle

    # -- install / remove ----------------------------------------------------------------------

    def bind(self, relay_sock: socket.socket, alloc: Allocation, channel: Channel) -> None:
        """Install `channel` of `alloc` (relayed by `relay_sock`) when the kernel can relay it."""
        if channel in self._entries or alloc.transport != Transport.UDP:
            return
        listener = _udp_listener_socket(alloc)
        if listener is None:
            return
        try:
            client = (alloc.client[0], alloc.client[1])
            lip = self._listener_ip(listener, alloc.listener, client[0])
            relay = relay_sock.getsockname()
            rip = self._concrete(relay[0], channel.peer[0])
            handle = self.engine.add_channel(
                client,
                (lip, int(listener.getsockname()[1])),
                channel.number,
                (rip, int(relay[1])),
                (channel.peer[0], channel.peer[1]),
            )
        except (OffloadError, ValueError, OSError) as exc:
            # full map, mixed families, a scoped address: Python relays this one
            self._failures.record(exc)
            return
        self._entries[channel] = _Entry(handle, channel)
        self.installs += 1

    def unbind(self, channel: Channel) -> None:
        """Remove `channel`'s entry (the kernel stops relaying it now), its counts folded in."""
        entry = self._entries.pop(channel, None)
        if entry is None:
            return
        with contextlib.suppress(OffloadError):
            self._fold_one(entry)
        with contextlib.suppress(OffloadError, KeyError):
            self.engine.remove(entry.handle)

    def unbind_all(self) -> None:
        for channel in list(self._entries):
            self.unbind(channel)

    def close(self) -> None:
        """Remove every entry (counts folded in) and detach the program."""
        self.unbind_all()
        self.engine.close()

    # -- telemetry -----------------------------------------------------------------------------

    def fold(self) -> None:
        """Add what the kernel relayed since the last read into each channel's Traffic."""
        for entry in self._entries.values():
            with contextlib.suppress(OffloadError):
                self._fold_one(entry)

    def _fold_one(self, entry: _Entry) -> None:
        c = self.engine.counters(entry.handle)
        now = (c.fwd_packets, c.fwd_bytes, c.rev_packets, c.rev_bytes)
        d = [n - s for n, s in zip(now, entry.seen, strict=True)]
        entry.seen = list(now)
        chan = entry.channel
        chan.out_packets += d[0]
        chan.out_bytes += d[1]
        chan.in_packets += d[2]
        chan.in_bytes += d[3]
        self.tx_packets += d[0]
        self.tx_bytes += d[1]
        self.rx_packets += d[2]
        self.rx_bytes += d[3]

    def stats(self) -> OffloadStats:
        try:
            reasons = self.engine.pass_reasons()
        except OffloadError:
            reasons = dict.fromkeys(PASS_REASONS, 0)
        return OffloadStats(
            active=1,
            entries=self.entries,
            installs=self.installs,
            install_failures=self.install_failures,
            tx_packets=self.tx_packets,
            tx_bytes=self.tx_bytes,
            rx_packets=self.rx_packets,
            rx_bytes=self.rx_bytes,
            passed={name: OffloadPassStats(packets=n) for name, n in reasons.items()},
        )

    # -- addresses -----------------------------------------------------------------------------

    def _listener_ip(self, sock: socket.socket, name: str, client_ip: str) -> str:
        bound = str(sock.getsockname()[0])
        if not ipaddress.ip_address(bound).is_unspecified:
            return bound
        config = self._listener_config(name)
        if config is not None and config.address and self._is_local(config.address, sock.family):
            return config.address
        return self._concrete(bound, client_ip)

    def _is_local(self, ip: str, family: int) -> bool:
        known = self._local.get(ip)
        if known is None:
            known = False
            with contextlib.suppress(OSError, ValueError):
                ipaddress.ip_address(ip)
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.bind((ip, 0))
                    known = True
            self._local[ip] = known
        return known

    def _concrete(self, bound: str, toward: str) -> str:
        """`bound` when concrete, else the source the kernel picks toward `toward` (cached)."""
        if not ipaddress.ip_address(bound).is_unspecified:
            return bound
        family = socket.AF_INET6 if ":" in toward else socket.AF_INET
        key = (family, toward)
        src = self._sources.get(key)
        if src is None:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((toward, 9))  # picks a route and a source, sends nothing
                src = str(probe.getsockname()[0])
            if len(self._sources) >= SOURCE_CACHE_MAX:
                self._sources.clear()
            self._sources[key] = src
        return src


def _udp_listener_socket(alloc: Allocation) -> socket.socket | None:
    """The socket of the UdpListener the allocation's client talks to, or None."""
    link = alloc.link
    if isinstance(link, UdpListener):
        return link.sock
    return None


class OffloadSwitch:
    """`admin.offload_engine` / `offload_interfaces` applied to a running server: loads the
    controller when asked (installing every live channel), unloads it when not (removing every
    entry: Python relays on, no allocation is dropped). When it cannot load it logs one line
    with the reason and the server serves in user space."""

    def __init__(self) -> None:
        self.controller: OffloadController | None = None
        self.reason: str | None = None  # why it is not on, when it was asked for
        self._setting: tuple[str | None, tuple[str, ...]] = (None, ())

    def configure(self, config: StunnerConfig, relays: RelayPool, turn: TurnServer) -> None:
        admin = config.admin
        engine = wanted_engine(admin.offload_engine)
        setting = (engine, tuple(admin.offload_interfaces))
        if setting == self._setting:
            return
        self._setting = setting
        self.off(relays)
        self.reason = None
        if engine is None:
            return
        if admin.offload_engine == "XDP":
            log.warning(XDP_NOT_SUPPORTED)
        try:
            controller = OffloadController.load(admin.offload_interfaces, config.listener)
        except OffloadError as exc:
            self.reason = exc.reason
            # one line: a verifier refusal carries its whole log, the line keeps its head
            short = " ".join(exc.reason.split())
            short = short if len(short) <= REASON_MAX else short[:REASON_MAX] + "..."
            if engine == "Auto":
                log.info(f"kernel offload not used (Auto): {short}; relaying in user space")
            else:
                log.warning(f"kernel offload cannot load: {short}; relaying in user space")
            return
        self.controller = relays.offload = controller
        for alloc in turn.all_allocations():
            for channel in list(alloc.announced.values()):
                channel.relay.channel_bound(alloc, channel)
        modes = sorted({a.mode for a in controller.engine.attachments})
        log.info(
            "kernel offload on",
            engine=admin.offload_engine,
            attach="/".join(modes),
            interfaces=",".join(a.interface for a in controller.engine.attachments),
            entries=controller.entries,
        )

    def off(self, relays: RelayPool | None) -> None:
        """Remove every entry (counts folded in) and detach; Python relays on."""
        controller, self.controller = self.controller, None
        if relays is not None:
            relays.offload = None
        if controller is not None:
            controller.close()
            log.info("kernel offload off")

    def fold(self) -> None:
        if self.controller is not None:
            self.controller.fold()

    def stats(self) -> OffloadStats:
        return OffloadStats() if self.controller is None else self.controller.stats()
