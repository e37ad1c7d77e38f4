"""The stats snapshot type (stunner_dp.observe.stats): a field added to a stats class is summed,
kept or dropped for a dead worker, sent over the worker pipe and exported in /metrics with no
other edit; the merge rules (counters summed, gauges summed over live workers, a flag, a dead
worker's gauges dropped and its counters kept); the pipe encoding, through real frames."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Mapping

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stunner_dp.client.turn import TurnClient, error_code
from stunner_dp.daemon.pipe import read_frame, write_frame
from stunner_dp.observe.http import HttpEndpoints
from stunner_dp.observe.metrics import MetricsServer, StatsCollector
from stunner_dp.observe.stats import (
    ClusterStats,
    Figures,
    Kind,
    ListenerStats,
    ServerStats,
    StatsSnapshot,
    WorkersStats,
    WorkerStats,
    counter,
    figure,
    gauge,
    part,
    rows,
)
from stunner_dp.testing import start_turn_server

TIMEOUT = 5.0


# -- a newer version of the figures: one listener counter, one listener gauge and one server
# counter more, declared the way a field is added to the real classes --------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NewerListener(ListenerStats):
    retransmits: int = counter(
        "stunner_listener_retransmits",
        "Test: a listener counter added later",
        total=("stunner_retransmits", "Test: the sum of stunner_listener_retransmits_total"),
    )
    handshaking: int = gauge("stunner_listener_handshaking", "Test: a listener gauge added later")


NewerServer = dataclasses.make_dataclass(
    "NewerServer",
    [("refused", int, counter("stunner_refused", "Test: a server-wide counter added later"))],
    bases=(ServerStats,),
    frozen=True,
    slots=True,
)
NewerSnapshot = dataclasses.make_dataclass(
    "NewerSnapshot",
    [
        ("listeners", Mapping[str, NewerListener], rows(NewerListener, "name")),
        ("server", NewerServer, part(NewerServer)),
    ],
    bases=(StatsSnapshot,),
    frozen=True,
    slots=True,
)


def newer(retransmits: int, handshaking: int, refused: int, allocations: int = 0) -> StatsSnapshot:
    snap = NewerSnapshot(
        listeners={
            "udp": NewerListener(
                rx_bytes=100, connections=2, retransmits=retransmits, handshaking=handshaking
            )
        },
        server=NewerServer(allocations=allocations, refused=refused),
    )
    assert isinstance(snap, StatsSnapshot)
    return snap


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_an_added_field_is_summed_and_exported_with_no_other_edit() -> None:
    live, dead = newer(3, 1, 5, allocations=2), newer(4, 7, 6, allocations=9)
    total = StatsSnapshot.merge([StatsSnapshot(), live, dead.counters_only()])
    assert type(total) is NewerSnapshot  # the newer class wins over the empty base one
    row = total.listeners["udp"]
    assert isinstance(row, NewerListener)
    assert row.retransmits == 7  # counters: the dead worker's kept
    assert row.handshaking == 1  # gauges: the dead worker's dropped
    assert row.rx_bytes == 200 and row.connections == 2
    assert total.server.refused == 11  # type: ignore[attr-defined]
    assert total.server.allocations == 2

    # the metrics exporter knows the new fields from the type: over HTTP, as Prometheus sees it
    endpoints = HttpEndpoints()
    try:
        metrics = MetricsServer(endpoints, lambda: total)
        await metrics.configure("http://127.0.0.1:0/metrics")
        assert metrics.port
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{metrics.port}/metrics", timeout=aiohttp.ClientTimeout(5)
            ) as r,
        ):
            assert r.status == 200
            m = parse(await r.text())
    finally:
        await endpoints.close()
    assert m[("stunner_listener_retransmits_total", (("name", "udp"),))] == 7
    assert m[("stunner_listener_handshaking", (("name", "udp"),))] == 1
    assert m[("stunner_retransmits_total", ())] == 7
    assert m[("stunner_refused_total", ())] == 11
    # ... beside the figures that were there
    assert m[("stunner_listener_bytes_total", (("direction", "rx"), ("name", "udp")))] == 200
    assert m[("stunner_allocations_active", ())] == 2

    # and over the worker pipe: a newer worker's fields reach a newer supervisor, an older
    # supervisor ignores them, an older worker's snapshot reads as zero in the new fields
    assert NewerSnapshot.from_dict(total.to_dict()) == total
    older = StatsSnapshot.from_dict(total.to_dict())
    assert type(older.listeners["udp"]) is ListenerStats
    assert older.listeners["udp"].rx_bytes == 200 and older.server.allocations == 2
    upgraded = NewerSnapshot.from_dict(older.to_dict())
    assert upgraded.listeners["udp"].retransmits == 0  # type: ignore[attr-defined]
    assert upgraded.server.refused == 0  # type: ignore[attr-defined]


def test_an_added_field_with_no_rows_still_declares_its_family() -> None:
    """Families come from the types, not the rows: a server with no listener yet exports
    them empty (as before), the new one among them."""
    names = {f.name for f in StatsCollector(NewerSnapshot).collect()}
    assert {"stunner_listener_retransmits", "stunner_listener_handshaking"} <= names
    assert {"stunner_listener_bytes", "stunner_cluster_packets", "stunner_refused"} <= names


def test_every_field_says_what_it_is() -> None:
    """The kinds merge and the exporter follow, in the type itself."""
    classes: list[type[Figures]] = [
        ListenerStats,
        ClusterStats,
        ServerStats,
        WorkerStats,
        WorkersStats,
        StatsSnapshot,
    ]
    kinds = {
        (cls.__name__, f.name): figure(f).kind for cls in classes for f in dataclasses.fields(cls)
    }
    assert kinds[("ListenerStats", "rx_bytes")] is Kind.COUNTER
    assert kinds[("ListenerStats", "connections_total")] is Kind.COUNTER
    assert kinds[("ListenerStats", "connections")] is Kind.GAUGE
    assert kinds[("ListenerStats", "streams")] is Kind.FLAG
    assert kinds[("ServerStats", "allocations")] is Kind.GAUGE
    assert kinds[("ServerStats", "malformed")] is Kind.COUNTER
    assert kinds[("StatsSnapshot", "listeners")] is Kind.ROWS
    assert kinds[("StatsSnapshot", "workers")] is Kind.LOCAL
    for cls in classes:
        for f in dataclasses.fields(cls):
            fig = figure(f)
            if fig.kind in (Kind.COUNTER, Kind.GAUGE, Kind.LABEL):
                assert fig.metric.startswith("stunner_") and fig.help, (cls, f.name)
    # frozen: a snapshot is a value
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServerStats().allocations = 1  # type: ignore[misc]


def test_merge_sums_counters_and_live_gauges() -> None:
    a = StatsSnapshot(
        listeners={
            "udp": ListenerStats(1, 10, 2, 20, connections_total=3, connections=3, dropped=1),
            "tcp": ListenerStats(rx_packets=5, connections=1, streams=True),
        },
        clusters={"peers": ClusterStats(1, 2, 3, 4)},
        server=ServerStats(allocations=3, auth_failures=1, auth_locked=2, rate_limited=3),
    )
    b = StatsSnapshot(
        listeners={
            "udp": ListenerStats(10, 100, 20, 200, connections_total=4, connections=2),
            "tcp": ListenerStats(rx_packets=6, connections=2, streams=False),
        },
        clusters={"peers": ClusterStats(10, 20, 30, 40), "other": ClusterStats(tx_bytes=9)},
        server=ServerStats(allocations=2, malformed=7),
    )
    total = StatsSnapshot.merge([a, b])
    assert total.listeners["udp"] == ListenerStats(
        11, 110, 22, 220, connections_total=7, connections=5, dropped=1
    )
    # connections: summed over the workers; streams: a flag, set when any worker says so
    assert total.listeners["tcp"] == ListenerStats(rx_packets=11, connections=3, streams=True)
    assert total.clusters == {
        "peers": ClusterStats(11, 22, 33, 44),
        "other": ClusterStats(tx_bytes=9),
    }
    assert total.server == ServerStats(
        allocations=5, auth_failures=1, auth_locked=2, rate_limited=3, malformed=7
    )
    assert StatsSnapshot.merge([a]) == a
    assert StatsSnapshot.merge([]) == StatsSnapshot()
    assert StatsSnapshot.merge([StatsSnapshot(), a, StatsSnapshot()]) == a


def test_a_dead_worker_keeps_its_counters_and_drops_its_gauges() -> None:
    report = StatsSnapshot(
        listeners={
            "tcp": ListenerStats(
                1, 2, 3, 4, connections_total=5, connections=6, dropped=7, streams=True
            )
        },
        clusters={"peers": ClusterStats(1, 2, 3, 4)},
        server=ServerStats(
            allocations=8, auth_failures=9, auth_locked=1, rate_limited=2, malformed=3
        ),
        workers=WorkersStats(running=1),
    )
    dead = report.counters_only()
    assert dead == StatsSnapshot(
        listeners={"tcp": ListenerStats(1, 2, 3, 4, connections_total=5, dropped=7)},
        clusters={"peers": ClusterStats(1, 2, 3, 4)},
        server=ServerStats(auth_failures=9, auth_locked=1, rate_limited=2, malformed=3),
    )
    # the supervisor: what died (kept across restarts) plus the live reports
    live = StatsSnapshot(
        listeners={"tcp": ListenerStats(rx_packets=1, connections=1, streams=True)},
        server=ServerStats(allocations=1, auth_failures=1),
    )
    total = StatsSnapshot.merge([StatsSnapshot.merge([StatsSnapshot(), dead]), live])
    assert total.listeners["tcp"].rx_packets == 2
    assert total.listeners["tcp"].connections_total == 5
    assert total.listeners["tcp"].connections == 1 and total.listeners["tcp"].streams
    assert total.server.allocations == 1 and total.server.auth_failures == 10
    # a supervisor's own figures are never summed
    assert total.workers is None
    assert StatsSnapshot.merge([report, report]).workers is None


def test_pipe_encoding_is_plain_data_and_tolerant() -> None:
    snap = StatsSnapshot(
        listeners={"udp": ListenerStats(1, 2, 3, 4, connections=1, streams=True)},
        clusters={"peers": ClusterStats(5, 6, 7, 8)},
        server=ServerStats(allocations=1, malformed=2),
    )
    data = snap.to_dict()
    assert data["listeners"]["udp"]["rx_bytes"] == 2  # field names are the keys
    assert StatsSnapshot.from_dict(data) == snap
    # a newer worker: keys this supervisor does not know, at every level
    data["uptime"] = 3
    data["listeners"]["udp"]["retransmits"] = 4
    data["clusters"]["peers"]["jitter"] = {"p50": 1}
    data["server"]["refused"] = 5
    assert StatsSnapshot.from_dict(data) == snap
    # an older worker: what it does not send is zero
    assert StatsSnapshot.from_dict({"server": {"allocations": 3}}) == StatsSnapshot(
        server=ServerStats(allocations=3)
    )
    assert StatsSnapshot.from_dict({}) == StatsSnapshot()
    for bad in ({"listeners": []}, {"server": {"allocations": "many"}}, {"clusters": {"c": 1}}):
        with pytest.raises(ValueError):
            StatsSnapshot.from_dict(bad)
    supervised = dataclasses.replace(
        snap,
        workers=WorkersStats(running=2, restarts=1, per_worker={"0": WorkerStats(11, 1)}),
    )
    assert StatsSnapshot.from_dict(supervised.to_dict()) == supervised


async def test_a_real_snapshot_round_trips_through_pipe_frames() -> None:
    """`Server.stats()` of a server that served an allocation, through the frames a worker
    writes and the supervisor reads (a real socket pair, as between them)."""
    async with start_turn_server() as ts:
        async with TurnClient(ts.address, "udp", timeout=TIMEOUT) as client:
            assert error_code(await client.allocate(ts.username, ts.password)) == (0, "")
            snap = ts.server.stats()
        assert isinstance(snap, StatsSnapshot)
        assert snap.server.allocations == 1
        assert snap.listeners["udp-listener"].connections == 1
        assert snap.listeners["tcp-listener"].streams
        left, right = socket.socketpair()
        _, writer = await asyncio.open_unix_connection(sock=left)
        peer_reader, peer_writer = await asyncio.open_unix_connection(sock=right)
        try:
            write_frame(writer, {"type": "stats", "stats": snap.to_dict()})
            await writer.drain()
            frame = await asyncio.wait_for(read_frame(peer_reader), TIMEOUT)
        finally:
            writer.close()
            peer_writer.close()
    assert frame is not None and frame["type"] == "stats"
    assert StatsSnapshot.from_dict(frame["stats"]) == snap
