"""Control-plane counters of a listener, shared by everything that sends for it."""

from __future__ import annotations

from dataclasses import dataclass


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
