"""Metrics: drive known traffic through a real server, scrape /metrics over HTTP, parse the
exposition with prometheus_client's parser and check every STUNner figure exactly."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stunner_dp import stun
from stunner_dp.client.turn import TurnClient, error_code
from stunner_dp.observe.http import HttpEndpoints
from stunner_dp.observe.metrics import MetricsServer, StatsCollector
from stunner_dp.observe.stats import ListenerStats, ServerStats, StatsSnapshot, WorkersStats
from stunner_dp.testing import start_turn_server, udp_echo_peer

N = 25  # ChannelData messages each way
TIMEOUT = 5.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """{(sample name, sorted labels): value} of a text exposition."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


# What Prometheus sends: OpenMetrics preferred, the text format accepted.
ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"


async def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}{path}",
            headers={"Accept": ACCEPT},
            timeout=aiohttp.ClientTimeout(5),
        ) as r,
    ):
        assert r.status == 200
        return r.headers["Content-Type"], await r.text()


async def relay_traffic(
    client: TurnClient, username: str, password: str, peer: tuple[str, int], size: int
) -> None:
    """Allocate, permit and bind a channel to `peer`, then send N ChannelData messages of
    `size` bytes and wait for the N echoes."""
    resp = await client.allocate(username, password)
    assert error_code(resp) == (0, ""), error_code(resp)
    assert error_code(await client.create_permission(peer))[0] == 0
    assert error_code(await client.channel_bind(peer))[0] == 0
    for i in range(N):
        payload = bytes([i]) * size
        client.send_channel_data(payload)
        number, echoed = await client.receive_channel_data(TIMEOUT)
        assert (number, echoed) == (0x4000, payload)


@pytest.mark.parametrize(("transport", "size"), [("udp", 100), ("tcp", 101)])
async def test_scraped_figures_are_exact(transport: str, size: int) -> None:
    endpoints = HttpEndpoints()
    async with start_turn_server() as ts, udp_echo_peer() as peer:
        metrics = MetricsServer(endpoints, ts.server.stats)
        await metrics.configure("http://127.0.0.1:0/metrics")
        assert metrics.port
        client = TurnClient(ts.address, transport, timeout=TIMEOUT)
        try:
            await client.connect()
            await relay_traffic(client, ts.username, ts.password, peer, size)
            content_type, text = await scrape(metrics.port)
        finally:
            client.close()
            await endpoints.close()

    assert content_type.startswith("text/plain; version=0.0.4")
    m = parse(text)
    name, other = f"{transport}-listener", ("tcp" if transport == "udp" else "udp") + "-listener"
    # STUN: challenge, Allocate, CreatePermission, ChannelBind (no retransmission on loopback)
    assert client.packets_sent == 4 + N and client.packets_received == 4 + N
    stun_sent = client.bytes_sent - N * (4 + size)
    stun_received = client.bytes_received - N * (4 + size)
    assert stun_sent > 4 * stun.HEADER_SIZE and stun_received > 4 * stun.HEADER_SIZE

    # listener: wire bytes, ChannelData with its 4-byte header, stream padding not counted
    assert value(m, "stunner_listener_packets_total", name=name, direction="rx") == 4 + N
    assert value(m, "stunner_listener_packets_total", name=name, direction="tx") == 4 + N
    assert value(m, "stunner_listener_bytes_total", name=name, direction="rx") == (
        stun_sent + N * (4 + size)
    )
    assert value(m, "stunner_listener_bytes_total", name=name, direction="tx") == (
        stun_received + N * (4 + size)
    )
    assert value(m, "stunner_listener_connections_total", name=name) == 1
    assert value(m, "stunner_listener_connections", name=name) == 1
    assert value(m, "stunner_listener_dropped_packets_total", name=name) == 0
    for direction in ("rx", "tx"):
        assert value(m, "stunner_listener_packets_total", name=other, direction=direction) == 0
        assert value(m, "stunner_listener_bytes_total", name=other, direction=direction) == 0
    assert value(m, "stunner_listener_connections", name=other) == 0

    # cluster: UDP payload to and from the peers of the cluster
    for direction in ("rx", "tx"):
        assert value(m, "stunner_cluster_packets_total", name="peers", direction=direction) == N
        assert value(m, "stunner_cluster_bytes_total", name="peers", direction=direction) == (
            N * size
        )

    assert value(m, "stunner_allocations_active") == 1
    assert value(m, "stunner_bytes_received_total") == client.bytes_sent
    assert value(m, "stunner_bytes_sent_total") == client.bytes_received
    assert value(m, "stunner_connections_total") == 1
    # process metrics of this process
    assert value(m, "process_resident_memory_bytes") > 0
    assert value(m, "process_open_fds") > 0


async def test_allocation_count_follows_allocations() -> None:
    endpoints = HttpEndpoints()
    async with start_turn_server() as ts:
        metrics = MetricsServer(endpoints, ts.server.stats)
        await metrics.configure("http://127.0.0.1:0/metrics")
        assert metrics.port
        clients = [TurnClient(ts.address, "udp", timeout=TIMEOUT) for _ in range(3)]
        try:
            for c in clients:
                await c.connect()
                assert error_code(await c.allocate(ts.username, ts.password))[0] == 0
            m = parse((await scrape(metrics.port))[1])
            assert value(m, "stunner_allocations_active") == 3
            assert value(m, "stunner_listener_connections", name="udp-listener") == 3
            assert error_code(await clients[0].refresh(0))[0] == 0  # delete one
            m = parse((await scrape(metrics.port))[1])
            assert value(m, "stunner_allocations_active") == 2
            assert value(m, "stunner_listener_connections", name="udp-listener") == 2
            assert value(m, "stunner_listener_connections_total", name="udp-listener") == 3
            assert value(m, "stunner_connections_total") == 3
        finally:
            for c in clients:
                c.close()
            await endpoints.close()


async def test_listener_counters_never_go_down() -> None:
    endpoints = HttpEndpoints()
    async with start_turn_server() as ts, udp_echo_peer() as peer:
        metrics = MetricsServer(endpoints, ts.server.stats)
        await metrics.configure("http://127.0.0.1:0/metrics")
        assert metrics.port
        client = TurnClient(ts.address, "udp", timeout=TIMEOUT)
        try:
            await client.connect()
            await relay_traffic(client, ts.username, ts.password, peer, 64)
            before = parse((await scrape(metrics.port))[1])
            assert error_code(await client.refresh(0))[0] == 0
            after = parse((await scrape(metrics.port))[1])
        finally:
            client.close()
            await endpoints.close()
    for key, old in before.items():
        if key[0].startswith("stunner_") and key[0].endswith("_total"):
            assert after[key] >= old, key


async def test_endpoint_off_moved_and_shared() -> None:
    """ "" serves nothing; a new URL moves the endpoint; another path on the same port (as the
    health endpoints would be) keeps working beside it."""
    stats = StatsSnapshot(server=ServerStats(allocations=7))
    endpoints = HttpEndpoints()
    try:
        metrics = MetricsServer(endpoints, lambda: stats)
        await metrics.configure("")
        assert metrics.port is None and endpoints.mounted() == {}

        async def other(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(text="other")

        await endpoints.mount("127.0.0.1", 0, "/live", other)
        port = endpoints.bound_port("127.0.0.1", 0)
        assert port
        await metrics.configure("http://127.0.0.1:0/custom")
        assert metrics.port == port  # same (host, port) key: one server
        m = parse((await scrape(port, "/custom"))[1])
        assert value(m, "stunner_allocations_active") == 7
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/live") as r:
            assert await r.text() == "other"
        await metrics.configure("")
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/custom") as r:
            assert r.status == 404
    finally:
        await endpoints.close()


def test_worker_figures_and_sums() -> None:
    """A supervisor's snapshot (workers, restarts) is exposed; sums follow the listener rows."""
    stats = StatsSnapshot(
        server=ServerStats(allocations=2),
        workers=WorkersStats(running=3, restarts=1),
        listeners={
            "a": ListenerStats(rx_bytes=10, tx_bytes=20, connections_total=4),
            "b": ListenerStats(rx_bytes=1, tx_bytes=2, connections_total=5),
        },
    )
    families = {
        (f.name, f.type): f.samples[0].value
        for f in StatsCollector(lambda: stats).collect()
        if f.samples and not f.samples[0].labels
    }
    assert families[("stunner_bytes_received", "counter")] == 11
    assert families[("stunner_bytes_sent", "counter")] == 22
    assert families[("stunner_connections", "counter")] == 9
    assert families[("stunner_workers", "gauge")] == 3
    assert families[("stunner_worker_restarts", "counter")] == 1


async def test_auth_failures_counted() -> None:
    endpoints = HttpEndpoints()
    async with start_turn_server() as ts:
        metrics = MetricsServer(endpoints, ts.server.stats)
        await metrics.configure("http://127.0.0.1:0/metrics")
        assert metrics.port
        try:
            for _ in range(3):
                async with TurnClient(ts.address, "udp", timeout=TIMEOUT) as client:
                    assert error_code(await client.allocate(ts.username, "wrong"))[0] == 401
            m = parse((await scrape(metrics.port))[1])
        finally:
            await endpoints.close()
    assert value(m, "stunner_auth_failures_total") == 3
    assert value(m, "stunner_allocations_active") == 0
    assert value(m, "stunner_malformed_packets_total") == 0
