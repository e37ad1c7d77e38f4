"""Config reloads against a relaying server: does a hostile or big file stall or bloat it?

    .venv/bin/python bench/config_bomb.py            # the three files below, one report each
    .venv/bin/python bench/config_bomb.py --json

Starts `stunnerd -c FILE -w` (one process) on loopback, allocates over UDP, binds a channel to
a UDP echo peer here and relays a ChannelData datagram every 2 ms through it. Then, for each
case, it rewrites the config file and sends SIGHUP:

- `alias-bomb`: a ~1.2 KB YAML file whose anchors and aliases expand to millions of values;
- `big-valid`: a valid ~5.8 MB file (99 clusters of 1,000 endpoints);
- `deep-nesting`: a valid config plus a value nested 100,000 levels deep.

For each it reports the longest gap between two echoes coming back (while the reload runs,
until its outcome is in the log, plus one second), echoes lost, stunnerd's RSS before and after
(and the peak of stunnerd plus any child it started), and whether the config was accepted
(`/status` shows the case's admin.name) or refused (the log line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from stunner_dp.client.turn import TurnClient, check
from stunner_dp.testing import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    free_port,
    make_config,
    relay_window,
    udp_echo_peer,
)

INTERVAL = 0.002  # one datagram every 2 ms
SETTLE = 1.0  # keep measuring this long after the reload's outcome is logged
REPORT_TIMEOUT = 60.0


def _stunnerd() -> list[str]:
    exe = Path(sys.executable).with_name("stunnerd")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "stunner_dp.cli"]


def base(port: int, health: int, window: tuple[int, int], name: str) -> dict[str, Any]:
    config = make_config(
        port=port,
        protocols=("TURN-UDP",),
        min_relay_port=window[0],
        max_relay_port=window[1],
        name=name,
    )
    config["admin"]["healthcheck_endpoint"] = f"http://127.0.0.1:{health}"
    return config


def alias_bomb(config: dict[str, Any]) -> str:
    text = yaml.safe_dump(config, sort_keys=False)
    levels = ["a: &a [" + ",".join(["lol"] * 10) + "]"]
    for i, name in enumerate("bcdefg"):
        prev = "abcdefg"[i]
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    return text + "bomb:\n" + "".join(f"  {line}\n" for line in levels)


def big_valid(config: dict[str, Any], clusters_count: int = 99) -> str:
    """~5.8 MB of YAML: 99 clusters of 1,000 IPv6 endpoints (99,000, inside MAX_ENDPOINTS)."""
    clusters = [
        {
            "name": f"c{i}",
            "type": "STATIC",
            "endpoints": [
                f"fd00:1111:2222:{i:04x}:4444:5555:{j // 250:04x}:{j % 250:04x}/128"
                for j in range(1000)
            ],
        }
        for i in range(clusters_count)
    ]
    config = dict(config, clusters=[*config["clusters"], *clusters])
    return yaml.safe_dump(config, sort_keys=False, width=200)


def deep_nesting(config: dict[str, Any], depth: int = 100_000) -> str:
    text = yaml.safe_dump(config, sort_keys=False)
    return text + "deep: " + "[" * depth + "]" * depth + "\n"


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    total = rss_kb(pid)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += tree_rss_kb(int(child))
    return total


def status(health: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{health}/status", timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


class Echoes:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.sent = 0


async def relay(client: TurnClient, echoes: Echoes, stop: asyncio.Event) -> None:
    async def receive() -> None:
        while True:
            await client.receive_channel_data(timeout=3600)
            echoes.times.append(time.monotonic())

    receiver = asyncio.create_task(receive())
    try:
        payload = b"m" * 160
        while not stop.is_set():
            client.send_channel_data(payload)
            echoes.sent += 1
            await asyncio.sleep(INTERVAL)
    finally:
        receiver.cancel()


async def run_case(
    name: str, text: str, path: Path, proc: subprocess.Popen[bytes], log: Path, health: int
) -> dict[str, Any]:
    echoes = Echoes()
    stop = asyncio.Event()
    relaying = asyncio.create_task(relay(CLIENT, echoes, stop))
    await asyncio.sleep(0.5)
    rss_before = rss_kb(proc.pid)
    log_start = log.stat().st_size
    path.write_text(text)
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGHUP)
    peak = rss_before
    outcome = "no outcome logged"
    while time.monotonic() - started < REPORT_TIMEOUT:
        await asyncio.sleep(0.05)
        peak = max(peak, tree_rss_kb(proc.pid))
        with log.open("rb") as f:
            f.seek(log_start)
            new = f.read().decode(errors="replace")
        if "config applied" in new or "config unchanged" in new:
            outcome = "applied"
            break
        if "not valid" in new or "could not" in new or "reload failed" in new:
            outcome = next(
                line for line in new.splitlines() if "valid" in line or "could not" in line
            )
            outcome = "refused: " + outcome[-300:]
            break
    took = time.monotonic() - started
    await asyncio.sleep(SETTLE)
    stop.set()
    await relaying
    window = [t for t in echoes.times if t >= started - 0.1]
    gaps = [b - a for a, b in itertools.pairwise(window)]
    accepted: bool | str
    try:
        accepted = await asyncio.to_thread(lambda: status(health)["admin"]["name"] == name)
    except OSError as exc:  # urllib's timeouts are OSErrors too
        accepted = f"/status did not answer: {exc}"
    return {
        "case": name,
        "bytes": len(text.encode()),
        "outcome": outcome,
        "accepted": accepted,
        "reload_s": round(took, 3),
        "longest_gap_ms": round(max(gaps, default=0.0) * 1000, 1),
        "sent": echoes.sent,
        "lost": echoes.sent - len(echoes.times),
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_after_mb": round(rss_kb(proc.pid) / 1024, 1),
        "rss_peak_tree_mb": round(peak / 1024, 1),
    }


CLIENT: TurnClient


async def main() -> int:
    global CLIENT
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cases", default="alias-bomb,big-valid,deep-nesting")
    args = parser.parse_args()
    port, health = free_port(), free_port(udp=False)
    window = relay_window(50)
    tmp = Path(tempfile.mkdtemp(prefix="config-bomb-"))
    path, log = tmp / "stunnerd.yaml", tmp / "stunnerd.log"
    first = base(port, health, window, "start")
    path.write_text(yaml.safe_dump(first))
    makers = {"alias-bomb": alias_bomb, "big-valid": big_valid, "deep-nesting": deep_nesting}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_stunnerd(), "-c", str(path), "-w", "-l", "all:INFO"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    results = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                status(health)
                break
            await asyncio.sleep(0.1)
        async with udp_echo_peer() as echo:
            CLIENT = TurnClient(("127.0.0.1", port))
            await CLIENT.connect()
            check(await CLIENT.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD), "allocate")
            check(await CLIENT.channel_bind(echo), "channel bind")
            for name in args.cases.split(","):
                text = makers[name](base(port, health, window, name))
                results.append(await run_case(name, text, path, proc, log, health))
                # back to a small config between cases, so each starts from the same place
                path.write_text(yaml.safe_dump(base(port, health, window, "start")))
                os.kill(proc.pid, signal.SIGHUP)
                await asyncio.sleep(1.0)
            CLIENT.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(
                f"{r['case']:13} {r['bytes'] / 1000:8.1f} KB  gap {r['longest_gap_ms']:8.1f} ms"
                f"  lost {r['lost']:5}/{r['sent']:<5}  RSS {r['rss_before_mb']:6.1f} ->"
                f" {r['rss_after_mb']:6.1f} MB (peak {r['rss_peak_tree_mb']:6.1f})"
                f"  reload {r['reload_s']:6.2f} s  accepted={r['accepted']}  {r['outcome'][:160]}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
