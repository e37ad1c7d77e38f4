"""The kernel fast path's own CPU per relayed packet, read from the kernel's BPF statistics.

Machine-wide CPU accounting on a shared VM swings by more than the offload costs (see the
README's Performance section), so this measures the program itself: with
`kernel.bpf_stats_enabled=1` the kernel adds up each program's run time and run count, and
their ratio is what every packet on the offloaded path costs beyond the direct client→peer
delivery it replaces (needs root).

    .venv/bin/python bench/offload_cost.py            # one way, 20 kpps, 50 clients, 3 s
    .venv/bin/python bench/offload_cost.py --echo     # peer echoes: both directions
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import compare  # bench/: its stunnerd config, user and password

from stunner_dp.testing import free_port

REPO = Path(__file__).resolve().parents[1]


def tc_program_stats() -> dict[int, tuple[int, int]]:
    """id -> (run_time_ns, run_cnt) of every TC (sched_cls) program loaded now."""
    out = subprocess.run(
        ["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True
    )
    return {
        p["id"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0))
        for p in json.loads(out.stdout)
        if p.get("type") == "sched_cls"
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--echo", action="store_true")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "stunnerd.yaml")
        config.write_text(compare.stunner_config(port, 21000, 21999, False, offload=True))
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=True)
        server = subprocess.Popen(
            [str(REPO / ".venv/bin/stunnerd"), "-c", str(config), "-l", "all:WARNING"]
        )
        try:
            time.sleep(3)  # loaded and attached
            before = tc_program_stats()
            run = subprocess.run(
                [
                    sys.executable,
                    str(REPO / "bench" / "loadgen.py"),
                    *("--server", f"127.0.0.1:{port}"),
                    *("--user", compare.USER, "--password", compare.PASSWORD),
                    *("--clients", str(args.clients), "--rate", str(args.rate)),
                    *("--duration", str(args.duration), "--ceiling", "0", "--json"),
                    *(["--echo"] if args.echo else []),
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            after = tc_program_stats()
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
            subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=False)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for prog, (ns, count) in after.items():
        ns0, count0 = before.get(prog, (0, 0))
        runs = count - count0
        if runs:
            print(f"program {prog}: {runs} runs, {(ns - ns0) / runs:.0f} ns per run")
    print(
        f"relayed: sent {result['sent']}, received {result['received']}, "
        f"loss {result['loss_pct']:.2f} %"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
