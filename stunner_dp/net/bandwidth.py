"""The shell of the per-user bandwidth caps (stunner_dp.turn.bandwidth has the rules).

Nothing runs while `admin.user_bandwidth` is 0. With a cap, a timer reviews every
`REVIEW_INTERVAL` seconds what each user relayed (the kernel fast path's counts folded in
first). A user over its cap has each of its relays *diverted*: the relay socket's `sendto`
(client -> peer, whichever listener the ChannelData came in on) is replaced by one that asks
the bucket first, its reader (peer -> client) by one that does the same, and its kernel fast
path entries are removed so the packets reach Python. Everyone else keeps the hot paths as
they are, so a cap costs the media of users under it nothing per packet.

A refused packet is dropped and counted (`stunner_user_bandwidth_dropped_*`); client -> peer
drops are also the listener's dropped packets, as any send refusal on the hot path is. The
allocation lives on.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable

from stunner_dp.config import StunnerConfig
from stunner_dp.observe.logs import get_logger
from stunner_dp.observe.stats import BandwidthStats
from stunner_dp.stun import encode_channel_data
from stunner_dp.turn.allocation import Allocation
from stunner_dp.turn.bandwidth import TO_CLIENT, TO_PEER, UserBandwidth
from stunner_dp.turn.server import CHANNEL_MAX, TurnServer
from stunner_dp.turn.types import Addr

from .offload import OffloadSwitch
from .relay import READ_BATCH, RECV_SIZE, RelayPool, RelaySocket

__all__ = ["REVIEW_INTERVAL", "BandwidthSwitch"]

log = get_logger("net")

REVIEW_INTERVAL = 0.25  # seconds: how far past its cap a user on the fast path can get


BURST_MIN = 1500  # bytes: one packet fits a bucket of one second of a low rate


def burst_of(rate: int, burst: int) -> int:
    """The bucket size: `burst`, or one second of `rate` when 0 (config/parse checks both)."""
    return burst or max(rate, BURST_MIN)


class BandwidthSwitch:
    """`admin.user_bandwidth` on a running server (owned by `Server`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.meter: UserBandwidth | None = None
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._turn: TurnServer | None = None
        self._relays: RelayPool | None = None
        self._offload: OffloadSwitch | None = None
        self._diverted: dict[RelaySocket, Allocation] = {}
        # drops of caps since switched off: the counters must never go down
        self._dropped = [0, 0, 0, 0]

    def configure(
        self, config: StunnerConfig, turn: TurnServer, relays: RelayPool, offload: OffloadSwitch
    ) -> None:
        self._turn, self._relays, self._offload = turn, relays, offload
        rate = config.admin.user_bandwidth
        burst = burst_of(rate, config.admin.user_bandwidth_burst)
        if not rate:
            self.off()
            return
        if self.meter is None:
            self.meter = UserBandwidth(rate, burst)
            self._task = asyncio.get_running_loop().create_task(self._review_forever())
            log.info("per-user bandwidth cap on", bytes_per_second=rate, burst=burst)
        elif (self.meter.rate, self.meter.burst) != (rate, burst):
            self.meter.reconfigure(rate, burst)
            log.info("per-user bandwidth cap changed", bytes_per_second=rate, burst=burst)

    def off(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for relay, alloc in list(self._diverted.items()):
            self._restore(relay, alloc)
        meter, self.meter = self.meter, None
        if meter is not None:
            self._dropped = self._counts(meter)
            log.info("per-user bandwidth cap off")

    def _counts(self, meter: UserBandwidth | None) -> list[int]:
        got = [0, 0, 0, 0] if meter is None else [*meter.dropped_packets, *meter.dropped_bytes]
        return [a + b for a, b in zip(self._dropped, got, strict=True)]

    def stats(self) -> BandwidthStats:
        to_peer_packets, to_client_packets, to_peer_bytes, to_client_bytes = self._counts(
            self.meter
        )
        return BandwidthStats(
            capped_users=self.meter.capped_users if self.meter is not None else 0,
            tx_packets=to_peer_packets,
            tx_bytes=to_peer_bytes,
            rx_packets=to_client_packets,
            rx_bytes=to_client_bytes,
        )

    # -- the review ----------------------------------------------------------------------------

    async def _review_forever(self) -> None:
        while True:
            await asyncio.sleep(REVIEW_INTERVAL)
            try:
                self.review()
            except Exception as exc:  # a bug here must not end the caps for good
                log.error("bandwidth review failed", error=f"{type(exc).__name__}: {exc}")

    def review(self) -> None:
        meter, turn, offload = self.meter, self._turn, self._offload
        if meter is None or turn is None or offload is None:
            return
        offload.fold()  # what the kernel relayed, into the channels' counters
        if self._relays is not None and self._relays.forwarder is not None:
            self._relays.forwarder.fold()  # and what the forwarder thread relayed
        allocations = turn.all_allocations()
        meter.review(allocations, self._clock())
        for ended in [r for r, a in self._diverted.items() if r.allocation is not a]:
            del self._diverted[ended]  # its allocation ended
        controller = offload.controller
        for alloc in allocations:
            relay = alloc.relay
            if not isinstance(relay, RelaySocket):
                continue
            if meter.is_capped(alloc.quota_user):
                if relay not in self._diverted:
                    self._divert(meter, relay, alloc)
                if controller is not None:  # again each time: a channel bound since
                    for chan in list(alloc.announced.values()):
                        controller.unbind(chan)
            elif relay in self._diverted:
                self._restore(relay, alloc)

    # -- diverting -----------------------------------------------------------------------------

    def _divert(self, meter: UserBandwidth, relay: RelaySocket, alloc: Allocation) -> None:
        self._diverted[relay] = alloc
        send = _capped_send(meter, relay, alloc, self._clock)
        relay.divert(send, _capped_reader(meter, relay, alloc, self._clock))

    def _restore(self, relay: RelaySocket, alloc: Allocation) -> None:
        self._diverted.pop(relay, None)
        if relay.allocation is not alloc:
            return
        relay.undivert()
        for chan in list(alloc.announced.values()):  # back into the kernel, when it is on
            relay.channel_bound(alloc, chan)


def _capped_send(
    meter: UserBandwidth, relay: RelaySocket, alloc: Allocation, clock: Callable[[], float]
) -> Callable[[bytes | memoryview, Addr], object]:
    """The relay's sendto towards peers while its user is capped."""
    sendto = relay.sock.sendto
    user = alloc.quota_user

    def send(data: bytes | memoryview, addr: Addr) -> object:
        size = len(data)
        if meter.allow(user, TO_PEER, size, clock()):
            return sendto(data, addr)
        if not isinstance(data, memoryview):
            # Only the UDP listener's hot path hands a view and counts after the send; the
            # state machine's outputs (streams, DTLS, IPv6, Send) are counted already.
            _uncount_to_peer(alloc, addr, size)
        raise OSError(errno.ENOBUFS, "over the user's bandwidth cap")

    return send


def _uncount_to_peer(alloc: Allocation, addr: Addr, size: int) -> None:
    traffic = alloc.peer_channels.get(addr) or alloc.permissions.get(addr[0])
    if traffic is not None:
        traffic.out_packets = max(0, traffic.out_packets - 1)
        traffic.out_bytes = max(0, traffic.out_bytes - size)


def _capped_reader(
    meter: UserBandwidth, relay: RelaySocket, alloc: Allocation, clock: Callable[[], float]
) -> Callable[[], None]:
    """The relay's reader of what peers send while its user is capped: the hot path's rules,
    each datagram charged to the bucket first."""
    recvfrom = relay.sock.recvfrom
    user = alloc.quota_user

    def read() -> None:
        if relay.allocation is not alloc:
            return
        for _ in range(READ_BATCH):
            try:
                data, source = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            peer = (source[0], source[1])
            chan = alloc.peer_channels.get(peer)
            if chan is None:
                perm = alloc.permissions.get(peer[0])
                if perm is None or peer[1] not in perm.ports:
                    relay.dropped += 1
                    continue
            if not meter.allow(user, TO_CLIENT, len(data), clock()):
                continue
            if chan is None:
                relay.to_client_slow(alloc, peer, data)
                continue
            frame = encode_channel_data(chan.number, data, max_channel=CHANNEL_MAX)
            try:
                alloc.link.sendto(frame, alloc.client)  # streams pad it themselves
            except OSError:
                relay.dropped += 1
                continue
            chan.in_packets += 1
            chan.in_bytes += len(data)

    return read
