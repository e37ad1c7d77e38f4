"""The running server: listeners, relay ports, timers, live reconfiguration.

This is the library API too: `async with Server(config) as srv:` starts a TURN server inside the
caller's event loop (uvloop or not), `srv.port("udp-listener")` tells where it listens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from stunner_dp.config import ListenerConfig, StunnerConfig, diff_configs, parse_config
from stunner_dp.observe.events_log import log_event
from stunner_dp.observe.logs import get_logger
from stunner_dp.observe.stats import (
    ClusterStats,
    ForwarderStats,
    ListenerStats,
    ServerStats,
    StatsSnapshot,
)
from stunner_dp.turn import events as ev
from stunner_dp.turn.access import PeerAccess
from stunner_dp.turn.allocation import Traffic
from stunner_dp.turn.ratelimit import Limits
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr

from .bandwidth import BandwidthSwitch
from .certs import tls_context
from .counters import ListenerCounters
from .fds import FD_RESERVE
from .forwarder import ForwarderControl, forwarder_mode, start_forwarder
from .host_addresses import host_addresses
from .listener import Listener
from .offload import OffloadSwitch
from .relay import RelayPool
from .sockets import SocketProvider, bind_listener, dual_stack, listen_host
from .stepwise import run_stepwise
from .tcp import StreamListener
from .tcp_relay import TcpRelayPool
from .udp import UdpListener, bind_udp

# STRICT_DNS answers: hostname -> its current IPs (stunner_dp.net.dns resolves them)
DnsAnswers = Mapping[str, Sequence[str]]
TICK = 1.0  # seconds between expiry sweeps
DEMO_CREDENTIALS = ("user-1", "pass-1")

log = get_logger("turn")
TURN_LOGGER = logging.getLogger("stunner_dp.turn")
netlog = get_logger("net")


class ListenerStartError(RuntimeError):
    def __init__(self, listener: ListenerConfig, exc: OSError) -> None:
        super().__init__(
            f"listener {listener.name!r} ({listener.protocol} port {listener.port}) "
            f"could not start: {exc.strerror or exc}"
        )
        self.listener = listener.name


class Server:
    def __init__(
        self,
        config: StunnerConfig | Mapping[str, Any],
        *,
        nonce_secret: bytes | None = None,
        software: str = "",
        alternate_server: Addr | None = None,
        reuse_port: bool = False,
        bind_host: str | None = None,
        limits: Limits | None = None,
        socket_provider: SocketProvider | None = None,
        forwarder: str | None = None,
    ) -> None:
        self.config = config if isinstance(config, StunnerConfig) else parse_config(config)
        self._limits = limits  # None: this process counts quotas and rate limits alone
        self._nonce_secret = nonce_secret or os.urandom(32)
        self._software = software
        self._alternate = alternate_server
        self._reuse_port = reuse_port
        self._bind_host = bind_host  # None: the wildcard of the listener's address family
        # a worker adopts the listener sockets its supervisor holds (a stable reuseport group)
        self._socket_provider = socket_provider
        # the compiled forwarder: "auto", "compiled", "python" (None: $STUNNER_DP_FORWARDER)
        self._forwarder_mode = forwarder_mode(forwarder)  # a bad value fails here, not later
        self.forwarder: ForwarderControl | None = None
        self.listeners: dict[str, Listener] = {}
        self.failed_listeners: dict[str, str] = {}
        self._turn: TurnServer | None = None  # the state machine: driven only through verbs
        self._draining = False
        self._dns_answers: dict[str, Sequence[str]] = {}
        self.relays: RelayPool | None = None
        self._timer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()
        self.idle = asyncio.Event()  # set whenever no allocation is left (for drain)
        self.offload = OffloadSwitch()  # the kernel fast path (admin.offload_engine)
        self.bandwidth = BandwidthSwitch()  # per-user caps (admin.user_bandwidth)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Server:
        self._loop = asyncio.get_running_loop()
        self.relays = RelayPool(self._loop)
        self.forwarder = self.relays.forwarder = start_forwarder(self._loop, self._forwarder_mode)
        self._turn = TurnServer(
            self.config,
            self.relays,
            nonce_secret=self._nonce_secret,
            software=self._software,
            alternate_server=self._alternate,
            limits=self._limits,
        )
        self._turn.draining = self._draining
        # RFC 6062 TCP relays for Allocates over TCP/TLS with REQUESTED-TRANSPORT TCP
        self._turn.tcp.relays = TcpRelayPool(
            self._loop, self._turn, self.relays, self.process_events, time.time
        )
        self._turn.set_host_addresses(host_addresses())  # ours too: no config names them
        if self._dns_answers:
            self._turn.access = PeerAccess.from_config(self.config, self._dns_answers)
        self._warn_demo_credentials()
        for listener in self.config.listeners:
            await self._start_listener(listener)
        if self.config.listeners and not self.listeners:
            raise RuntimeError(
                "no listener could start: " + "; ".join(self.failed_listeners.values())
            )
        check_fd_limit(self.config)
        self.offload.configure(self.config, self.relays, self._turn)
        self.bandwidth.configure(self.config, self._turn, self.relays, self.offload)
        self._timer = asyncio.create_task(self._tick_forever())
        return self

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.bandwidth.off()
        if self._turn is not None:
            self._turn.close()
            self.process_events()
        self.offload.off(self.relays)  # after the allocations: their counts are folded in
        for name in list(self.listeners):
            self._stop_listener(name)
        if self.forwarder is not None:  # its sockets are closed (unwatched) by now
            self.forwarder.close()
            self.forwarder = None
            if self.relays is not None:
                self.relays.forwarder = None

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def port(self, listener: str) -> int:
        return self.listeners[listener].port

    @property
    def allocation_count(self) -> int:
        return self._turn.allocation_count if self._turn else 0

    @property
    def turn(self) -> TurnServer | None:
        """The state machine, to look at (tests, `stats`); None before `start`. Change it only
        through the verbs (`apply`, `set_dns_answers`, `set_draining`): nothing outside
        stunner_dp.net may touch it (tests/test_layering.py)."""
        return self._turn

    @property
    def draining(self) -> bool:
        return self._draining

    def set_draining(self, draining: bool) -> None:
        """While draining, new Allocates get 300 Try Alternate when an alternate server is set;
        the allocations there live on. Holds across `start`."""
        self._draining = draining
        if self._turn is not None:
            self._turn.draining = draining

    # -- listeners ----------------------------------------------------------------------------

    async def _start_listener(self, listener: ListenerConfig) -> None:
        assert self._turn is not None and self._loop is not None
        host = listen_host(listener, self._bind_host)
        assert self.relays is not None
        # Counters outlive a listener restart (a scrape must never see a counter go down).
        counters = self.relays.counters.setdefault(listener.name, ListenerCounters())
        try:
            adopted = self._socket_provider(listener) if self._socket_provider else None
            if adopted is None and dual_stack(listener, host):  # asyncio's would be IPv6 only
                adopted = bind_listener(listener, self._bind_host, reuse_port=self._reuse_port)
            if listener.transport == "udp":
                sock = adopted or bind_udp(host, listener.port, reuse_port=self._reuse_port)
                if listener.nat_discovery is not None:  # RFC 5780: three more sockets
                    from .discovery import NatDiscoveryListener

                    self.listeners[listener.name] = NatDiscoveryListener(
                        self._loop,
                        listener,
                        sock,
                        self._turn,
                        self.process_events,
                        time.time,
                        counters,
                        reuse_port=self._reuse_port,
                    )
                else:
                    self.listeners[listener.name] = UdpListener(
                        self._loop,
                        listener.name,
                        sock,
                        self._turn,
                        self.process_events,
                        time.time,
                        counters,
                        self.forwarder,
                    )
            elif listener.transport in ("tcp", "tls"):
                stream = StreamListener(
                    listener.name,
                    listener.transport,
                    self._turn,
                    self.process_events,
                    time.time,
                    counters,
                )
                # TLS is started per connection, after the stream listener's connection caps
                stream.tls = tls_context(listener) if listener.transport == "tls" else None
                stream.asyncio_server = await (
                    self._loop.create_server(stream.protocol, sock=adopted)
                    if adopted
                    else self._loop.create_server(
                        stream.protocol,
                        host,
                        listener.port,
                        reuse_port=self._reuse_port or None,
                        reuse_address=True,
                    )
                )
                self.listeners[listener.name] = stream
            elif listener.transport == "dtls":
                from .dtls import DtlsListener, dtls_context

                dtls = dtls_context(listener)  # before the bind: a bad cert leaves no socket
                sock = adopted or bind_udp(host, listener.port, reuse_port=self._reuse_port)
                self.listeners[listener.name] = DtlsListener(
                    self._loop,
                    listener.name,
                    sock,
                    self._turn,
                    self.process_events,
                    time.time,
                    counters,
                    dtls,
                )
            else:
                netlog.error(
                    "listener protocol not supported yet",
                    listener=listener.name,
                    protocol=listener.protocol,
                )
                self.failed_listeners[listener.name] = f"{listener.protocol} is not supported"
                return
        except OSError as exc:
            error = ListenerStartError(listener, exc)
            # One listener's port being taken must not take the others down.
            netlog.error(str(error), listener=listener.name)
            self.failed_listeners[listener.name] = str(error)
            return
        self.failed_listeners.pop(listener.name, None)
        netlog.info(
            "listener started",
            listener=listener.name,
            protocol=listener.protocol,
            port=self.listeners[listener.name].port,
            relay_address=listener.address,
            relay_ports=f"{listener.min_relay_port}-{listener.max_relay_port}",
        )

    def _stop_listener(self, name: str) -> None:
        listener = self.listeners.pop(name, None)
        if listener is not None:
            listener.close()
            netlog.info("listener stopped", listener=name)

    # -- reconfiguration ----------------------------------------------------------------------

    async def apply(self, config: StunnerConfig, dns_answers: DnsAnswers | None = None) -> None:
        """Make `config` the running config, touching only what changed. `dns_answers`: the
        STRICT_DNS answers its peer rules are built with (None: the last ones given)."""
        assert self._turn is not None
        if dns_answers is not None:
            self._dns_answers = dict(dns_answers)  # a copy: the resolver updates its own
        access = await self._peer_access(config)  # in steps: the old config serves meanwhile
        old = self.config
        diff = diff_configs(old, config)
        for name in (*diff.listeners_to_stop, *diff.listeners_to_restart):
            self._stop_listener(name)
        self.config = config
        self._turn.update_config(config, access)
        self._turn.set_host_addresses(host_addresses())  # interfaces come and go
        if self.relays is not None:  # offload on/off: allocations stay
            self.offload.configure(config, self.relays, self._turn)
            self.bandwidth.configure(config, self._turn, self.relays, self.offload)
        for name in [n for n in self.failed_listeners if config.listener(n) is None]:
            del self.failed_listeners[name]
        # Every configured listener that is not running starts: the new and restarted ones, and
        # those that could not start before (a port taken), changed or not.
        for listener in config.listeners:
            if listener.name not in self.listeners:
                await self._start_listener(listener)
        self._warn_demo_credentials()
        self.process_events()

    async def _peer_access(self, config: StunnerConfig) -> PeerAccess:
        """The peer rules of `config`, built a few ms at a time (100,000 endpoints take seconds
        of Python), reusing the running rules' unchanged clusters; rebuilt if DNS answers came
        in meanwhile (a bounded number of times, then at once)."""
        assert self._turn is not None
        for _ in range(3):
            answers = self._dns_answers
            steps = PeerAccess.build_steps(config, answers, previous=self._turn.access)
            access = await run_stepwise(steps)
            if answers is self._dns_answers:
                return access
        return PeerAccess.from_config(config, self._dns_answers, previous=self._turn.access)

    def set_dns_answers(self, dns_answers: DnsAnswers) -> None:
        """New STRICT_DNS answers: the peer rules of the running config are rebuilt with them
        and every permission is held against them (those no longer allowed are revoked)."""
        self._dns_answers = dict(dns_answers)  # a copy: the resolver updates its own
        turn = self._turn
        if turn is None:  # `start` builds the rules with them
            return
        turn.access = PeerAccess.from_config(self.config, self._dns_answers, previous=turn.access)
        turn.revalidate()
        self.process_events()

    def _warn_demo_credentials(self) -> None:
        auth = self.config.auth
        if auth.type == "static" and (auth.username, auth.password) == DEMO_CREDENTIALS:
            log.warning(
                "the demo credentials user-1/pass-1 are in use: "
                "set auth.credentials before exposing this server"
            )

    # -- timers and events --------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.tick(time.time())

    def tick(self, now: float) -> None:
        assert self._turn is not None
        self._turn.expire(now)
        self.process_events()

    def stats(self) -> StatsSnapshot:
        """A snapshot of every counter (a worker process sends it to the supervisor as
        `to_dict()`). Listener figures are wire bytes: STUN messages as sent, ChannelData with
        its 4-byte header (stream padding not counted); cluster figures are payload bytes, `rx`
        from peers and `tx` to peers."""
        turn, relays = self.turn, self.relays
        if turn is None or relays is None:
            return StatsSnapshot()
        self.offload.fold()  # what the kernel relayed, into the channels' counters
        if self.forwarder is not None:
            self.forwarder.fold()  # and what the forwarder thread relayed
        # relayed traffic per listener (framed: ChannelData) and per cluster, as
        # [rx_packets, rx_bytes, tx_packets, tx_bytes]
        framed: dict[str, list[int] | None] = dict.fromkeys(relays.counters)
        clusters: dict[str, list[int]] = {}

        def add(listener: str, t: Traffic) -> None:
            row = framed.get(listener)
            if row is None:
                row = framed[listener] = [0, 0, 0, 0]
            cl = clusters.get(t.cluster or "")
            if cl is None:
                cl = clusters[t.cluster or ""] = [0, 0, 0, 0]
            cl[0] += t.in_packets
            cl[1] += t.in_bytes
            cl[2] += t.out_packets
            cl[3] += t.out_bytes
            if t.framed:  # Send/Data indications are already in the control counters
                row[0] += t.out_packets
                row[1] += t.out_bytes + 4 * t.out_packets
                row[2] += t.in_packets
                row[3] += t.in_bytes + 4 * t.in_packets

        for (listener, _, _), t in turn.retired.items():
            add(listener, t)
        for alloc in turn.all_allocations():
            for t in alloc.traffic():
                add(alloc.listener, t)
        for conn in turn.tcp.connections.values():  # RFC 6062 peer connections still open
            add(conn.allocation.listener, conn.traffic)

        def listener_stats(name: str, relayed: list[int] | None) -> ListenerStats:
            c = relays.counters.get(name) or ListenerCounters()
            lst = self.listeners.get(name)
            rx_packets, rx_bytes, tx_packets, tx_bytes = relayed or (0, 0, 0, 0)
            return ListenerStats(
                rx_packets=c.rx_packets + rx_packets,
                rx_bytes=c.rx_bytes + rx_bytes,
                tx_packets=c.tx_packets + tx_packets,
                tx_bytes=c.tx_bytes + tx_bytes,
                dropped=c.dropped,
                proxy_untrusted=c.proxy_untrusted,
                proxy_malformed=c.proxy_malformed,
                # a stopped listener: what its allocations and counters say
                connections=lst.connections_open
                if lst is not None
                else len(turn.allocations.get(name, {})),
                connections_total=lst.connections_total if lst is not None else c.allocations_total,
                streams=isinstance(lst, StreamListener),
            )

        clusters.pop("", None)
        return StatsSnapshot(
            listeners={name: listener_stats(name, relayed) for name, relayed in framed.items()},
            clusters={
                name: ClusterStats(
                    rx_packets=rx_packets,
                    rx_bytes=rx_bytes,
                    tx_packets=tx_packets,
                    tx_bytes=tx_bytes,
                )
                for name, (rx_packets, rx_bytes, tx_packets, tx_bytes) in clusters.items()
            },
            server=ServerStats(
                allocations=turn.allocation_count,
                # abuse counters of the state machine
                auth_failures=turn.auth_failures,
                auth_locked=turn.auth_locked,
                rate_limited=turn.rate_limited,
                malformed=turn.malformed,
                internal_errors=turn.internal_errors,
            ),
            offload=self.offload.stats(),
            forwarder=self.forwarder.stats() if self.forwarder is not None else ForwarderStats(),
            bandwidth=self.bandwidth.stats(),
        )

    def process_events(self) -> None:
        turn = self._turn
        if turn is None:
            return
        assert self.relays is not None
        logging_on = TURN_LOGGER.isEnabledFor(logging.INFO)
        for event in turn.drain_events():
            if isinstance(event, ev.AllocationCreated):
                counters = self.relays.counters.get(event.allocation.listener)
                if counters is not None:
                    counters.allocations_total += 1
            if logging_on:  # formatting a line that is not wanted costs more than the request
                log_event(event)
        if turn.allocation_count == 0:
            self.idle.set()
        else:
            self.idle.clear()


def allocations_fd_allows() -> tuple[int, int] | None:
    """(open-file soft limit, allocations it leaves room for): one relay socket per UDP
    allocation, after what is open now (listeners included) and FD_RESERVE. None when
    unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 0
    return soft, max(0, soft - in_use - FD_RESERVE)


def check_fd_limit(config: StunnerConfig) -> int | None:
    """Log how many allocations the open-file limit allows; warn when that is fewer than the
    config could hold (its allocation cap, else its relay ports). Returns the number."""
    found = allocations_fd_allows()
    if found is None:
        return None
    limit, allows = found
    ports: set[int] = set()
    for lis in config.listeners:
        ports.update(range(lis.min_relay_port, lis.max_relay_port + 1))
    wanted = len(ports)
    if config.admin.max_allocations:
        wanted = min(wanted, config.admin.max_allocations)
    fields = {"nofile": limit, "allocations": allows, "relay_ports": len(ports)}
    if allows < wanted:
        netlog.warning(
            "open-file limit allows fewer allocations than configured (TCP/TLS ones take two "
            "descriptors); raise it with `ulimit -n` or LimitNOFILE",
            **fields,
        )
    else:
        netlog.info("open-file limit", **fields)
    return allows
