"""Control-plane counters of a listener, shared by everything that sends for it."""

from __future__ import annotations

from dataclasses import dataclass

from stunner_dp.observe.logs import get_logger

log = get_logger("net")


@dataclass(slots=True)
class ListenerCounters:
    """Plain integers for what is not media on a channel: STUN messages both ways, Send and
    Data indications, dropped packets. Media counts live on the allocations' channels."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    dropped: int = 0
    allocations_total: int = 0
    proxy_untrusted: int = 0  # PROXY-protocol listeners: connections from an untrusted source
    proxy_malformed: int = 0  # ... and ones whose header was malformed, missing or late


@dataclass(slots=True)
class InstallFailures:
    """Channels a fast path (the kernel's, the compiled forwarder's) could not take and left to
    Python: counted, and logged the first time and every thousandth (a full table would
    otherwise write a line per ChannelBind)."""

    message: str
    count: int = 0

    def record(self, exc: Exception) -> None:
        self.count += 1
        if self.count == 1 or self.count % 1000 == 0:
            log.warning(self.message, error=str(exc), failures=self.count)
