"""The control plane of the compiled user-space forwarder (stunner_dp.forwarder).

With it on, a C thread reads every UDP listener and relay socket of this `Server`. It relays
the ChannelData of the channels installed here, and hands every other datagram back. Those come
as records on a Unix socket, which this module reads in the event loop and passes, in arrival
order, to the socket's own `receive(data, addr)`: the same code the Python read loops run. So
STUN, indications, permissions and every refusal keep Python's behaviour exactly.

Entries follow the seam the eBPF control plane uses (`RelayHandle.channel_bound` /
`channel_unbound`): one exists exactly while Python's hot path would relay that channel.
The thread's per-entry counts are folded into the channel's `Traffic` at scrape time and
when an entry goes, as the kernel's are.

`forwarder` (Server's argument, `--forwarder`, `STUNNER_DP_FORWARDER`): "auto" (the default:
on where the shared object loads), "compiled" (the same, but a host where it cannot load is
warned about) or "python" (off).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stunner_dp.forwarder import (
    KIND_LISTENER,
    KIND_RELAY,
    RECORD,
    Forwarder,
    ForwarderError,
    forwarder_unavailable_reason,
)
from stunner_dp.observe.logs import get_logger
from stunner_dp.observe.stats import ForwarderStats
from stunner_dp.turn.allocation import Allocation, Channel
from stunner_dp.turn.types import Addr, Transport

from .counters import InstallFailures

if TYPE_CHECKING:
    from .relay import RelaySocket

__all__ = ["FORWARDER_ENV", "FORWARDER_MODES", "ForwarderControl", "start_forwarder"]

log = get_logger("net")

FORWARDER_ENV = "STUNNER_DP_FORWARDER"
FORWARDER_MODES = ("auto", "compiled", "python")
HANDOFF_READS = 4  # recv calls per wake-up of the handoff socket (each up to READ_SIZE)
READ_SIZE = 1 << 20
Receiver = Callable[[bytes, Addr], None]


def forwarder_mode(requested: str | None) -> str:
    """The mode asked for: the argument, else $STUNNER_DP_FORWARDER, else "auto"."""
    mode = (requested or os.environ.get(FORWARDER_ENV) or "auto").strip().lower()
    if mode not in FORWARDER_MODES:
        raise ValueError(
            f"forwarder: {mode!r} is not one of {', '.join(FORWARDER_MODES)} "
            f"(the --forwarder flag or ${FORWARDER_ENV})"
        )
    return mode


def start_forwarder(
    loop: asyncio.AbstractEventLoop, requested: str | None
) -> ForwarderControl | None:
    """The forwarder for one Server, or None (Python relays) with one log line saying why."""
    mode = forwarder_mode(requested)
    if mode == "python":
        return None
    reason = forwarder_unavailable_reason()
    if reason is None:
        try:
            return ForwarderControl(loop, Forwarder())
        except (ForwarderError, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
    if mode == "compiled":
        log.warning(f"compiled forwarder cannot run: {reason}; relaying in Python")
    else:
        log.info(f"compiled forwarder not used: {reason}; relaying in Python")
    return None


@dataclass(slots=True)
class _Entry:
    id: int
    channel: Channel
    relay: RelaySocket
    allocation: Allocation
    listener_fd: int
    relay_fd: int
    # what of the thread's counts is already in `channel`: fwd/rev packets, bytes, dropped
    seen: list[int] = field(default_factory=lambda: [0] * 6)


class ForwarderControl:
    """The running forwarder, the sockets it reads and the channels it relays. One loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, forwarder: Forwarder) -> None:
        self._loop = loop
        self.forwarder = forwarder
        self._receivers: dict[int, Receiver] = {}  # token -> the socket's receive()
        self._tokens: dict[int, int] = {}  # fd -> token
        self._next_token = 1
        self._entries: dict[Channel, _Entry] = {}
        self._by_fd: dict[int, set[Channel]] = {}  # listener and relay fd -> its channels
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._held = 0  # bytes of an incomplete record at the front of _buffer
        self.installs = 0
        self._failures = InstallFailures("channel not in the compiled forwarder: Python relays it")
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0
        self._fd = forwarder.handoff.fileno()
        loop.add_reader(self._fd, self._drain)

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def install_failures(self) -> int:
        return self._failures.count

    # -- sockets -------------------------------------------------------------------------------

    def watch(self, sock: socket.socket, relay: bool, receive: Receiver) -> bool:
        """Hand `sock` to the thread; False when it refuses (the caller reads it itself)."""
        token = self._next_token
        self._next_token = token % 0xFFFFFFFF + 1
        stale = self._tokens.pop(sock.fileno(), None)
        if stale is not None:  # a socket closed without unwatch had this number: forget it
            self._receivers.pop(stale, None)  # (the thread forgets it and its entries too)
            for channel in list(self._by_fd.get(sock.fileno(), ())):
                self._forget(channel)
        try:
            self.forwarder.watch(sock, KIND_RELAY if relay else KIND_LISTENER, token)
        except ForwarderError as exc:
            log.warning("socket left to Python", error=exc.reason)
            return False
        self._receivers[token] = receive
        self._tokens[sock.fileno()] = token
        return True

    def unwatch(self, sock: socket.socket) -> None:
        """The thread stops reading `sock` now; its entries go (their counts folded in). Records
        it handed off before stay queued and are dropped when they come: the socket is gone."""
        fd = sock.fileno()
        token = self._tokens.pop(fd, None)
        if token is None:
            return
        for channel in list(self._by_fd.pop(fd, ())):
            self.unbind(channel)
        self.forwarder.unwatch(fd)
        self._receivers.pop(token, None)

    def watching(self, sock: socket.socket) -> bool:
        return sock.fileno() in self._tokens

    # -- channels ------------------------------------------------------------------------------

    def bind(self, relay: RelaySocket, alloc: Allocation, channel: Channel) -> None:
        """Install `channel` when the thread can relay it (a UDP client, both sockets its)."""
        if channel in self._entries or alloc.transport != Transport.UDP:
            return
        listener = getattr(alloc.link, "sock", None)
        if not isinstance(listener, socket.socket) or listener.type != socket.SOCK_DGRAM:
            return
        if not (self.watching(listener) and self.watching(relay.sock)):
            return  # a diverted relay (bandwidth cap), or a socket the thread refused
        try:
            entry = self.forwarder.add(
                listener, (alloc.client[0], alloc.client[1]), channel.number, relay.sock,
                (channel.peer[0], channel.peer[1]),
            )  # fmt: skip
        except (ForwarderError, ValueError, OSError) as exc:
            self._failures.record(exc)  # a full table, an address of the other family
            return
        self._entries[channel] = _Entry(
            entry, channel, relay, alloc, listener.fileno(), relay.sock.fileno()
        )
        self._by_fd.setdefault(listener.fileno(), set()).add(channel)
        self._by_fd.setdefault(relay.sock.fileno(), set()).add(channel)
        self.installs += 1

    def unbind(self, channel: Channel) -> None:
        """The thread stops relaying `channel` before this returns; its counts are folded."""
        entry = self._forget(channel)
        if entry is not None:
            self._fold_one(entry)
            self.forwarder.remove(entry.id)

    def _forget(self, channel: Channel) -> _Entry | None:
        entry = self._entries.pop(channel, None)
        if entry is not None:
            for fd in (entry.listener_fd, entry.relay_fd):
                channels = self._by_fd.get(fd)
                if channels is not None:
                    channels.discard(channel)
                    if not channels:
                        del self._by_fd[fd]
        return entry

    def fold(self) -> None:
        """Add what the thread relayed since the last read into each channel's Traffic."""
        for entry in self._entries.values():
            self._fold_one(entry)

    def _fold_one(self, entry: _Entry) -> None:
        counts = self.forwarder.counters(entry.id)
        if counts is None:
            return
        now = [
            counts.fwd_packets, counts.fwd_bytes, counts.rev_packets, counts.rev_bytes,
            counts.fwd_dropped, counts.rev_dropped,
        ]  # fmt: skip
        d = [n - s for n, s in zip(now, entry.seen, strict=True)]
        entry.seen = now
        chan = entry.channel
        chan.out_packets += d[0]
        chan.out_bytes += d[1]
        chan.in_packets += d[2]
        chan.in_bytes += d[3]
        listener_counters = getattr(entry.allocation.link, "counters", None)
        if listener_counters is not None:
            listener_counters.dropped += d[4]
        entry.relay.dropped += d[5]
        self.tx_packets += d[0]
        self.tx_bytes += d[1]
        self.rx_packets += d[2]
        self.rx_bytes += d[3]

    def stats(self) -> ForwarderStats:
        totals, entries = self.forwarder.totals()
        return ForwarderStats(
            active=1,
            entries=entries,
            installs=self.installs,
            install_failures=self.install_failures,
            tx_packets=self.tx_packets,
            tx_bytes=self.tx_bytes,
            rx_packets=self.rx_packets,
            rx_bytes=self.rx_bytes,
            handed_off=totals["handed_off"],
            handoff_dropped=totals["handoff_dropped"],
        )

    # -- what the thread hands back ------------------------------------------------------------

    def _drain(self) -> None:
        recv_into = self.forwarder.handoff.recv_into
        view = self._view
        for _ in range(HANDOFF_READS):
            try:
                n = recv_into(view[self._held :])
            except (BlockingIOError, InterruptedError):
                return
            if n == 0:
                self._loop.remove_reader(self._fd)  # the thread's end closed: it has stopped
                return
            self._dispatch(self._held + n)

    def _dispatch(self, end: int) -> None:
        buf, view = self._buffer, self._view
        receivers = self._receivers
        pos = 0
        head = RECORD.size
        while end - pos >= head:
            length, token, family, port, ip = RECORD.unpack_from(buf, pos)
            if end - pos < head + length:
                break
            receive = receivers.get(token)
            if receive is not None:
                host = socket.inet_ntop(family, ip[:4] if family == socket.AF_INET else ip)
                data = bytes(view[pos + head : pos + head + length])
                try:
                    receive(data, (host, port))
                except Exception as exc:  # one datagram's bug must not lose the records after it
                    log.error("handed-off datagram failed", error=f"{type(exc).__name__}: {exc}")
            pos += head + length
        held = end - pos
        if held:
            buf[:held] = bytes(view[pos:end])
        self._held = held

    def close(self) -> None:
        """Stop the thread (the sockets are unwatched first, by their own close)."""
        for channel in list(self._entries):
            self.unbind(channel)
        for fd in list(self._tokens):
            self.forwarder.unwatch(fd)
        self._tokens.clear()
        self._receivers.clear()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._fd)
        self.forwarder.close()
