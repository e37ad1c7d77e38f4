"""stunner-dp against coturn on the same machine, one command.

    .venv/bin/python bench/compare.py            # full run (a few minutes)
    .venv/bin/python bench/compare.py --quick    # about one minute
    .venv/bin/python bench/compare.py --quick --only stunner --workers 2
    .venv/bin/python bench/compare.py --quick --only stunner --ipv6   # all of it over ::1
    .venv/bin/python bench/compare.py --quick --python-path   # also with the forwarder off

Starts each server on 127.0.0.1 (a free port, relay ports 20000-32767, one relay thread for
coturn), pins it to one CPU (``--server-cpu``, default 0) and the load generator to another
(``--gen-cpu``, default 1), and runs the same rate sweep against both in alternation
(A B A B ...; a fresh server per round). Prints a table with the stunner-dp/coturn ratios and
saves a plot and the raw figures under bench/results/. ``--ipv6``: the same run on ::1 (server,
clients, the peer sink, and so IPv6 relays).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen
from loadgen import AllocResult, Creds, Generator, RunResult

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
USER, PASSWORD, REALM = "bench", "bench-pass", "bench.stunner-dp"
REF_RATE = 20_000  # the rate the CPU-per-packet and latency figures are taken at
STUNNER = "stunner-dp"
OFFLOAD = "stunner-dp offload"  # stunner-dp with admin.offload_engine: TC (the kernel fast path)
# stunner-dp with the compiled forwarder off (STUNNER_DP_FORWARDER=python): Python per packet,
# what a host where libturn_forwarder.so cannot load runs
PYTHON_PATH = "stunner-dp python"
COTURN = "coturn"
DIRECT = "direct"  # no server: the generator sends the same payloads straight to the peer sink
STUNNERS = (STUNNER, PYTHON_PATH, OFFLOAD)


# -- servers ---------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (outside the relay range)."""
    family = loadgen.family_of(host)
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = int(u.getsockname()[1])
            with socket.socket(family, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def stunner_config(
    port: int,
    low: int,
    high: int,
    tcp: bool,
    offload: bool = False,
    metrics_port: int = 0,
    host: str = "127.0.0.1",
) -> str:
    listeners = [("udp-listener", "TURN-UDP")] + ([("tcp-listener", "TURN-TCP")] if tcp else [])
    metrics = f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else ""
    lines = [
        "version: v1",
        "admin:",
        "  name: bench",
        "  loglevel: all:WARNING",
        f'  metrics_endpoint: "{metrics}"',
        *(["  offload_engine: TC"] if offload else []),
        '  healthcheck_endpoint: ""',
        # All the generator's clients share 127.0.0.1: the per-IP limit on unauthenticated
        # answers (anti-reflection) would throttle the Allocate benchmark. coturn has none.
        "  unauth_rate_per_ip: 0",
        "  auth_failures_per_user: 0",
        "auth:",
        "  type: static",
        f"  realm: {REALM}",
        f"  credentials: {{username: {USER}, password: {PASSWORD}}}",
        "listeners:",
    ]
    for name, proto in listeners:
        lines += [
            f"  - name: {name}",
            f"    protocol: {proto}",
            f'    address: "{host}"',
            f"    port: {port}",
            f"    min_relay_port: {low}",
            f"    max_relay_port: {high}",
            "    routes: [loopback]",
        ]
    lines += [
        "clusters:",
        "  - name: loopback",
        "    type: STATIC",
        "    protocol: UDP",
        f'    endpoints: ["{host}/{128 if ":" in host else 32}"]',
    ]
    return "\n".join(lines) + "\n"


def default_stunner_cmd() -> str:
    exe = ROOT / ".venv" / "bin" / "stunnerd"
    if not exe.exists():
        found = shutil.which("stunnerd")
        exe = Path(found) if found else exe
    return f"{exe} -c {{config}} -l all:WARNING"


def coturn_cmd(port: int, low: int, high: int, tmp: str, host: str = "127.0.0.1") -> list[str]:
    return [
        "turnserver",
        "-n",  # no config file
        f"--listening-ip={host}",
        f"--relay-ip={host}",
        f"--listening-port={port}",
        f"--min-port={low}",
        f"--max-port={high}",
        "--relay-threads=1",
        "--lt-cred-mech",
        f"--user={USER}:{PASSWORD}",
        f"--realm={REALM}",
        "--allow-loopback-peers",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--no-rfc5780",
        "--no-stdout-log",
        "--log-file=/dev/null",
        "--simple-log",
        f"--pidfile={tmp}/turnserver.pid",
    ]


def _preexec(cpus: set[int]) -> Callable[[], None]:
    def run() -> None:
        if cpus:
            with contextlib.suppress(OSError):  # inherited by every thread and worker process
                os.sched_setaffinity(0, cpus)
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return run


def stun_ping(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """True once a STUN Binding request to host:port is answered."""
    req = loadgen.stun.encode_message(
        loadgen.stun.METHOD_BINDING, loadgen.stun.CLASS_REQUEST, os.urandom(12)
    )
    deadline = time.monotonic() + timeout
    with socket.socket(loadgen.family_of(host), socket.SOCK_DGRAM) as s:
        s.settimeout(0.1)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                s.sendto(req, (host, port))
                if s.recv(2048):
                    return True
    return False


class ServerProc:
    """One server process, pinned, stopped by its PID whatever happens."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        cpus: set[int],
        log: Path,
        cwd: Path = ROOT,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.host = host
        self.argv = argv
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=_preexec(cpus),
            start_new_session=True,
            cwd=str(cwd),
            env=env,
        )
        _running[self.proc.pid] = self.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.argv}")
            if stun_ping(self.port, 0.5, self.host):
                return
        raise RuntimeError(f"{self.name} did not answer on port {self.port} in {timeout:.0f} s")

    def stop(self) -> None:
        stop_pid(self.proc)
        self._log.close()

    metrics_port = 0  # stunner-dp's metrics endpoint, when the variant has one

    def metrics(self) -> dict[str, float]:
        """`name{labels}` -> value from the server's /metrics ({} when it has none)."""
        if not self.metrics_port:
            return {}
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = out.get(key, 0.0) + float(value)
        return out


_running: dict[int, subprocess.Popen[bytes]] = {}


def stop_pid(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (stunnerd: exit now, no drain), then SIGKILL; the process group too (workers)."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    # Worker processes left behind share the server's session (start_new_session).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    _running.pop(proc.pid, None)


def _stop_all() -> None:
    for proc in list(_running.values()):
        stop_pid(proc)


atexit.register(_stop_all)


# -- one round against one server ------------------------------------------------------------------


@dataclass
class Round:
    server: str
    index: int
    sweep: list[RunResult] = field(default_factory=list)
    echo: RunResult | None = None
    alloc: AllocResult | None = None
    clients: int = 0
    client_errors: dict[str, int] = field(default_factory=dict)
    # the offload variant: stunner_offload_* as the server reported them (active, entries after
    # setup; packets relayed in the kernel by the end of the round)
    offload: dict[str, float] = field(default_factory=dict)
    # stunner-dp: stunner_forwarder_* at the end of the round (active, packets it relayed)
    forwarder: dict[str, float] = field(default_factory=dict)

    def at(self, rate: float) -> RunResult | None:
        runs = [r for r in self.sweep if r.rate == rate]
        return runs[0] if runs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "index": self.index,
            "clients": self.clients,
            "client_errors": self.client_errors,
            "offload": self.offload,
            "forwarder": self.forwarder,
            "sweep": [r.as_dict() for r in self.sweep],
            "echo": self.echo.as_dict() if self.echo else None,
            "alloc": asdict(self.alloc) if self.alloc else None,
        }


@dataclass
class Options:
    quick: bool = False
    servers: tuple[str, ...] = (STUNNER, COTURN)
    direct: bool = True  # a DIRECT round first in each alternation: the machine-wide baseline
    rounds: int = 2
    duration: float = 3.0
    rates: list[float] = field(default_factory=list)
    clients: int = 100
    allocations: int = 10_000
    size: int = 160
    transport: str = "udp"
    workers: int = 0
    stunner_cmd: str = ""
    ref: str = ""  # a git commit: run stunner-dp's code as of that commit (git archive)
    server_cpu: int | None = 0  # None: no pinning
    gen_cpus: list[int] | None = field(default_factory=lambda: [1])
    echo_rate: float = REF_RATE / 2
    ceiling_duration: float = 1.0
    refine: int = 2  # bisection steps for the max lossless rate
    procs: int = 2
    relay_low: int = 20_000
    relay_high: int = 32_767
    plot: bool = True
    verbose: bool = True
    ipv6: bool = False  # server, clients and sink on ::1: IPv6 listener and relays
    tick_us: int = 1000  # the generator's pacing period (one burst per tick)
    out_dir: Path = RESULTS


def host_of(opts: Options) -> str:
    return "::1" if opts.ipv6 else "127.0.0.1"


def start_server(name: str, opts: Options, tmp: str) -> ServerProc:
    host = host_of(opts)
    port = free_port(host)
    cpus = {opts.server_cpu} if opts.server_cpu is not None else set()
    cwd = ROOT
    log = Path(tmp, f"{name}.log")
    if name == COTURN:
        argv = coturn_cmd(port, opts.relay_low, opts.relay_high, tmp, host)
    else:
        cfg = Path(tmp, "stunnerd.yaml")
        metrics_port = free_port()  # the offload and forwarder figures are scraped
        cfg.write_text(
            stunner_config(
                port,
                opts.relay_low,
                opts.relay_high,
                opts.transport == "tcp",
                offload=name == OFFLOAD,
                metrics_port=metrics_port,
                host=host,
            )
        )
        template = opts.stunner_cmd or default_stunner_cmd()
        if opts.ref:
            src = Path(tmp, "src")
            if not src.exists():
                src.mkdir()
                archive = subprocess.run(
                    ["git", "-C", str(ROOT), "archive", opts.ref, "stunner_dp"],
                    check=True,
                    capture_output=True,
                ).stdout
                subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            cwd = src  # `python -m` puts the cwd first on sys.path: that copy is imported
            template = opts.stunner_cmd or (
                f"{sys.executable} -m stunner_dp.cli -c {{config}} -l all:WARNING"
            )
        argv = [a.format(config=cfg, port=port) for a in shlex.split(template)]
        if opts.workers:
            argv += ["-u", str(opts.workers)]
    env = dict(os.environ)
    env.pop("STUNNER_DP_FORWARDER", None)  # stunner-dp's default ("auto"), or:
    if name == PYTHON_PATH:
        env["STUNNER_DP_FORWARDER"] = "python"
    server = ServerProc(name, argv, port, cpus, log, cwd, host, env)
    if name != COTURN:
        server.metrics_port = metrics_port
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def offload_unavailable() -> str | None:
    """Why stunner-dp's kernel fast path cannot load on this host (None: it should)."""
    try:
        from stunner_dp.offload import offload_unavailable_reason
    except ImportError as exc:
        return f"stunner_dp.offload: {exc}"
    return offload_unavailable_reason()


def _metric(figures: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the series of ``name`` whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    names = (name, f"{name}_total")  # counters carry the suffix
    return sum(
        v for k, v in figures.items() if k.partition("{")[0] in names and all(w in k for w in want)
    )


def forwarder_figures(server: ServerProc, attempts: int = 5) -> dict[str, float]:
    """stunner_forwarder_* of a stunner-dp server ({} when /metrics did not answer)."""
    m = server.metrics()
    for _ in range(attempts - 1):  # a busy machine may miss one scrape's 5 s
        if m:
            break
        m = server.metrics()
    if not m:
        return {}
    return {
        "active": _metric(m, "stunner_forwarder_active"),
        "tx_packets": _metric(m, "stunner_forwarder_packets", direction="tx"),
        "rx_packets": _metric(m, "stunner_forwarder_packets", direction="rx"),
        "handed_off": _metric(m, "stunner_forwarder_handed_off_packets"),
    }


def offload_figures(server: ServerProc, attempts: int = 5) -> dict[str, float]:
    m = server.metrics()
    for _ in range(attempts - 1):  # a busy machine may miss one scrape's 5 s
        if m:
            break
        time.sleep(0.5)
        m = server.metrics()
    if not m:
        return {"scraped": 0.0}
    return {
        "scraped": 1.0,
        "active": _metric(m, "stunner_offload_active"),
        "entries": _metric(m, "stunner_offload_entries"),
        "install_failures": _metric(m, "stunner_offload_install_failures"),
        "tx_packets": _metric(m, "stunner_offload_packets", direction="tx"),
        "rx_packets": _metric(m, "stunner_offload_packets", direction="rx"),
        "passed_packets": _metric(m, "stunner_offload_passed_packets"),
    }


def run_direct_round(gen: Generator, index: int, opts: Options) -> Round:
    """The baseline: the same generator, clients and paced sweep, straight into the sink."""
    say = print if opts.verbose else (lambda *a, **k: None)
    rnd = Round(DIRECT, index, clients=opts.clients)
    try:
        gen.direct(opts.clients)
        rnd.sweep = gen.sweep(
            opts.rates,
            opts.duration,
            size=opts.size,
            refine=opts.refine,
            raw=True,
            on_result=lambda r: say(f"  [{DIRECT} #{index}] {loadgen.fmt_run(r)}"),
        )
    finally:
        gen.reset()
    return rnd


def run_round(gen: Generator, name: str, index: int, opts: Options, tmp: str) -> Round:
    if name == DIRECT:
        return run_direct_round(gen, index, opts)
    say = print if opts.verbose else (lambda *a, **k: None)
    rnd = Round(name, index)
    server = start_server(name, opts, tmp)
    try:
        addr = (server.host, server.port)
        creds = Creds(USER, PASSWORD)
        tcp = opts.transport == "tcp"
        done, failed, secs = gen.setup(addr, creds, opts.clients, tcp=tcp)
        rnd.clients, rnd.client_errors = done, dict(gen.last_errors)
        say(
            f"  [{name} #{index}] {done} clients ready in {secs:.2f} s"
            + (f", {failed} failed {gen.last_errors}" if gen.last_errors else "")
        )
        if done == 0:
            raise RuntimeError(f"{name}: no client could allocate: {gen.last_errors}")
        if name == OFFLOAD:
            rnd.offload = offload_figures(server)
            o = rnd.offload
            if not o.get("active"):
                say(
                    f"  [{name} #{index}] WARNING: the kernel fast path is not active "
                    f"({o}); this variant measures the Python path (see the server log)"
                )
            else:
                say(f"  [{name} #{index}] offload active, {o['entries']:.0f} entries")

        def show(r: RunResult) -> None:
            say(f"  [{name} #{index}] {loadgen.fmt_run(r)}")

        rnd.sweep = gen.sweep(
            opts.rates,
            opts.duration,
            size=opts.size,
            server_pid=server.pid,
            refine=opts.refine,
            on_result=show,
        )
        rnd.echo = gen.run(
            opts.echo_rate, opts.duration, size=opts.size, echo=True, server_pid=server.pid
        )
        show(rnd.echo)
        if name != COTURN:
            rnd.forwarder = forwarder_figures(server)
            f = rnd.forwarder
            say(
                f"  [{name} #{index}] compiled forwarder "
                + (
                    f"relayed {f.get('tx_packets', 0):,.0f} to peers, "
                    f"{f.get('rx_packets', 0):,.0f} to clients"
                    if f.get("active")
                    else "not active: Python relayed"
                )
            )
        if name == OFFLOAD and rnd.offload.get("scraped"):
            after = offload_figures(server)
            for key in ("tx_packets", "rx_packets", "passed_packets", "install_failures"):
                rnd.offload[key] = after.get(key, 0.0)
            say(
                f"  [{name} #{index}] relayed in the kernel: {after.get('tx_packets', 0):,.0f} "
                f"to peers, {after.get('rx_packets', 0):,.0f} to clients; "
                f"{after.get('passed_packets', 0):,.0f} passed to user space"
            )
        if opts.allocations:
            rnd.alloc = gen.allocation_rate(addr, creds, opts.allocations, server.pid, tcp=tcp)
            a = rnd.alloc
            say(
                f"  [{name} #{index}] {a.allocations} allocations ({a.failed} failed) at "
                f"{a.per_second:.0f}/s, {a.bytes_per_allocation:.0f} B RSS each "
                f"(server {a.server_cpu_pct:.0f} % cpu, generator {a.gen_cpu_pct:.0f} %)"
                + (f" {gen.last_errors}" if gen.last_errors else "")
            )
    finally:
        gen.reset()
        server.stop()
    return rnd


# -- summary ---------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.fmean(vals) if vals else float("nan")


def summarize(rounds: list[Round]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    baseline = {r.index: r.at(REF_RATE) for r in rounds if r.server == DIRECT}
    for name in dict.fromkeys(r.server for r in rounds):
        mine = [r for r in rounds if r.server == name]
        ref = [r.at(REF_RATE) for r in mine]
        ref_ok = [r for r in ref if r is not None]
        added = []  # each round against the direct run of the same alternation
        for rnd, run in zip(mine, ref, strict=True):
            base = baseline.get(rnd.index)
            if run is not None and base is not None and name != DIRECT:
                added.append(run.machine_cpu_us_per_pkt - base.machine_cpu_us_per_pkt)
        out[name] = {
            "cpu_us_per_pkt": _mean([r.cpu_us_per_pkt for r in ref_ok]),
            "machine_us_per_pkt": _mean([r.machine_cpu_us_per_pkt for r in ref_ok]),
            "added_us_per_pkt": _mean(added),
            "other_cpu_pct": _mean([r.other_cpu_pct for r in ref_ok]),
            "max_lossless_pps": _mean([loadgen.max_lossless(r.sweep) for r in mine]),
            "allocs_per_s": _mean([r.alloc.per_second for r in mine if r.alloc]),
            "cpu_us_per_alloc": _mean(
                [r.alloc.server_cpu_us_per_allocation for r in mine if r.alloc]
            ),
            "bytes_per_alloc": _mean([r.alloc.bytes_per_allocation for r in mine if r.alloc]),
            "ow_p50_us": _mean([r.ow_p50_us for r in ref_ok]),
            "ow_p99_us": _mean([r.ow_p99_us for r in ref_ok]),
            "rtt_p50_us": _mean([r.echo.rtt_p50_us for r in mine if r.echo]),
            "rtt_p99_us": _mean([r.echo.rtt_p99_us for r in mine if r.echo]),
            "loss_at_ref_pct": _mean([r.loss_pct for r in ref_ok]),
        }
    return out


_K = REF_RATE // 1000
ROWS = [
    ("cpu_us_per_pkt", f"server CPU per relayed packet at {_K} kpps, server PID (µs)", "{:.2f}"),
    (
        "machine_us_per_pkt",
        f"machine-wide CPU per packet at {_K} kpps, all CPUs, softirq included (µs)",
        "{:.2f}",
    ),
    (
        "added_us_per_pkt",
        f"added CPU per relayed packet at {_K} kpps: machine-wide less direct (µs)",
        "{:.2f}",
    ),
    ("max_lossless_pps", "max lossless rate, loss < 1 % (packets/s)", "{:,.0f}"),
    ("allocs_per_s", "allocations/s (Allocate 401+auth, CreatePermission, ChannelBind)", "{:,.0f}"),
    ("cpu_us_per_alloc", "server CPU per allocation, full sequence (µs)", "{:,.0f}"),
    ("bytes_per_alloc", "memory per allocation (RSS bytes)", "{:,.0f}"),
    ("ow_p50_us", f"one-way latency p50 at {_K} kpps (µs)", "{:,.0f}"),
    ("ow_p99_us", f"one-way latency p99 at {_K} kpps (µs)", "{:,.0f}"),
    ("rtt_p50_us", "round-trip latency p50, echo at {echo} kpps (µs)", "{:,.0f}"),
    ("rtt_p99_us", "round-trip latency p99, echo at {echo} kpps (µs)", "{:,.0f}"),
]


def table(
    summary: dict[str, dict[str, float]],
    ceiling: float,
    rounds: list[Round] | None = None,
    echo_rate: float = REF_RATE / 2,
) -> str:
    names = list(summary)
    ratios = [n for n in STUNNERS if n in summary and COTURN in summary]
    head = ["metric", *names] + [f"{n} / coturn" for n in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, fmt in ROWS:
        cells = [label.format(echo=f"{echo_rate / 1000:g}")]
        for n in names:
            v = summary[n][key]
            cells.append("n/a" if math.isnan(v) else fmt.format(v))
        for n in ratios:
            a, b = summary[n][key], summary[COTURN][key]
            cells.append(f"{a / b:.2f}" if b and not math.isnan(a / b) else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    if rounds:
        lines.append(
            "\nper round (server #round: max lossless pps; at "
            f"{_K} kpps: server-PID / machine-wide CPU µs per packet, one-way p99 µs, other "
            "processes' CPU %; allocations/s):"
        )
        for r in rounds:
            ref = r.at(REF_RATE)
            lines.append(
                f"  {r.server} #{r.index}: {loadgen.max_lossless(r.sweep):,.0f}; "
                + (
                    f"{ref.cpu_us_per_pkt:.2f} / {ref.machine_cpu_us_per_pkt:.2f}, "
                    f"{ref.ow_p99_us:,.0f}, {ref.other_cpu_pct:.0f} %; "
                    if ref
                    else "n/a; "
                )
                + (f"{r.alloc.per_second:,.0f}" if r.alloc else "n/a")
                + (
                    f"; kernel relayed {r.offload.get('tx_packets', 0):,.0f} to peers, "
                    f"{r.offload.get('rx_packets', 0):,.0f} to clients"
                    if r.offload.get("active")
                    else ("; OFFLOAD NOT ACTIVE" if r.server == OFFLOAD else "")
                )
            )
    lines.append(
        f"\ngenerator ceiling (unpaced, plain UDP sink, no server): {ceiling:,.0f} packets/s"
    )
    direct = summary.get(DIRECT, {}).get("max_lossless_pps", float("nan"))
    if not math.isnan(direct):
        lines.append(f"direct ceiling (the paced sweep, no server): {direct:,.0f} packets/s")
    limit = direct if not math.isnan(direct) and direct > 0 else ceiling
    for n in names:
        if n != DIRECT and summary[n]["max_lossless_pps"] >= 0.9 * limit:
            lines.append(
                f"note: {n}'s max lossless rate is within 10 % of the generator's direct "
                "ceiling: a lower bound, the generator's limit"
            )
    busy = [n for n in names if summary[n]["other_cpu_pct"] >= 5]
    if busy:
        lines.append(
            "note: other processes used CPU during the runs ("
            + ", ".join(f"{n} {summary[n]['other_cpu_pct']:.0f} %" for n in busy)
            + " of a CPU at the reference rate); the machine-wide figures leave it out, but not "
            "the softirq it caused"
        )
    return "\n".join(lines)


def plot(rounds: list[Round], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e .[bench]): no plot")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {STUNNER: "tab:blue", OFFLOAD: "tab:green", COTURN: "tab:orange", DIRECT: "gray"}
    for rnd in rounds:
        xs = [r.offered_pps / 1000 for r in rnd.sweep]
        c = colors.get(rnd.server, "tab:gray")
        lbl = f"{rnd.server} #{rnd.index}"
        ax1.plot(
            xs, [r.delivered_pps / 1000 for r in rnd.sweep], "o-", color=c, label=lbl, alpha=0.8
        )
        ax2.plot(
            xs,
            [r.ow_p99_us / 1000 for r in rnd.sweep],
            "o-",
            color=c,
            label=f"{lbl} p99",
            alpha=0.8,
        )
        ax2.plot(
            xs,
            [r.ow_p50_us / 1000 for r in rnd.sweep],
            "x--",
            color=c,
            label=f"{lbl} p50",
            alpha=0.6,
        )
    top = max((r.offered_pps / 1000 for rnd in rounds for r in rnd.sweep), default=1)
    ax1.plot([0, top], [0, top], ":", color="gray", label="lossless")
    ax1.set(xlabel="offered (kpps)", ylabel="delivered (kpps)", title="relayed rate, one way")
    ax2.set(xlabel="offered (kpps)", ylabel="one-way latency (ms)", title="latency", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main ------------------------------------------------------------------------------------------


def run(opts: Options) -> dict[str, Any]:
    """The whole comparison; returns every figure (also written as JSON under out_dir)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", opts.ref or "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if opts.ref:
        opts.ref = commit  # resolved once: HEAD may move during the run
    say = print if opts.verbose else (lambda *a, **k: None)
    servers = list(opts.servers)
    if COTURN in servers and not shutil.which("turnserver"):
        say("turnserver is not installed: stunner-dp only")
        servers.remove(COTURN)
    if OFFLOAD in servers:
        why = offload_unavailable()
        if why:
            say(f"the kernel fast path cannot load here ({why}): no offload variant")
            servers.remove(OFFLOAD)
    if opts.direct:
        servers.insert(0, DIRECT)
    rounds: list[Round] = []
    t0 = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="stunner-bench-") as tmp,
        Generator(opts.procs, opts.gen_cpus, host_of(opts), opts.tick_us) as gen,
    ):
        ceil = gen.ceiling(size=opts.size, duration=opts.ceiling_duration)
        say(
            f"generator ceiling: {ceil.delivered_pps:,.0f} pps into a plain UDP sink "
            f"({opts.procs} sender processes on CPU {opts.gen_cpus})"
        )
        gen.reset()
        if not opts.rates:
            opts.rates = loadgen.default_rates(ceil.delivered_pps, opts.quick)
            if REF_RATE not in opts.rates:
                opts.rates = sorted({*opts.rates, REF_RATE})
        try:
            for i in range(opts.rounds):
                for name in servers:  # A B A B ...
                    rounds.append(run_round(gen, name, i + 1, opts, tmp))
        finally:
            _stop_all()
            logs = {p.name: p.read_text(errors="replace")[-2000:] for p in Path(tmp).glob("*.log")}
    summary = summarize(rounds)
    text = table(summary, ceil.delivered_pps, rounds, opts.echo_rate)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    png = plot(rounds, opts.out_dir / f"compare-{stamp}.png") if opts.plot else None
    result = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "stunner_dp": f"{commit} (git archive)" if opts.ref else f"working tree at {commit}",
        "family": "IPv6 (::1)" if opts.ipv6 else "IPv4 (127.0.0.1)",
        "tick_us": opts.tick_us,
        "seconds": time.monotonic() - t0,
        "ceiling_pps": ceil.delivered_pps,
        "summary": summary,
        "table": text,
        "rounds": [r.to_dict() for r in rounds],
        "rates": opts.rates,
        "plot": str(png) if png else None,
        "server_logs_tail": logs,
    }
    (opts.out_dir / f"compare-{stamp}.json").write_text(json.dumps(result, indent=1, default=str))
    say(f"\nstunner-dp: {result['stunner_dp']}, over {result['family']}\n" + text)
    if png:
        say(f"\nplot: {png}")
    say(f"raw figures: {opts.out_dir / f'compare-{stamp}.json'} ({result['seconds']:.0f} s)")
    return result


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        description="Benchmark stunner-dp against coturn (see the README, Performance)."
    )
    p.add_argument("--quick", action="store_true", help="about one minute")
    p.add_argument(
        "--only", choices=("stunner", "python", "coturn", "offload"), help="benchmark one server"
    )
    p.add_argument(
        "--python-path",
        action="store_true",
        help="add stunner-dp with the compiled forwarder off (STUNNER_DP_FORWARDER=python)",
    )
    p.add_argument(
        "--offload",
        action="store_true",
        help="add stunner-dp with admin.offload_engine: TC (the kernel fast path; needs root)",
    )
    p.add_argument(
        "--no-direct",
        action="store_true",
        help="skip the direct client->peer baseline (no added-CPU figures then)",
    )
    p.add_argument(
        "--server-cmd",
        default="",
        help="stunner-dp's command; {config} and {port} are filled in "
        "(default: .venv/bin/stunnerd -c {config} -l all:WARNING)",
    )
    p.add_argument(
        "--ref",
        default="",
        help="run stunner-dp as of this git commit (e.g. HEAD: the last commit, not the "
        "working tree)",
    )
    p.add_argument("--workers", type=int, default=0, help="stunnerd -u N (worker processes)")
    p.add_argument("--rounds", type=int, help="alternations A B (default 2)")
    p.add_argument("--duration", type=float, help="seconds per rate step (default 3, quick 1)")
    p.add_argument("--rates", default="", help="comma-separated packets/s, e.g. 5000,20000")
    p.add_argument("--clients", type=int, default=100, help="traffic allocations")
    p.add_argument(
        "--allocations",
        type=int,
        help="allocations for the alloc/s + memory test (default 10000, quick 2000; 0 skips it)",
    )
    p.add_argument("--size", type=int, default=160, help="payload bytes per packet")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--gen-cpus", default="1", help="CPUs for the generator, e.g. 1 or 1,2")
    p.add_argument("--procs", type=int, default=2, help="generator sender processes")
    p.add_argument("--relay-range", default="20000-32767", help="relay ports LOW-HIGH")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--ipv6",
        action="store_true",
        help="server, clients and peer sink on ::1 (IPv6 listener and relays)",
    )
    p.add_argument(
        "--tick-us",
        type=int,
        default=1000,
        help="the generator's pacing period in µs (one burst per period; default 1000): "
        "how long a server sleeps between wake-ups at the same rate",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="where plot and JSON go")
    a = p.parse_args(argv)
    low, _, high = a.relay_range.partition("-")
    servers = {
        "stunner": (STUNNER,),
        "coturn": (COTURN,),
        "offload": (OFFLOAD,),
        "python": (PYTHON_PATH,),
        None: (STUNNER, COTURN),
    }[a.only]
    if a.python_path and PYTHON_PATH not in servers:  # after stunner-dp, before coturn
        servers = tuple(
            n for n in (STUNNER, PYTHON_PATH, OFFLOAD, COTURN) if n in servers or n == PYTHON_PATH
        )
    if a.offload and OFFLOAD not in servers:  # stunner-dp, then offloaded, then coturn
        servers = tuple(
            n for n in (STUNNER, PYTHON_PATH, OFFLOAD, COTURN) if n in servers or n == OFFLOAD
        )
    return Options(
        quick=a.quick,
        servers=servers,
        direct=not a.no_direct,
        rounds=a.rounds if a.rounds is not None else 2,
        refine=1 if a.quick else 2,
        duration=a.duration if a.duration is not None else (1.0 if a.quick else 3.0),
        rates=[float(r) for r in a.rates.split(",") if r],
        clients=a.clients,
        allocations=a.allocations if a.allocations is not None else (2_000 if a.quick else 10_000),
        size=a.size,
        transport=a.transport,
        workers=a.workers,
        stunner_cmd=a.server_cmd,
        ref=a.ref,
        server_cpu=a.server_cpu,
        gen_cpus=[int(c) for c in a.gen_cpus.split(",") if c],
        procs=a.procs,
        relay_low=int(low),
        relay_high=int(high),
        plot=not a.no_plot,
        out_dir=a.out,
        ipv6=a.ipv6,
        tick_us=a.tick_us,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # SIGTERM unwinds like ^C: the servers are stopped by PID on the way out (atexit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(opts)
    except KeyboardInterrupt:
        return 130
    finally:
        _stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
