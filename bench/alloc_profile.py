"""Where an allocation's time goes: the four-request sequence against one stunnerd, per request.

Starts stunnerd (this checkout's `stunner_dp`, or the one first on ``--pythonpath``) in a child
process that times every `TurnServer.handle_stun` call by request type and answer class
(Allocate 401, Allocate, CreatePermission, ChannelBind), then drives it with bench/loadgen.py's
allocation mode (the compare.py config, so the same figures). With ``--profile FILE`` the child
also runs cProfile over the measured window and writes FILE (read it with `python -m pstats`).

Several ``--pythonpath`` values alternate A B A B on the same machine in the same minute, so the
machine's load cancels out of their ratio:

    .venv/bin/python bench/alloc_profile.py --pythonpath /tmp/old --pythonpath . --rounds 2

Printed per tree and round: allocations/s, server CPU per sequence (utime+stime over the
sequences done, as compare.py has it) and in-handler µs per request type.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if TYPE_CHECKING:
    import loadgen

_METHOD_NAMES = {0x003: "Allocate", 0x008: "CreatePermission", 0x009: "ChannelBind"}


def _serve(config: str, out: str, profile: str) -> int:
    """The child: stunnerd in this process, handle_stun timed; SIGUSR1 starts the window,
    SIGUSR2 ends it and writes the figures (and the profile) to ``out``."""
    import cProfile

    from stunner_dp import cli
    from stunner_dp.turn import server as turn_server

    timings: dict[str, list[float]] = {}
    state: dict[str, Any] = {"on": False, "prof": None}
    original = turn_server.TurnServer.handle_stun
    clock = time.thread_time  # CPU, not wall: the machine is shared

    def timed(self: Any, ctx: Any, data: bytes, now: float) -> Any:
        if not state["on"]:
            return original(self, ctx, data, now)
        t0 = clock()
        outputs = original(self, ctx, data, now)
        spent = clock() - t0
        method = ((data[0] << 8 | data[1]) & 0x3EEF) if len(data) > 1 else 0
        name = _METHOD_NAMES.get(method, f"0x{method:03x}")
        if outputs:
            answer = outputs[0][2]
            if len(answer) > 1 and answer[1] & 0x10 and answer[0] & 0x01:  # error class
                name += " error"  # in this benchmark: Allocate's 401 challenge
        slot = timings.setdefault(name, [0.0, 0])
        slot[0] += spent
        slot[1] += 1
        return outputs

    turn_server.TurnServer.handle_stun = timed  # type: ignore[method-assign]

    def start(*_: object) -> None:
        timings.clear()
        if profile:
            state["prof"] = cProfile.Profile()
            state["prof"].enable()
        state["on"] = True

    def stop(*_: object) -> None:
        state["on"] = False
        if state["prof"] is not None:
            state["prof"].disable()
            state["prof"].dump_stats(profile)
        Path(out).write_text(json.dumps({k: v for k, v in timings.items()}))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return cli.main(["-c", config, "-l", "all:WARNING"])


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _round(
    pythonpath: str, gen: loadgen.Generator, count: int, tmp: str, profile: str
) -> dict[str, Any]:
    import compare
    import loadgen

    port = compare.free_port()
    cfg = Path(tmp, "stunnerd.yaml")
    cfg.write_text(compare.stunner_config(port, 20_000, 32_767, False))
    out = Path(tmp, "timings.json")
    out.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(Path(pythonpath).resolve()))
    argv = [sys.executable, __file__, "--serve", str(cfg), "--out", str(out)]
    argv += ["--profile", profile] if profile else []
    proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
    try:
        if not compare.stun_ping(port, 20):
            raise RuntimeError(f"stunnerd from {pythonpath} did not answer on port {port}")
        creds = loadgen.Creds(compare.USER, compare.PASSWORD)
        addr = ("127.0.0.1", port)
        gen.setup(addr, creds, 64, keep=False)  # warm-up: imports, first allocations
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        result = gen.allocation_rate(addr, creds, count, proc.pid)
        proc.send_signal(signal.SIGUSR2)
        _wait_file(out, 20)
        time.sleep(0.2)
        timings = json.loads(out.read_text()) if out.exists() else {}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"alloc": result, "timings": timings}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pythonpath", action="append", default=[], help="a tree holding stunner_dp")
    p.add_argument("--allocations", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--profile", default="", help="cProfile output, {tree} and {round} expanded")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve:
        return _serve(a.serve, a.out, a.profile)
    # only here: the child (--serve) imports nothing but the tree under test
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    import loadgen

    trees = a.pythonpath or [str(ROOT)]
    figures: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as tmp, loadgen.Generator(procs=1, cpus=None) as gen:
        for rnd in range(a.rounds):
            for index, tree in enumerate(trees):
                profile = a.profile.format(tree=index, round=rnd) if a.profile else ""
                r = _round(tree, gen, a.allocations, tmp, profile)
                figures[tree].append(r)
                al = r["alloc"]
                per = {
                    k: f"{1e6 * v[0] / v[1]:.1f} µs x{v[1]}"
                    for k, v in sorted(r["timings"].items())
                }
                print(
                    f"[{tree} #{rnd}] {al.allocations} ok, {al.failed} failed: "
                    f"{al.per_second:,.0f}/s, server CPU {al.server_cpu_us_per_allocation:.0f} "
                    f"µs/sequence; in handle_stun: {per}",
                    flush=True,
                )
    print("\nmean server CPU per sequence (µs), in-handler sum per sequence (µs):")
    for tree, rounds in figures.items():
        cpu = sum(r["alloc"].server_cpu_us_per_allocation for r in rounds) / len(rounds)
        inner = sum(
            1e6 * sum(v[0] for v in r["timings"].values()) / max(1, r["alloc"].allocations)
            for r in rounds
        ) / len(rounds)
        print(f"  {tree}: {cpu:.0f} CPU, {inner:.0f} in handle_stun")
    return 0


if __name__ == "__main__":
    sys.exit(main())
