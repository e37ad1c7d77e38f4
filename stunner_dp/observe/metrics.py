"""Prometheus metrics: read at scrape time from a stats snapshot, served over HTTP.

The packet path counts in plain integers (see `Server.stats()`); nothing here runs per packet.
A scrape calls the snapshot function once and turns the `StatsSnapshot` into metric families
by walking its types (stunner_dp.observe.stats: each field names its metric), so one collector
serves a single server (`Server.stats`) and a supervisor summing its workers
(`Supervisor.stats`) alike, and a field added there is exported with no edit here.

What each metric means (all counters are monotonic over the life of the process; a listener
restarted by a reconfiguration keeps its counters):

``stunner_listener_packets_total{name,direction}``, ``stunner_listener_bytes_total{...}``
    What crossed the listener's socket(s) between clients and this server: every STUN
    message (requests, responses, Send and Data indications) and every relayed ChannelData
    message. Bytes are wire bytes: a STUN message as sent, a ChannelData message with its
    4-byte header (the stream padding of TCP/TLS is not counted). ``rx`` is from clients,
    ``tx`` to clients. Datagrams dropped before the state machine saw them are not counted
    here (see ``stunner_listener_dropped_packets_total``).
``stunner_listener_connections_total{name}``
    TCP/TLS: connections accepted. UDP: allocations created (a UDP "connection" is an
    allocation, as STUNner counts it).
``stunner_listener_connections{name}``
    TCP/TLS: open connections. UDP: live allocations.
``stunner_listener_dropped_packets_total{name}``
    Packets from clients or towards them that were thrown away: ChannelData for an unknown
    channel or client, a datagram the kernel refused, a slow TCP client's overflow.
``stunner_cluster_packets_total{name,direction}``, ``stunner_cluster_bytes_total{...}``
    Relayed payload between clients and the peers of a cluster (by the cluster whose
    endpoint let the peer in): ``tx`` towards peers, ``rx`` from peers (only what was
    forwarded to a client). Bytes are UDP payload bytes, without any TURN framing.
``stunner_allocations_active``
    Live allocations.
``stunner_bytes_received_total``, ``stunner_bytes_sent_total``
    The sums over all listeners of ``stunner_listener_bytes_total`` for ``rx`` and ``tx``:
    the client-facing traffic of this server (peer-facing traffic is in the cluster metrics).
``stunner_connections_total``
    The sum over all listeners of ``stunner_listener_connections_total``.
``stunner_auth_failures_total``, ``stunner_auth_locked_total``,
``stunner_rate_limited_requests_total``, ``stunner_malformed_packets_total``
    Server-wide: signed requests with refused credentials; requests answered 401 unchecked
    because their user is locked out after too many failures; unauthenticated requests dropped
    by the per-IP answer rate limit; packets that were neither STUN nor ChannelData.

With worker processes (``--udp-thread-num``) every figure is the sum over the workers; the
counts of a worker that died are kept (up to its last report), its gauges are dropped.
``stunner_workers``, ``stunner_worker_restarts_total``, ``stunner_worker_info{worker,pid}``
and ``stunner_worker_allocations_active{worker}`` describe the workers, and each worker's
process metrics carry the prefix ``stunner_worker_`` and a ``worker`` label.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from stunner_dp.config.http_endpoint import (
    DEFAULT_METRICS_PATH,
    DEFAULT_METRICS_PORT,
    parse_http_endpoint,
)
from stunner_dp.observe.http import HttpEndpoints
from stunner_dp.observe.logs import get_logger
from stunner_dp.observe.stats import Figures, Kind, StatsSnapshot, figure, widest

__all__ = [
    "DEFAULT_METRICS_PATH",
    "DEFAULT_METRICS_PORT",
    "MetricsServer",
    "StatsCollector",
    "WorkerProcessCollector",
    "attach_metrics",
    "make_registry",
    "metrics_handler",
    "start_metrics",
]

StatsSource = Callable[[], StatsSnapshot]
Refresh = Callable[[], Awaitable[None]]

# Always the classic text format, whatever the Accept header asks: in OpenMetrics the counter
# stunner_listener_connections_total and the gauge stunner_listener_connections would be one
# family name twice (stunnerd's Go exporter serves the text format too).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REFRESH_TIMEOUT = 1.0  # seconds a scrape waits for fresh worker figures

log = get_logger("metrics")


class StatsCollector:
    """A prometheus_client collector over a `StatsSnapshot` (`Server.stats()`,
    `Supervisor.stats()`). The metrics follow from the snapshot's types: every counter and
    gauge field with a metric name in its `Figure` is exported (rows labelled by their name),
    a field with a `total` also as its sum over the rows, so a field added to a stats class
    shows here with no other edit."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        snapshot = self._source()
        families.export(snapshot, type(snapshot), (), ())
        yield from families.by_key.values()


class _Families:
    """Metric families by (name, kind), in the order the fields declare them."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, Kind], CounterMetricFamily | GaugeMetricFamily] = {}

    def family(
        self, metric: str, doc: str, kind: Kind, labels: Sequence[str]
    ) -> CounterMetricFamily | GaugeMetricFamily:
        key = (metric, kind)
        fam = self.by_key.get(key)
        if fam is None:
            cls = CounterMetricFamily if kind is Kind.COUNTER else GaugeMetricFamily
            fam = self.by_key[key] = cls(metric, doc, labels=list(labels))
        return fam

    def export(
        self,
        value: Figures | None,
        cls: type[Figures],
        names: tuple[str, ...],
        labels: tuple[str, ...],
    ) -> None:
        """The fields of `cls` as families (declared even when `value` is None: no rows),
        with `value`'s figures as samples labelled `names`=`labels`."""
        for f in dataclasses.fields(cls):
            fig = figure(f)
            kind = fig.kind
            if kind is Kind.COUNTER or kind is Kind.GAUGE:
                if not fig.metric:
                    continue
                fam = self.family(fig.metric, fig.help, kind, [*names, *(k for k, _ in fig.labels)])
                if value is not None:
                    figure_labels = [*labels, *(v for _, v in fig.labels)]
                    fam.add_metric(figure_labels, _number(value, f))
            elif kind is Kind.LABEL:
                if not fig.metric:
                    continue
                fam = self.family(fig.metric, fig.help, Kind.GAUGE, [*names, f.name])
                if value is not None:
                    fam.add_metric([*labels, str(_number(value, f))], 1)
            elif kind is Kind.ROWS:
                assert fig.of is not None
                table: Mapping[str, Figures] = {} if value is None else getattr(value, f.name, {})
                of = widest(fig.of, table.values())
                inner = (*names, fig.row_label)
                self.export(None, of, inner, ())
                for name, row in sorted(table.items()):
                    self.export(row, of, inner, (*labels, name))
                for g in dataclasses.fields(of):
                    sub = figure(g)
                    if sub.total is not None and value is not None:
                        total = sum(_number(row, g) for row in table.values())
                        fam = self.family(*sub.total, sub.kind, names)
                        fam.add_metric(list(labels), total)
            elif kind is Kind.PART or kind is Kind.LOCAL:
                assert fig.of is not None
                nested = getattr(value, f.name, None)
                if nested is not None:
                    self.export(nested, widest(fig.of, [nested]), names, labels)
                elif kind is Kind.PART:
                    self.export(None, fig.of, names, labels)


def _number(value: Figures, f: dataclasses.Field[Any]) -> int:
    """`value`'s figure `f`; its default when `value` is of an older class without it."""
    got: Any = getattr(value, f.name) if hasattr(value, f.name) else f.default
    return int(got)


class WorkerProcessCollector:
    """Process metrics (CPU, memory, file descriptors) of other processes, with a `worker`
    label: `pids()` maps a worker's label to its PID."""

    def __init__(self, pids: Callable[[], Mapping[str, int]]) -> None:
        self._pids = pids

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for worker, pid in sorted(self._pids().items()):
            reader = ProcessCollector(namespace="stunner_worker", pid=_const(pid), registry=None)
            for family in reader.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value)
        yield from merged.values()


def _const(pid: int) -> Callable[[], int]:
    return lambda: pid


def make_registry(
    source: StatsSource, *, worker_pids: Callable[[], Mapping[str, int]] | None = None
) -> CollectorRegistry:
    """A registry with the STUNner metrics from `source` and this process's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(source))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if worker_pids is not None:
        registry.register(WorkerProcessCollector(worker_pids))
    return registry


def metrics_handler(
    registry: CollectorRegistry, refresh: Refresh | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler serving `registry`, after `refresh()` (fresh worker figures) when
    given; a refresh that does not finish in time leaves the last known figures."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if refresh is not None:
            try:
                await asyncio.wait_for(refresh(), REFRESH_TIMEOUT)
            except TimeoutError:
                log.warning("metrics: workers did not report in time; serving their last figures")
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return handle


class MetricsServer:
    """Serves the metrics of a stats source at ``admin.metrics_endpoint`` on the daemon's shared
    `HttpEndpoints` (so metrics may share a port with the health endpoints).
    `configure(url)` mounts, moves or ("") removes it; errors are logged, never raised."""

    def __init__(
        self,
        endpoints: HttpEndpoints,
        source: StatsSource,
        *,
        refresh: Refresh | None = None,
        worker_pids: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.registry = make_registry(source, worker_pids=worker_pids)
        self._handler = metrics_handler(self.registry, refresh)
        self.url: str | None = None
        self._mounted: tuple[str, int, str] | None = None

    @property
    def port(self) -> int | None:
        """The bound port (useful when the endpoint asked for port 0), None when off."""
        if self._mounted is None:
            return None
        return self.endpoints.bound_port(self._mounted[0], self._mounted[1])

    @property
    def path(self) -> str | None:
        return self._mounted[2] if self._mounted else None

    async def configure(self, url: str) -> None:
        if url == self.url and (self._mounted is not None or not url):
            return
        self.url = url
        await self._unmount()
        if not url:
            return
        try:
            host, port, path = parse_http_endpoint(url, DEFAULT_METRICS_PORT, DEFAULT_METRICS_PATH)
        except ValueError as exc:
            log.error("admin.metrics_endpoint is not valid: no metrics", error=str(exc))
            return
        if path == "/":
            path = DEFAULT_METRICS_PATH  # stunnerd serves /metrics when the URL has no path
        try:
            await self.endpoints.mount(host, port, path, self._handler)
        except OSError as exc:
            log.error("metrics endpoint could not start", endpoint=url, error=str(exc))
            return
        self._mounted = (host, port, path)
        log.info("metrics endpoint started", endpoint=url, port=self.port, path=path)

    async def close(self) -> None:
        await self._unmount()
        self.url = None

    async def _unmount(self) -> None:
        if self._mounted is not None:
            host, port, path = self._mounted
            self._mounted = None
            await self.endpoints.unmount(host, port, path)


async def start_metrics(
    endpoints: HttpEndpoints,
    url: str,
    source: StatsSource,
    *,
    refresh: Refresh | None = None,
    worker_pids: Callable[[], Mapping[str, int]] | None = None,
) -> MetricsServer:
    """`MetricsServer(...)` configured for `url` (``admin.metrics_endpoint``; "" = off)."""
    server = MetricsServer(endpoints, source, refresh=refresh, worker_pids=worker_pids)
    await server.configure(url)
    return server


def attach_metrics(daemon: Any) -> MetricsServer:
    """Serve a `stunner_dp.daemon.stunnerd.Daemon`'s dataplane figures at
    ``admin.metrics_endpoint`` on its shared `HttpEndpoints`, following every applied config
    (the endpoint may move or be turned off) and closing with the daemon. A dataplane with
    `refresh()` (the supervisor) is asked for fresh figures before each scrape; one with
    `worker_pids()` adds its workers' process metrics."""
    dataplane = daemon.dataplane
    server = MetricsServer(
        daemon.http,
        dataplane.stats,
        refresh=getattr(dataplane, "refresh", None),
        worker_pids=getattr(dataplane, "worker_pids", None),
    )

    async def on_config(old: Any, new: Any) -> None:
        await server.configure(new.admin.metrics_endpoint)

    async def on_stop() -> None:
        await server.close()

    daemon.on_config.append(on_config)
    daemon.on_stop.append(on_stop)
    return server
