"""Relay sockets: one UDP socket per allocation, bound in the listener's relay port range.

A relay socket reads with `loop.add_reader` and plain non-blocking `recvfrom`, draining what the
kernel has queued before it returns to the loop. Datagrams from a peer with a bound channel go
to the client as ChannelData after one dict lookup; that is the hot path of the whole server.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from stunner_dp.config import ListenerConfig
from stunner_dp.observe.logs import get_logger
from stunner_dp.stun import FAMILY_IPV4, FAMILY_IPV6, data_indication
from stunner_dp.turn.allocation import Allocation, Channel
from stunner_dp.turn.types import Addr, Transport

from . import gso
from .counters import ListenerCounters

if TYPE_CHECKING:
    from .forwarder import ForwarderControl
    from .offload import OffloadController

log = get_logger("net")

_pack_channel_header_into = struct.Struct("!HH").pack_into
READ_BATCH = 64  # datagrams read per wake-up, so one busy socket cannot starve the others
RECV_SIZE = 65536
PortKey = tuple[int, str, int]  # (address family, bound address, port)
MAX_SEG = gso.MAX_SEGMENT + 4  # a ChannelData frame: header and payload


# <linux/in.h>; Python's socket module names IP_MTU_DISCOVER only on some builds
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)  # DF set, never fragmented


def primary_address(family: int) -> str:
    """The address this host uses to reach the outside, found without sending anything (a UDP
    connect only picks a route). Used when a listener's `address` is a wildcard."""
    probe_ip, fam = (
        ("2001:db8::1", socket.AF_INET6) if family == FAMILY_IPV6 else ("192.0.2.1", socket.AF_INET)
    )
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as probe:
            probe.connect((probe_ip, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "::1" if family == FAMILY_IPV6 else "127.0.0.1"


def family_address(listener: ListenerConfig, family: int) -> str:
    """The listener's relay address of `family`: `address`, `additional_address` (the other
    family's), or that family's wildcard (a dual-stack `address: "::"`: the host's own)."""
    address = listener.address or "0.0.0.0"
    if (":" in address) == (family == FAMILY_IPV6):
        return address
    if listener.additional_address:
        return listener.additional_address
    return "::" if family == FAMILY_IPV6 else "0.0.0.0"


class RelaySocket:
    """One relay transport address (implements turn.types.RelayHandle)."""

    __slots__ = (
        "_key",
        "_loop",
        "_pool",
        "_reading",
        "_sock",
        "_watched",
        "address",
        "allocation",
        "dropped",
        "sendmsg",
        "sendto",
    )

    def __init__(
        self, pool: RelayPool, sock: socket.socket, advertised: Addr, key: PortKey
    ) -> None:
        self._pool = pool
        self._key = key
        pool.held.add(key)
        self._loop = pool.loop
        self._sock = sock
        self.address = advertised
        self.allocation: Allocation | None = None
        self.sendto: Callable[[bytes | memoryview, Addr], object] = sock.sendto
        self.sendmsg: Callable[..., int] | None = sock.sendmsg
        self.dropped = 0  # datagrams from peers without a permission
        self._reading = False  # the loop reads the socket
        self._watched = False  # the compiled forwarder's thread reads it

    def attach(self, allocation: Allocation | None) -> None:
        self.allocation = allocation
        if allocation is None or self._reading or self._watched:
            return
        forwarder = self._pool.forwarder
        # the thread relays only for UDP clients: a stream client's relay stays in the loop
        # (every datagram would otherwise make a round trip through the thread for nothing)
        if (
            forwarder is not None
            and allocation.transport == Transport.UDP
            and forwarder.watch(self._sock, True, self.receive)
        ):
            self._watched = True
        else:
            self._loop.add_reader(self._sock.fileno(), self._hot_reader(allocation))
            self._reading = True

    def _hot_reader(self, allocation: Allocation) -> Callable[[], None]:
        # GSO segments IPv6 datagrams as it does IPv4 ones (and the link's family, not the
        # relay's, is the one that sends): every UDP client gets the batching reader.
        batching = allocation.link.sendmsg is not None and self._pool.gso
        return self._on_readable if batching else self._on_readable_plain

    @property
    def sock(self) -> socket.socket:
        return self._sock

    def divert(
        self, send: Callable[[bytes | memoryview, Addr], object], reader: Callable[[], None]
    ) -> None:
        """Take this relay off the hot paths (a user over its bandwidth cap, net/bandwidth.py):
        `send` in place of the socket's sendto towards peers, `reader` in place of the
        hot-path reader of what peers send."""
        self.sendto = send
        if self._watched:  # the capped reader runs in Python: the thread lets go
            forwarder = self._pool.forwarder
            if forwarder is not None:
                forwarder.unwatch(self._sock)
            self._watched = False
            self._loop.add_reader(self._sock.fileno(), reader)
            self._reading = True
        elif self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._loop.add_reader(self._sock.fileno(), reader)

    def undivert(self) -> None:
        """Back on the hot paths."""
        self.sendto = self._sock.sendto
        if self._reading and self.allocation is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
            self.attach(self.allocation)  # the forwarder's thread again, when it is on

    def to_client_slow(self, alloc: Allocation, peer: Addr, data: bytes) -> None:
        """A datagram from a permitted peer without a channel: a Data indication."""
        self._to_client_slow(alloc, peer, data)

    def channel_bound(self, allocation: Allocation, channel: Channel) -> None:
        offload, forwarder = self._pool.offload, self._pool.forwarder
        if offload is not None:
            offload.bind(self._sock, allocation, channel)
        if forwarder is not None:  # what the kernel passes up, the thread relays
            forwarder.bind(self, allocation, channel)

    def channel_unbound(self, channel: Channel) -> None:
        offload, forwarder = self._pool.offload, self._pool.forwarder
        if offload is not None:
            offload.unbind(channel)
        if forwarder is not None:
            forwarder.unbind(channel)

    def set_dont_fragment(self) -> bool:
        """DONT-FRAGMENT (RFC 8656 7.2, 14): never fragment this relay's datagrams; IPv4 ones
        carry DF. Socket setup only: the send path is unchanged (too big is EMSGSIZE, a drop)."""
        try:
            if self._sock.family == socket.AF_INET6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DONTFRAG, 1)
            else:
                self._sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        if self._watched:
            forwarder = self._pool.forwarder
            if forwarder is not None:
                forwarder.unwatch(self._sock)
            self._watched = False
        self.allocation = None
        self._sock.close()
        self._pool.held.discard(self._key)

    def _on_readable(self) -> None:
        alloc = self.allocation
        if alloc is None:
            return
        # Datagrams land 4 bytes past the end of the previous ChannelData frame in one shared
        # buffer, and their header is written in front of them in place. Consecutive frames of
        # one size (a video frame's packets, or a backlog) then leave in one GSO sendmsg;
        # a lone datagram costs one sendto, as it would without batching.
        recvfrom_into = self._sock.recvfrom_into
        pool = self._pool
        buf, view = pool.buffer, pool.view
        peer_channels = alloc.peer_channels
        ipv6 = self._sock.family == socket.AF_INET6
        off = 0  # bytes of batched frames at the front of buf
        seg = 0  # the size of each batched frame
        count = 0
        for _ in range(READ_BATCH):
            try:
                size, peer = recvfrom_into(view[off + 4 : off + 4 + RECV_SIZE])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error surfaced on the socket: nothing to relay
            if ipv6:  # (host, port, flowinfo, scope_id): our tables key on (host, port)
                peer = (peer[0], peer[1])
            chan = peer_channels.get(peer)
            if chan is None:
                self._to_client_slow(alloc, peer, bytes(view[off + 4 : off + 4 + size]))
                continue
            chan.in_packets += 1
            chan.in_bytes += size
            _pack_channel_header_into(buf, off, chan.number, size)
            frame = size + 4
            if count == 0 or frame == seg:
                seg = frame
                off += frame
                count += 1
                if count < gso.MAX_SEGMENTS and off + seg <= gso.MAX_BYTES and seg <= MAX_SEG:
                    continue
            elif frame < seg:  # a shorter frame may end a batch as its last segment
                off += frame
                count += 1
            else:  # a longer one starts the next batch
                self._send_batch(alloc, view[:off], seg, count)
                buf[:frame] = bytes(view[off : off + frame])  # may overlap: copy first
                off, seg, count = frame, frame, 1
                if off + seg <= gso.MAX_BYTES and seg <= MAX_SEG:  # else it leaves alone
                    continue
            self._send_batch(alloc, view[:off], seg, count)
            off = count = 0
        if count:
            self._send_batch(alloc, view[:off], seg, count)

    def _send_batch(self, alloc: Allocation, frames: memoryview, seg: int, count: int) -> None:
        try:
            if count == 1:
                alloc.link.sendto(frames, alloc.client)
            elif self._pool.gso:
                send = alloc.link.sendmsg
                assert send is not None
                send([frames], gso.segment_option(seg), 0, alloc.client)
            else:
                self._send_each(alloc, frames, seg)
        except OSError as exc:
            if count > 1 and exc.errno in gso.UNSUPPORTED_ERRNOS:
                # The way out cannot segment (a device without checksum offload): batch no
                # more, and let this batch go one datagram at a time.
                self._pool.gso = False
                log.warning(
                    "UDP GSO refused by the kernel: relaying datagram by datagram", error=str(exc)
                )
                self._send_each(alloc, frames, seg)
            elif count > 1 and exc.errno == errno.EINVAL:
                self._send_each(alloc, frames, seg)  # this batch's shape, not the device
            else:
                self.dropped += count

    def _send_each(self, alloc: Allocation, frames: memoryview, seg: int) -> None:
        for start in range(0, len(frames), seg):
            try:
                alloc.link.sendto(frames[start : start + seg], alloc.client)
            except OSError:
                self.dropped += 1

    def receive(self, data: bytes, peer: Addr) -> None:
        """A peer's datagram the compiled forwarder handed back: what the read loops do."""
        alloc = self.allocation
        if alloc is None:
            return
        chan = alloc.peer_channels.get(peer)
        if chan is None:
            self._to_client_slow(alloc, peer, data)
            return
        frame = bytearray(4 + len(data))
        frame[4:] = data
        self._send_channel_data(alloc, chan, memoryview(frame), len(data))

    def _send_channel_data(
        self, alloc: Allocation, chan: Channel, frame: memoryview, size: int
    ) -> None:
        """`frame` holds the payload past 4 free bytes: the header goes there, then it leaves."""
        _pack_channel_header_into(frame, 0, chan.number, size)
        try:
            alloc.link.sendto(frame[: size + 4], alloc.client)
        except OSError:
            self.dropped += 1
            return
        chan.in_packets += 1
        chan.in_bytes += size

    def _on_readable_plain(self) -> None:
        if self.allocation is not None:
            self._relay_one_by_one(self.allocation)

    def _relay_one_by_one(self, alloc: Allocation) -> None:
        # Stream clients and kernels without GSO: each frame is handed on by itself.
        recvfrom_into = self._sock.recvfrom_into
        pool = self._pool
        view, payload_view = pool.view, pool.payload_view
        ipv6 = self._sock.family == socket.AF_INET6
        for _ in range(READ_BATCH):
            try:
                size, peer = recvfrom_into(payload_view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if ipv6:  # (host, port, flowinfo, scope_id): our tables key on (host, port)
                peer = (peer[0], peer[1])
            chan = alloc.peer_channels.get(peer)
            if chan is not None:
                self._send_channel_data(alloc, chan, view, size)
                continue
            self._to_client_slow(alloc, peer, bytes(payload_view[:size]))

    def _to_client_slow(self, alloc: Allocation, peer: Addr, data: bytes) -> None:
        perm = alloc.permissions.get(peer[0])
        if perm is None or peer[1] not in perm.ports:
            self.dropped += 1
            return
        perm.in_packets += 1
        perm.in_bytes += len(data)
        indication = data_indication(peer, data)
        counters = self._pool.counters.get(alloc.listener)
        if counters is not None:
            counters.tx_packets += 1
            counters.tx_bytes += len(indication)
        try:
            alloc.link.sendto(indication, alloc.client)
        except OSError:
            self.dropped += 1


class RelayPool:
    """Binds relay sockets for Allocate (implements turn.types.RelayFactory)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # One receive buffer for every relay socket (the loop runs one callback at a time),
        # room for a GSO batch of frames plus one more datagram.
        self.gso = gso.gso_supported()
        self.buffer = bytearray(gso.MAX_BYTES + 4 + RECV_SIZE)
        self.view = memoryview(self.buffer)
        self.payload_view = self.view[4:]
        self.counters: dict[str, ListenerCounters] = {}  # by listener name, for Data indications
        self.held: set[PortKey] = set()  # (family, bind address, port) of our open relay sockets
        self._advertised: dict[tuple[str, int], str] = {}
        self._bind_ips: dict[tuple[str, int], str] = {}
        self.exhausted = 0  # Allocates that found no free port
        # the kernel fast path's control plane while it is on (Server owns it)
        self.offload: OffloadController | None = None
        # the compiled forwarder, when this Server runs one (Server owns it)
        self.forwarder: ForwarderControl | None = None

    def advertised_ip(self, listener: ListenerConfig, family: int) -> str:
        address = family_address(listener, family)
        if listener.public_relay_address and address == listener.address:
            return listener.public_relay_address  # validated: the listener's family
        key = (address, family)
        if key not in self._advertised:
            ip = ipaddress.ip_address(address)
            self._advertised[key] = primary_address(family) if ip.is_unspecified else str(ip)
        return self._advertised[key]

    def _bind_ip(self, listener: ListenerConfig, af: int) -> str:
        """Bind to the listener's address when it is one of ours; a wildcard otherwise (an
        address that only a NAT in front of us owns, as with a node's public IP)."""
        wildcard = "::" if af == socket.AF_INET6 else "0.0.0.0"
        address = family_address(listener, FAMILY_IPV6 if af == socket.AF_INET6 else FAMILY_IPV4)
        key = (address, af)
        if key not in self._bind_ips:
            ip = address
            try:
                with socket.socket(af, socket.SOCK_DGRAM) as probe:
                    probe.bind((ip, 0))
            except (OSError, ValueError):
                ip = wildcard
            self._bind_ips[key] = ip
        return self._bind_ips[key]

    def open(
        self, listener: ListenerConfig, family: int, *, even: bool = False, pair: bool = False
    ) -> tuple[RelaySocket, RelaySocket | None] | None:
        try:
            return self._open(listener, family, even=even, pair=pair)
        except OSError as exc:
            # e.g. the relay address left the host: this Allocate gets 508, the server goes on
            log.error("relay port could not be opened", listener=listener.name, error=str(exc))
            self.exhausted += 1
            return None

    def _open(
        self, listener: ListenerConfig, family: int, *, even: bool, pair: bool
    ) -> tuple[RelaySocket, RelaySocket | None] | None:
        af = socket.AF_INET6 if family == FAMILY_IPV6 else socket.AF_INET
        bind_ip = self._bind_ip(listener, af)
        advertised = self.advertised_ip(listener, family)
        low, high = listener.min_relay_port, listener.max_relay_port
        if even or pair:
            low += low & 1
        step = 2 if (even or pair) else 1
        count = (high - low) // step + 1
        if count <= 0:
            self.exhausted += 1
            return None
        # Start at a random port and walk the range once: ports are unguessable and an
        # almost full range still finds its last free port.
        # Ports this process holds are skipped without a syscall (a failed bind costs a socket
        # and ~10 µs; in a nearly full range most tries would fail); other processes' ports
        # (workers share the range) still cost a try.
        held = self.held
        start = random.randrange(count)
        for i in range(count):
            port = low + ((start + i) % count) * step
            if (af, bind_ip, port) in held or (pair and (af, bind_ip, port + 1) in held):
                continue
            first = _bind(af, bind_ip, port)
            if first is None:
                continue
            second = None
            if pair and (port + 1 > high or (second := _bind(af, bind_ip, port + 1)) is None):
                first.close()
                continue
            relay = RelaySocket(self, first, (advertised, port), (af, bind_ip, port))
            spare = None
            if second is not None:
                spare = RelaySocket(self, second, (advertised, port + 1), (af, bind_ip, port + 1))
            return relay, spare
        self.exhausted += 1
        return None


def _bind(af: int, ip: str, port: int) -> socket.socket | None:
    try:
        sock = socket.socket(af, socket.SOCK_DGRAM)
    except OSError as exc:  # out of descriptors fails here, before any bind
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            return None
        raise
    try:
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, port))
        sock.setblocking(False)
        return sock
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EMFILE, errno.ENFILE):
            return None  # taken, or out of descriptors: the Allocate gets 508
        raise
