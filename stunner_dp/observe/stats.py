"""The stats snapshot: every figure a server reports, typed.

`Server.stats()` returns a `StatsSnapshot`; a worker process sends it to the supervisor as
`to_dict()` (JSON frames, stunner_dp.daemon.pipe), the supervisor decodes it with `from_dict()`
and sums its workers' snapshots with `StatsSnapshot.merge()`; the Prometheus collector
(stunner_dp.observe.metrics) walks the same types.

What a figure is lives in the type: each field's metadata holds a `Figure` saying its `Kind`
(counter, gauge, flag, ...) and the metric it is exported as. Merging, the pipe encoding and
the exporter all follow from `dataclasses.fields()`, so a field added to one of these classes
is summed, sent over the pipe and shown in /metrics with no other edit.

Merge rules, per kind:

- COUNTER (monotonic): summed; a dead worker's are kept (`counters_only()`), so the sums never
  go down;
- GAUGE (a level now: allocations, open connections): summed over the live workers; a dead
  worker's are dropped;
- FLAG (a property of a live listener, e.g. "stream-based"): true when true in any live worker;
  a dead worker's dropped;
- ROWS (name -> figures: listeners, clusters): merged name by name;
- PART (nested figures): merged field by field;
- LABEL (an identifier such as a PID): never summed (the first is kept); exported as the label
  of an info metric of value 1;
- LOCAL (figures of the reporting process itself: a supervisor's workers): never summed, not
  kept for a dead worker.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

__all__ = [
    "BandwidthStats",
    "ClusterStats",
    "Figure",
    "Figures",
    "ForwarderStats",
    "Kind",
    "ListenerStats",
    "OffloadPassStats",
    "OffloadStats",
    "ServerStats",
    "StatsSnapshot",
    "WorkerStats",
    "WorkersStats",
    "counter",
    "figure",
    "flag",
    "gauge",
    "label",
    "local",
    "part",
    "rows",
    "widest",
]

META = "stunner_stats"  # the dataclass field metadata key holding a field's `Figure`


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    FLAG = "flag"
    ROWS = "rows"
    PART = "part"
    LABEL = "label"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class Figure:
    """What a field of a `Figures` class is. `metric` (with `help`) is the Prometheus family
    it is exported in ("" = not exported), `labels` its constant labels (the direction of a
    byte count); `total` the (metric, help) of its sum over the rows it is in; `of` the class
    of a ROWS, PART or LOCAL field and `row_label` the label naming a ROWS field's rows."""

    kind: Kind
    metric: str = ""
    help: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    total: tuple[str, str] | None = None
    of: type[Figures] | None = None
    row_label: str = ""


def figure(f: dataclasses.Field[Any]) -> Figure:
    fig = f.metadata.get(META)
    if not isinstance(fig, Figure):
        raise TypeError(f"stats field {f.name} has no Figure in its metadata")
    return fig


def _meta(fig: Figure) -> dict[str, Figure]:
    return {META: fig}


def _labels(direction: str | None) -> tuple[tuple[str, str], ...]:
    return (("direction", direction),) if direction else ()


def counter(
    metric: str = "",
    help: str = "",
    *,
    direction: str | None = None,
    total: tuple[str, str] | None = None,
) -> int:
    """A counter field (0 by default)."""
    return field(
        default=0, metadata=_meta(Figure(Kind.COUNTER, metric, help, _labels(direction), total))
    )


def gauge(
    metric: str = "",
    help: str = "",
    *,
    direction: str | None = None,
    total: tuple[str, str] | None = None,
) -> int:
    """A gauge field (0 by default)."""
    return field(
        default=0, metadata=_meta(Figure(Kind.GAUGE, metric, help, _labels(direction), total))
    )


def flag() -> bool:
    """A flag field (false by default), not exported."""
    return field(default=False, metadata=_meta(Figure(Kind.FLAG)))


def label(metric: str = "", help: str = "") -> int:
    """An identifier (0 by default), exported as the label of `metric` (value 1)."""
    return field(default=0, metadata=_meta(Figure(Kind.LABEL, metric, help)))


F = TypeVar("F", bound="Figures")


def rows(of: type[F], row_label: str) -> Mapping[str, F]:
    """Named rows of `of` figures (empty by default), exported with label `row_label`."""
    return field(
        default_factory=dict,
        metadata=_meta(Figure(Kind.ROWS, of=of, row_label=row_label)),
    )


def part(of: type[F]) -> F:
    """Nested `of` figures (all default by default)."""
    return field(default_factory=of, metadata=_meta(Figure(Kind.PART, of=of)))


def local(of: type[F]) -> F | None:
    """The reporting process's own `of` figures (None by default), never summed."""
    return field(default=None, metadata=_meta(Figure(Kind.LOCAL, of=of)))


@dataclass(frozen=True, slots=True)
class Figures:
    """The base of the stats classes: merge, dead-worker view and pipe encoding, all derived
    from the fields' `Figure`s."""

    @classmethod
    def merge(cls, items: Iterable[Figures]) -> Self:
        """The sum of `items` (see the module docstring). The result is of the most derived
        class among `cls` and the items' classes (a newer class keeps its extra fields)."""
        values = list(items)
        return _merge(widest(cls, values), values)

    def counters_only(self) -> Self:
        """What of a dead worker's figures stays: its counters; gauges and flags at their
        defaults, LOCAL figures gone."""
        return _dead(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON), field name -> value, rows and parts nested."""
        return _encode(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The inverse of `to_dict`. Keys this class does not know (from a newer worker) are
        ignored, missing ones take their defaults; ValueError when a value has a wrong type."""
        return _decode(cls, data)


def widest(cls: type[F], values: Iterable[object]) -> type[F]:
    """The most derived class among `cls` and the classes of `values` that derive from it."""
    best = cls
    for value in values:
        if issubclass(type(value), best):
            best = type(value)  # type: ignore[assignment]
    return best


def _merge(cls: type[F], values: list[Figures]) -> F:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        fig = figure(f)
        got = [getattr(v, f.name) for v in values if hasattr(v, f.name)]
        if not got:
            continue
        kind = fig.kind
        if kind is Kind.COUNTER or kind is Kind.GAUGE:
            out[f.name] = sum(got)
        elif kind is Kind.FLAG:
            out[f.name] = any(got)
        elif kind is Kind.LABEL:
            out[f.name] = got[0]
        elif kind is Kind.ROWS:
            assert fig.of is not None
            merged: dict[str, Figures] = {}
            for name in dict.fromkeys(name for table in got for name in table):
                same = [table[name] for table in got if name in table]
                merged[name] = _merge(widest(fig.of, same), same)
            out[f.name] = merged
        elif kind is Kind.PART:
            assert fig.of is not None
            out[f.name] = _merge(widest(fig.of, got), got)
        # LOCAL: never summed (the default, None)
    return cls(**out)


def _dead(value: F) -> F:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        kind = figure(f).kind
        got = getattr(value, f.name)
        if kind is Kind.COUNTER or kind is Kind.LABEL:
            out[f.name] = got
        elif kind is Kind.ROWS:
            out[f.name] = {name: _dead(row) for name, row in got.items()}
        elif kind is Kind.PART:
            out[f.name] = _dead(got)
        # GAUGE, FLAG, LOCAL: dropped (their defaults)
    return type(value)(**out)


def _encode(value: Figures) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        kind = figure(f).kind
        got = getattr(value, f.name)
        if kind is Kind.ROWS:
            out[f.name] = {name: _encode(row) for name, row in got.items()}
        elif kind is Kind.PART or kind is Kind.LOCAL:
            out[f.name] = None if got is None else _encode(got)
        else:
            out[f.name] = got
    return out


def _number(value: Any, where: str) -> int:
    if not isinstance(value, (int, float)):
        raise ValueError(f"stats {where}: a number expected, not {value!r}")
    return int(value)


def _decode(cls: type[F], data: Any, where: str = "snapshot") -> F:
    if not isinstance(data, Mapping):
        raise ValueError(f"stats {where}: an object expected, not {data!r}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        fig = figure(f)
        got = data[f.name]
        at = f"{where}.{f.name}"
        if fig.kind is Kind.COUNTER or fig.kind is Kind.GAUGE or fig.kind is Kind.LABEL:
            out[f.name] = _number(got, at)
        elif fig.kind is Kind.FLAG:
            out[f.name] = bool(got)
        elif fig.kind is Kind.ROWS:
            assert fig.of is not None
            if not isinstance(got, Mapping):
                raise ValueError(f"stats {at}: an object expected, not {got!r}")
            of = fig.of
            out[f.name] = {str(k): _decode(of, v, f"{at}.{k}") for k, v in got.items()}
        elif fig.kind is Kind.PART or fig.kind is Kind.LOCAL:
            assert fig.of is not None
            if got is not None:
                out[f.name] = _decode(fig.of, got, at)
    return cls(**out)


# -- the figures --------------------------------------------------------------------------------

_L_PACKETS = (
    "stunner_listener_packets",
    "STUN and ChannelData messages between clients and a listener",
)
_L_BYTES = (
    "stunner_listener_bytes",
    "Wire bytes of STUN and ChannelData messages between clients and a listener",
)
_C_PACKETS = (
    "stunner_cluster_packets",
    "Relayed UDP datagrams between clients and the peers of a cluster "
    "(tx: to peers, rx: from peers)",
)
_C_BYTES = (
    "stunner_cluster_bytes",
    "Relayed UDP payload bytes between clients and the peers of a cluster "
    "(tx: to peers, rx: from peers)",
)


@dataclass(frozen=True, slots=True)
class ListenerStats(Figures):
    """One listener. Wire bytes: STUN messages as sent, ChannelData with its 4-byte header
    (stream padding not counted); `rx` from clients, `tx` to clients."""

    rx_packets: int = counter(*_L_PACKETS, direction="rx")
    rx_bytes: int = counter(
        *_L_BYTES,
        direction="rx",
        total=(
            "stunner_bytes_received",
            "Bytes received from clients: sum of stunner_listener_bytes_total{direction=rx}",
        ),
    )
    tx_packets: int = counter(*_L_PACKETS, direction="tx")
    tx_bytes: int = counter(
        *_L_BYTES,
        direction="tx",
        total=(
            "stunner_bytes_sent",
            "Bytes sent to clients: sum of stunner_listener_bytes_total{direction=tx}",
        ),
    )
    connections_total: int = counter(
        "stunner_listener_connections",
        "TCP/TLS connections accepted, DTLS handshakes completed, or UDP allocations created",
        total=(
            "stunner_connections",
            "Client connections: sum of stunner_listener_connections_total over listeners",
        ),
    )
    connections: int = gauge(
        "stunner_listener_connections",
        "Open TCP/TLS connections, DTLS associations, or live UDP allocations",
    )
    dropped: int = counter(
        "stunner_listener_dropped_packets",
        "Packets from or to the clients of a listener that were dropped",
    )
    proxy_untrusted: int = counter(
        "stunner_listener_proxy_untrusted",
        "Connections to a PROXY-protocol listener closed at accept: their source is not in "
        "the listener's proxy_protocol_trusted",
    )
    proxy_malformed: int = counter(
        "stunner_listener_proxy_malformed",
        "Connections to a PROXY-protocol listener closed because their PROXY header was "
        "malformed, missing, too long or not whole within 5 s",
    )
    streams: bool = flag()  # TCP/TLS


@dataclass(frozen=True, slots=True)
class ClusterStats(Figures):
    """One cluster: relayed payload bytes, `rx` from peers, `tx` to peers."""

    rx_packets: int = counter(*_C_PACKETS, direction="rx")
    rx_bytes: int = counter(*_C_BYTES, direction="rx")
    tx_packets: int = counter(*_C_PACKETS, direction="tx")
    tx_bytes: int = counter(*_C_BYTES, direction="tx")


@dataclass(frozen=True, slots=True)
class ServerStats(Figures):
    """Server-wide: live allocations and the abuse counters of the state machine."""

    allocations: int = gauge("stunner_allocations_active", "Live TURN allocations")
    auth_failures: int = counter(
        "stunner_auth_failures",
        "Signed requests whose credentials were refused (unknown user, wrong password, "
        "expired ephemeral username)",
    )
    auth_locked: int = counter(
        "stunner_auth_locked",
        "Requests answered 401 unchecked because their user had too many failures",
    )
    rate_limited: int = counter(
        "stunner_rate_limited_requests",
        "Requests dropped unanswered by the per-IP limit on unauthenticated answers",
    )
    malformed: int = counter(
        "stunner_malformed_packets",
        "Packets from clients that were neither valid STUN nor valid ChannelData",
    )
    internal_errors: int = counter(
        "stunner_internal_errors",
        "Messages from clients dropped because handling them raised an unexpected error",
    )


@dataclass(frozen=True, slots=True)
class OffloadPassStats(Figures):
    """Packets the kernel fast path saw and left to user space for one reason."""

    packets: int = counter(
        "stunner_offload_passed_packets",
        "Packets the kernel fast path left to user space, by reason (no_entry: not a binding "
        "of this process; error_dropped: dropped half-way through a rewrite)",
    )


_O_PACKETS = (
    "stunner_offload_packets",
    "ChannelData relayed by the kernel fast path (tx: to peers, rx: from peers); also counted "
    "in the listener and cluster metrics",
)
_O_BYTES = (
    "stunner_offload_bytes",
    "UDP payload bytes relayed by the kernel fast path (tx: to peers, rx: from peers)",
)


@dataclass(frozen=True, slots=True)
class OffloadStats(Figures):
    """The kernel fast path (admin.offload_engine): what it holds and what it relayed."""

    active: int = gauge(
        "stunner_offload_active", "Server processes whose kernel fast path is loaded"
    )
    entries: int = gauge(
        "stunner_offload_entries", "Channel bindings installed in the kernel fast path"
    )
    installs: int = counter(
        "stunner_offload_installs", "Channel bindings installed in the kernel fast path"
    )
    install_failures: int = counter(
        "stunner_offload_install_failures",
        "Channel bindings left to user space because the kernel could not take them",
    )
    tx_packets: int = counter(*_O_PACKETS, direction="tx")
    tx_bytes: int = counter(*_O_BYTES, direction="tx")
    rx_packets: int = counter(*_O_PACKETS, direction="rx")
    rx_bytes: int = counter(*_O_BYTES, direction="rx")
    passed: Mapping[str, OffloadPassStats] = rows(OffloadPassStats, "reason")


_F_PACKETS = (
    "stunner_forwarder_packets",
    "ChannelData relayed by the compiled user-space forwarder (tx: to peers, rx: from peers); "
    "also counted in the listener and cluster metrics",
)
_F_BYTES = (
    "stunner_forwarder_bytes",
    "UDP payload bytes relayed by the compiled user-space forwarder (tx: to peers, rx: from peers)",
)


@dataclass(frozen=True, slots=True)
class ForwarderStats(Figures):
    """The compiled user-space forwarder (offload off): what it holds and what it relayed."""

    active: int = gauge(
        "stunner_forwarder_active",
        "Server processes whose UDP media path runs in the compiled forwarder thread",
    )
    entries: int = gauge(
        "stunner_forwarder_entries", "Channel bindings installed in the compiled forwarder"
    )
    installs: int = counter(
        "stunner_forwarder_installs", "Channel bindings installed in the compiled forwarder"
    )
    install_failures: int = counter(
        "stunner_forwarder_install_failures",
        "Channel bindings left to Python because the compiled forwarder could not take them",
    )
    tx_packets: int = counter(*_F_PACKETS, direction="tx")
    tx_bytes: int = counter(*_F_BYTES, direction="tx")
    rx_packets: int = counter(*_F_PACKETS, direction="rx")
    rx_bytes: int = counter(*_F_BYTES, direction="rx")
    handed_off: int = counter(
        "stunner_forwarder_handed_off_packets",
        "Datagrams the forwarder thread read and handed to Python (STUN, indications, "
        "unbound channels)",
    )
    handoff_dropped: int = counter(
        "stunner_forwarder_handoff_dropped_packets",
        "Datagrams dropped because Python was more than 4 MiB behind the forwarder thread",
    )


_B_PACKETS = (
    "stunner_user_bandwidth_dropped_packets",
    "Relayed datagrams dropped because their user was over admin.user_bandwidth "
    "(tx: to peers, rx: from peers); the allocations live on",
)
_B_BYTES = (
    "stunner_user_bandwidth_dropped_bytes",
    "Relayed UDP payload bytes dropped because their user was over admin.user_bandwidth "
    "(tx: to peers, rx: from peers)",
)


@dataclass(frozen=True, slots=True)
class BandwidthStats(Figures):
    """Per-user bandwidth caps (admin.user_bandwidth): who is held to the cap, what it cut."""

    capped_users: int = gauge(
        "stunner_user_bandwidth_capped_users",
        "Users over admin.user_bandwidth, whose media takes the per-packet token bucket",
    )
    tx_packets: int = counter(*_B_PACKETS, direction="tx")
    tx_bytes: int = counter(*_B_BYTES, direction="tx")
    rx_packets: int = counter(*_B_PACKETS, direction="rx")
    rx_bytes: int = counter(*_B_BYTES, direction="rx")


@dataclass(frozen=True, slots=True)
class WorkerStats(Figures):
    """One live worker process of a supervisor."""

    pid: int = label("stunner_worker_info", "A live worker process")
    allocations: int = gauge(
        "stunner_worker_allocations_active", "Live TURN allocations of one worker"
    )


@dataclass(frozen=True, slots=True)
class WorkersStats(Figures):
    """A supervisor's workers."""

    running: int = gauge("stunner_workers", "Worker processes running")
    restarts: int = counter("stunner_worker_restarts", "Worker processes restarted after they died")
    per_worker: Mapping[str, WorkerStats] = rows(WorkerStats, "worker")


@dataclass(frozen=True, slots=True)
class StatsSnapshot(Figures):
    """Every figure of a server (or the sum over a supervisor's workers); `StatsSnapshot()` is
    the empty one."""

    listeners: Mapping[str, ListenerStats] = rows(ListenerStats, "name")
    clusters: Mapping[str, ClusterStats] = rows(ClusterStats, "name")
    # part() and local() are dataclasses.field() with metadata: no shared default
    server: ServerStats = part(ServerStats)  # noqa: RUF009
    offload: OffloadStats = part(OffloadStats)  # noqa: RUF009
    forwarder: ForwarderStats = part(ForwarderStats)  # noqa: RUF009
    bandwidth: BandwidthStats = part(BandwidthStats)  # noqa: RUF009
    workers: WorkersStats | None = local(WorkersStats)  # noqa: RUF009
