"""The running server: listeners, relay ports, timers, live reconfiguration.

This is the library API too: `async with Server(config) as srv:` starts a TURN server inside the
caller's event loop (uvloop or not), `srv.port("udp-listener")` tells where it listens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import ssl
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

from stunner_dp.config import ListenerConfig, StunnerConfig, diff_configs, parse_config
from stunner_dp.observe.logs import get_logger
from stunner_dp.turn import events as ev
from stunner_dp.turn.access import PeerAccess
from stunner_dp.turn.allocation import Traffic
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr

from .counters import ListenerCounters
from .relay import RelayPool
from .tcp import StreamListener
from .udp import UdpListener, bind_udp

if TYPE_CHECKING:  # pyOpenSSL is imported when a DTLS listener starts, not before
    from .dtls import DtlsListener

Listener: TypeAlias = "UdpListener | StreamListener | DtlsListener"
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
    ) -> None:
        self.config = config if isinstance(config, StunnerConfig) else parse_config(config)
        self._nonce_secret = nonce_secret or os.urandom(32)
        self._software = software
        self._alternate = alternate_server
        self._reuse_port = reuse_port
        self._bind_host = bind_host  # None: the wildcard of the listener's address family
        self.listeners: dict[str, Listener] = {}
        self.failed_listeners: dict[str, str] = {}
        self.turn: TurnServer | None = None
        self.relays: RelayPool | None = None
        self._timer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()
        self.idle = asyncio.Event()  # set whenever no allocation is left (for drain)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Server:
        self._loop = asyncio.get_running_loop()
        self.relays = RelayPool(self._loop)
        self.turn = TurnServer(
            self.config,
            self.relays,
            nonce_secret=self._nonce_secret,
            software=self._software,
            alternate_server=self._alternate,
        )
        self._warn_demo_credentials()
        for listener in self.config.listeners:
            await self._start_listener(listener)
        if self.config.listeners and not self.listeners:
            raise RuntimeError(
                "no listener could start: " + "; ".join(self.failed_listeners.values())
            )
        check_fd_limit(self.config)
        self._timer = asyncio.create_task(self._tick_forever())
        return self

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.turn is not None:
            self.turn.close()
            self.process_events()
        for name in list(self.listeners):
            self._stop_listener(name)

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
        return self.turn.allocation_count if self.turn else 0

    # -- listeners ----------------------------------------------------------------------------

    async def _start_listener(self, listener: ListenerConfig) -> None:
        assert self.turn is not None and self._loop is not None
        host = self._bind_host or ("::" if ":" in listener.address else "0.0.0.0")
        assert self.relays is not None
        # Counters outlive a listener restart (a scrape must never see a counter go down).
        counters = self.relays.counters.setdefault(listener.name, ListenerCounters())
        try:
            if listener.transport == "udp":
                sock = bind_udp(host, listener.port, reuse_port=self._reuse_port)
                self.listeners[listener.name] = UdpListener(
                    self._loop,
                    listener.name,
                    sock,
                    self.turn,
                    self.process_events,
                    time.time,
                    counters,
                )
            elif listener.transport in ("tcp", "tls"):
                stream = StreamListener(
                    listener.name,
                    listener.transport,
                    self.turn,
                    self.process_events,
                    time.time,
                    counters,
                )
                context = tls_context(listener) if listener.transport == "tls" else None
                stream.asyncio_server = await self._loop.create_server(
                    stream.protocol,
                    host,
                    listener.port,
                    ssl=context,
                    reuse_port=self._reuse_port or None,
                    reuse_address=True,
                )
                self.listeners[listener.name] = stream
            elif listener.transport == "dtls":
                from .dtls import DtlsListener, dtls_context

                dtls = dtls_context(listener)  # before the bind: a bad cert leaves no socket
                sock = bind_udp(host, listener.port, reuse_port=self._reuse_port)
                self.listeners[listener.name] = DtlsListener(
                    self._loop,
                    listener.name,
                    sock,
                    self.turn,
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

    async def apply(self, config: StunnerConfig, access: PeerAccess | None = None) -> None:
        """Make `config` the running config, touching only what changed. `access`: the peer
        rules to use when the caller built them (with STRICT_DNS answers); else from `config`."""
        assert self.turn is not None
        old = self.config
        diff = diff_configs(old, config)
        for name in (*diff.listeners_to_stop, *diff.listeners_to_restart):
            self._stop_listener(name)
        self.config = config
        self.turn.update_config(config, access or PeerAccess.from_config(config))
        for name in [n for n in self.failed_listeners if config.listener(n) is None]:
            del self.failed_listeners[name]
        # Every configured listener that is not running starts: the new and restarted ones, and
        # those that could not start before (a port taken), changed or not.
        for listener in config.listeners:
            if listener.name not in self.listeners:
                await self._start_listener(listener)
        self._warn_demo_credentials()
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
        assert self.turn is not None
        self.turn.expire(now)
        self.process_events()

    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter, as plain data (a worker process sends it to the
        supervisor as it is). Listener figures are wire bytes: STUN messages as sent, ChannelData
        with its 4-byte header (stream padding not counted); cluster figures are payload bytes,
        `rx` from peers and `tx` to peers."""
        turn, relays = self.turn, self.relays
        listeners: dict[str, dict[str, int]] = {}
        clusters: dict[str, dict[str, int]] = {}
        if turn is None or relays is None:
            return {"allocations": 0, "listeners": listeners, "clusters": clusters}

        def listener_row(name: str) -> dict[str, int]:
            if name not in listeners:
                c = relays.counters.get(name) or ListenerCounters()
                lst = self.listeners.get(name)
                streams = isinstance(lst, StreamListener)
                # TCP/TLS: open connections; DTLS: associations (UDP: none, allocations count)
                conns = getattr(lst, "connections", None)
                listeners[name] = {
                    "rx_packets": c.rx_packets,
                    "rx_bytes": c.rx_bytes,
                    "tx_packets": c.tx_packets,
                    "tx_bytes": c.tx_bytes,
                    "dropped": c.dropped,
                    "connections": len(conns)
                    if conns is not None
                    else len(turn.allocations.get(name, {})),
                    "connections_total": getattr(lst, "connections_total", c.allocations_total),
                    "streams": int(streams),
                }
            return listeners[name]

        def add(listener: str, t: Traffic) -> None:
            row = listener_row(listener)
            cl = clusters.setdefault(
                t.cluster or "",
                dict.fromkeys(("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"), 0),
            )
            cl["tx_packets"] += t.out_packets
            cl["tx_bytes"] += t.out_bytes
            cl["rx_packets"] += t.in_packets
            cl["rx_bytes"] += t.in_bytes
            if t.framed:  # Send/Data indications are already in the control counters
                row["rx_packets"] += t.out_packets
                row["rx_bytes"] += t.out_bytes + 4 * t.out_packets
                row["tx_packets"] += t.in_packets
                row["tx_bytes"] += t.in_bytes + 4 * t.in_packets

        for name in relays.counters:
            listener_row(name)
        for (listener, _, _), t in turn.retired.items():
            add(listener, t)
        for alloc in turn.all_allocations():
            for t in alloc.traffic():
                add(alloc.listener, t)
        clusters.pop("", None)
        return {
            "allocations": turn.allocation_count,
            "listeners": listeners,
            "clusters": clusters,
            # abuse counters of the state machine, server-wide
            "auth_failures": turn.auth_failures,
            "auth_locked": turn.auth_locked,
            "rate_limited": turn.rate_limited,
            "malformed": turn.malformed,
        }

    def process_events(self) -> None:
        turn = self.turn
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


def log_event(event: ev.Event) -> None:
    match event:
        case ev.AllocationCreated(allocation=a):
            log.info(
                "allocation created",
                listener=a.listener,
                transport=a.transport,
                client=f"{a.client[0]}:{a.client[1]}",
                user=a.username,
                relay=f"{a.relay_addr[0]}:{a.relay_addr[1]}",
                lifetime=int(a.expires - a.created),
            )
        case ev.AllocationRefreshed(allocation=a, lifetime=lifetime):
            log.info(
                "allocation refreshed",
                listener=a.listener,
                client=f"{a.client[0]}:{a.client[1]}",
                user=a.username,
                lifetime=lifetime,
            )
        case ev.AllocationDeleted(allocation=a, reason=reason):
            op, ob, ip_, ib = a.totals()
            log.info(
                "allocation deleted",
                listener=a.listener,
                transport=a.transport,
                client=f"{a.client[0]}:{a.client[1]}",
                user=a.username,
                relay=f"{a.relay_addr[0]}:{a.relay_addr[1]}",
                reason=reason,
                packets_to_peers=op,
                bytes_to_peers=ob,
                packets_to_client=ip_,
                bytes_to_client=ib,
            )
        case ev.PermissionDenied(listener=listener, client=client, peer=peer, clusters=clusters):
            log.info(
                "permission denied: no route to endpoint",
                peer=f"{peer[0]}:{peer[1]}",
                listener=listener,
                client=f"{client[0]}:{client[1]}",
                clusters_tried=list(clusters),
            )
        case ev.AuthFailed(listener=listener, client=client, username=user, reason=reason):
            log.info(
                "authentication failed",
                listener=listener,
                client=f"{client[0]}:{client[1]}",
                user=user,
                reason=reason,
            )
        case ev.RequestRejected(listener=listener, client=client, method=m, code=code, reason=r):
            log.debug(
                "request rejected",
                listener=listener,
                client=f"{client[0]}:{client[1]}",
                method=m,
                code=code,
                reason=r,
            )


FD_RESERVE = 64  # descriptors kept back for logs, metrics, health checks, DNS and accepts


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


def tls_context(listener: ListenerConfig) -> ssl.SSLContext:
    """A server context from the listener's base64 PEM cert and key (as STUNner stores them)."""
    import base64

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_bytes(base64.b64decode(listener.cert))
        key.write_bytes(base64.b64decode(listener.key))
        context.load_cert_chain(cert, key)
    return context
