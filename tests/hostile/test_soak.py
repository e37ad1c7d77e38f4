"""The CI soak: bench/soak.py for 2 minutes (STUNNER_DP_SOAK_MINUTES to change it), churning
allocations every way they end, in turns over the address-family variants (IPv4; an IPv4 client
asking for an IPv6 relay; an IPv6 client on ::1; dual allocations), at the same total rate.
Afterwards allocations and relay ports of both families are back to zero and RSS grew by less
than 10% between minute 1 and the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stunner_dp.testing import relay_window

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
MINUTES = float(os.environ.get("STUNNER_DP_SOAK_MINUTES", "2"))


def test_two_minute_soak_leaks_nothing() -> None:
    low, high = relay_window(400)
    cmd = [
        sys.executable,
        str(SOAK),
        "--minutes",
        str(MINUTES),
        "--relay-low",
        str(low),
        "--relay-high",
        str(high),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MINUTES * 60 + 180)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads(lines[-1])
    samples = {row["at"]: row for row in summary["samples"]}
    end = samples["end"]
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}))
    assert summary["clients"]["sessions"] >= MINUTES * 60 * 20 * 0.9
    assert summary["clients"]["failed"] <= summary["clients"]["sessions"] * 0.01, summary
    assert summary["allocations_at_churn_end"] > 0  # the churn left allocations to expire
    # every family variant had its share of the sessions, and IPv6 relays were open
    variants = summary["by_variant"]
    assert set(variants) == {"ipv4", "ipv4-asks-ipv6", "ipv6", "dual"}, variants
    for name, counts in variants.items():
        assert counts["sessions"] >= summary["clients"]["sessions"] / len(variants) - 1, name
        assert counts["failed"] <= counts["sessions"] * 0.01, (name, counts)
    assert summary["peak_relay_ports_ipv6_sampled"] > 0, summary
    assert end["allocations"] == 0 and end["relay_ports"] == 0, end
    assert end["relay_ports_ipv6"] == 0, end
    assert end["fds"] <= samples["start"]["fds"] + 2, (samples["start"], end)
    assert summary["rss_growth_min1_to_end"] < 0.10, summary
    assert proc.returncode == 0, proc.stderr[-4000:]
