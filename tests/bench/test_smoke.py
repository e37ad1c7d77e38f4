"""A smoke run of bench/compare.py (and so bench/loadgen.py): tiny rates, a few seconds.

It checks that the benchmark still runs end to end and relays packets through each server
(coturn too when `turnserver` is installed). It asserts no speed: bench/ measures, tests don't.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

import compare  # bench/ is on pytest's pythonpath
import loadgen
import pytest

SERVERS = [compare.STUNNER] + ([compare.COTURN] if shutil.which("turnserver") else [])
# The kernel fast path variant where it can load (root, BTF, libbpf); one round more, UDP only.
OFFLOAD = [compare.OFFLOAD] if compare.offload_unavailable() is None else []


@pytest.fixture
def relay_window() -> tuple[int, int]:
    low = random.randrange(30000, 32767 - 100)
    return low, low + 99


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_compare_smoke(tmp_path: Path, relay_window: tuple[int, int], transport: str) -> None:
    udp_only = [compare.PYTHON_PATH, *OFFLOAD] if transport == "udp" else []
    servers = [compare.STUNNER, *udp_only, *SERVERS[1:]]
    opts = compare.Options(
        servers=tuple(servers),
        rounds=1,
        duration=0.4,
        rates=[200.0, 500.0],
        clients=4,
        allocations=20,
        transport=transport,
        server_cpu=None,
        gen_cpus=None,
        echo_rate=200.0,
        ceiling_duration=0.2,
        relay_low=relay_window[0],
        relay_high=relay_window[1],
        plot=False,
        verbose=False,
        out_dir=tmp_path,
    )
    result = compare.run(opts)
    assert [r["server"] for r in result["rounds"]] == [compare.DIRECT, *servers]
    direct, *rounds = result["rounds"]
    assert [r["rate"] for r in direct["sweep"]] == [200.0, 500.0]
    assert all(r["received"] > 0 for r in direct["sweep"]), "the baseline reached no sink"
    for rnd in result["rounds"]:  # machine-wide CPU is measured for every run, baseline too
        assert all(math.isfinite(r["machine_cpu_us_per_pkt"]) for r in rnd["sweep"])
    for rnd in rounds:
        assert rnd["clients"] == 4, rnd["client_errors"]
        assert [r["rate"] for r in rnd["sweep"]] == [200.0, 500.0]
        for run in rnd["sweep"]:
            assert run["sent"] > 0
            assert run["received"] > 0, f"{rnd['server']}: nothing relayed"
            assert run["ow_p50_us"] > 0
        assert rnd["echo"]["delivered_pps"] > 0, f"{rnd['server']}: nothing echoed back"
        assert rnd["alloc"]["allocations"] == 20
        if rnd["server"] == compare.OFFLOAD:  # the variant measured the kernel path
            assert rnd["offload"].get("active") == 1, (rnd["offload"], result["server_logs_tail"])
            assert rnd["offload"]["entries"] == 4
            assert rnd["offload"]["tx_packets"] > 0, "nothing relayed in the kernel"
        if rnd["server"] == compare.STUNNER and transport == "udp":  # the compiled forwarder
            assert rnd["forwarder"].get("active") == 1, result["server_logs_tail"]
            assert rnd["forwarder"]["tx_packets"] > 0, "nothing relayed by the forwarder"
            assert rnd["forwarder"]["rx_packets"] > 0, "nothing relayed back to the clients"
        if rnd["server"] == compare.PYTHON_PATH:  # and the variant that switches it off
            assert rnd["forwarder"].get("active") == 0, rnd["forwarder"]
    assert result["ceiling_pps"] > 0
    assert "stunner-dp" in result["table"]
    assert list(tmp_path.glob("compare-*.json"))


def test_loadgen_cli_without_server_fails_cleanly() -> None:
    """Nobody listens: every client fails its handshake, the command says so and exits 1."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never read: requests go unanswered
        loadgen.RTO_S, old = 0.05, loadgen.RTO_S
        try:
            code = loadgen.main(
                [
                    "--server",
                    f"127.0.0.1:{port}",
                    "--clients",
                    "2",
                    "--duration",
                    "0.2",
                    "--procs",
                    "1",
                    "--ceiling",
                    "0",
                ]
            )
        finally:
            loadgen.RTO_S = old
    assert code == 1
