"""The container image, built from our Dockerfile and run for real (marker `image`, slow).

tests/image/build-image.sh makes a Debian bookworm base with debootstrap (cached in a private
buildah storage under /var/cache/stunner-dp-image), then builds the Dockerfile on it with
`buildah bud --isolation chroot --storage-driver vfs` and the `pip_cert` build secret. The image
then runs under `buildah run --isolation chroot --network host` (its ENTRYPOINT, with the test's
config and loopback ports) and is checked from the outside: health, TURN relaying with coturn's
turnutils_uclient (zero loss), metrics, the user it runs as, and a clean SIGTERM.

Why `buildah run` and not podman: podman's OCI runtimes (crun, runc) set the container's
rlimits, and this sandbox forbids that (setrlimit in the container init fails with EPERM: the
machine withholds CAP_SYS_RESOURCE); chroot isolation needs no namespaces, cgroups or rlimits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.uclient import assert_no_loss, parse_summary

from stunner_dp import stun
from stunner_dp.testing import free_port, relay_window

pytestmark = pytest.mark.image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("STUNNER_DP_IMAGE_CACHE", "/var/cache/stunner-dp-image"))
RUNROOT = os.environ.get("STUNNER_DP_IMAGE_RUNROOT", "/run/stunner-dp-image")
IMAGE = "localhost/stunner-dp:test"
BUILD_TIMEOUT = 1800  # seconds: the first run debootstraps the base (about a minute here)
START_TIMEOUT = 30.0
LOCK_TIMEOUT = 1800.0  # seconds to wait for another run of this module
USERNAME, PASSWORD = "image-user", "image-pass"
TEST_CONFIG = "/etc/stunner/test.yaml"


def buildah_cmd(*args: str) -> list[str]:
    root = ["--root", str(CACHE / "storage"), "--runroot", RUNROOT, "--storage-driver", "vfs"]
    return ["buildah", *root, *args]


def buildah_proc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        buildah_cmd(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


def buildah(*args: str, timeout: float = 300, check: bool = True) -> str:
    proc = buildah_proc(*args, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"buildah {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr}"
        )
    return proc.stdout


@dataclass
class Built:
    image: str
    size: str
    config: dict[str, Any]  # the image's Docker-format config (User, Entrypoint, Cmd, ...)
    labels: dict[str, str]


@pytest.fixture(scope="module")
def image_lock() -> Iterator[None]:
    """Runs of this module (by several engineers, or CI) share the buildah storage and the
    image tag: one at a time. Waits, bounded, for another run to finish."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the image test needs Linux and root (debootstrap, buildah vfs storage)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another image test run held {CACHE / 'lock'} too long")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def built(image_lock: None) -> Built:
    proc = subprocess.run(
        ["bash", str(HERE / "build-image.sh"), IMAGE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        env={**os.environ, "STUNNER_DP_IMAGE_LOCKED": "1"},
    )
    if proc.returncode == 77:
        reason = next(
            (ln[5:].strip() for ln in proc.stderr.splitlines() if ln.startswith("SKIP:")),
            proc.stderr.strip(),
        )
        pytest.skip(f"cannot build the image on this machine: {reason}")
    assert proc.returncode == 0, f"image build failed:\n{proc.stderr[-4000:]}"
    size = proc.stdout.strip().splitlines()[-1].split(maxsplit=1)[1]
    info = json.loads(buildah("inspect", "--type", "image", IMAGE))
    config = info["Docker"]["config"]
    return Built(IMAGE, size, config, config.get("Labels") or {})


# --- the image's metadata ------------------------------------------------------------------


def test_image_metadata(built: Built) -> None:
    cfg = built.config
    assert cfg["Entrypoint"] == ["stunnerd"]
    assert cfg["Cmd"][:2] == ["-c", "/etc/stunner/stunnerd.yaml"]
    assert set(cfg["ExposedPorts"]) == {"3478/udp", "3478/tcp", "8080/tcp", "8086/tcp"}
    user = cfg["User"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root uid"
    hc = cfg["Healthcheck"]["Test"]
    assert hc[0] == "CMD" and "/live" in " ".join(hc)
    for key in ("title", "description", "version", "revision", "licenses"):
        assert built.labels.get(f"org.opencontainers.image.{key}"), key
    print(f"\nimage {built.image}: {built.size}")


def test_image_has_no_compiler_or_pip(built: Built) -> None:
    ctr = buildah("from", "--quiet", built.image).strip()
    try:
        script = (
            "import shutil, sys, importlib.util as u; "
            "print(shutil.which('gcc'), shutil.which('cc'), u.find_spec('pip'), sys.prefix)"
        )
        out = buildah("run", "--isolation", "chroot", ctr, "--", "python3", "-c", script)
        assert out.split() == ["None", "None", "None", "/opt/venv"], out
    finally:
        buildah("rm", ctr, check=False)


def test_default_config_in_image_is_valid(built: Built) -> None:
    """The default CMD's config passes stunnerd's own validation inside the image (dry run)."""
    ctr = buildah("from", "--quiet", built.image).strip()
    try:
        args = [*built.config["Entrypoint"], "-d", *built.config["Cmd"]]
        out = buildah("run", "--isolation", "chroot", ctr, "--", *args)
        assert yaml.safe_load(out)["version"] == "v1"
    finally:
        buildah("rm", ctr, check=False)


# --- the kernel fast path's needs -----------------------------------------------------------

OFFLOAD_PROBE = """
import json
from stunner_dp.offload import libbpf, offload_unavailable_reason
try:
    libbpf.lib()
    lib = "loaded"
except libbpf.OffloadError as e:
    lib = e.reason
reason = offload_unavailable_reason()
attached = None
if reason is None:
    from stunner_dp.offload import OffloadEngine
    try:
        with OffloadEngine.load(["lo"]) as engine:
            attached = [a.mode for a in engine.attachments]
    except libbpf.OffloadError as e:
        reason = e.reason
print(json.dumps({"libbpf": lib, "reason": reason, "attached": attached}))
"""
FAST_PATH_CAPS = ("CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON")


def offload_probe(built: Built, *run_args: str, from_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """OFFLOAD_PROBE run inside a fresh container of the image (`from_args` for buildah from,
    `run_args` for buildah run)."""
    ctr = buildah("from", "--quiet", *from_args, built.image).strip()
    try:
        out = buildah(
            "run", "--isolation", "chroot", "--network", "host", *run_args, ctr, "--",
            "python3", "-c", OFFLOAD_PROBE,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result
    finally:
        buildah("rm", ctr, check=False)


def test_image_carries_libbpf_for_the_kernel_fast_path(built: Built) -> None:
    """As the image runs by default (its non-root user, no capabilities): libbpf.so.1 loads, and
    the reason the offload cannot load is the missing privilege, nothing the image lacks."""
    probe = offload_probe(built)
    print(f"\nunprivileged, the image says: {probe['reason']}")
    assert probe["libbpf"] == "loaded", probe
    reason = probe["reason"] or ""
    assert reason.startswith("not permitted") and "libbpf" not in reason, probe


def fast_path_caps() -> list[str]:
    from stunner_dp.offload import offload_unavailable_reason

    if (host := offload_unavailable_reason()) is not None:
        pytest.skip(f"this host cannot load the kernel fast path at all: {host}")
    # added to buildah's default set (which has no CAP_SYS_ADMIN); uid 0, whose bounding set
    # keeps them across the exec
    return ["--user", "0:0", *(arg for cap in FAST_PATH_CAPS for arg in ("--cap-add", cap))]


def test_image_loads_the_kernel_fast_path_with_its_capabilities(built: Built) -> None:
    """Given the three capabilities deploy/ grants (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON) and a
    seccomp policy that lets bpf() through, the program loads and attaches on lo inside the
    image; it is detached when the probe closes its engine (a tcx link dies with its process
    too). Seccomp is the runtime's policy, not the image's: see the next test."""
    unconfined = ("--security-opt", "seccomp=unconfined")
    probe = offload_probe(built, *fast_path_caps(), from_args=unconfined)
    assert probe["reason"] is None and probe["attached"] == ["tcx"], probe


def test_a_seccomp_profile_that_refuses_bpf_is_named(built: Built) -> None:
    """buildah's default seccomp profile (containers-common's, as CRI-O's RuntimeDefault) allows
    bpf() only with CAP_SYS_ADMIN: with the three capabilities and that profile the load is
    refused, and the reason says a seccomp filter may be why (the capabilities are there)."""
    probe = offload_probe(built, *fast_path_caps())
    if probe["reason"] is None:
        pytest.skip("this buildah's default seccomp profile lets bpf() through with CAP_BPF")
    assert probe["libbpf"] == "loaded", probe
    assert "seccomp" in probe["reason"], probe


# --- the image running ----------------------------------------------------------------------


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    log: Path
    turn_port: int
    health_port: int
    metrics_port: int
    container: str
    startup_s: float
    ready_s: float | None
    inner_pid: int = 0
    notes: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def stun_binding_ok(port: int) -> bool:
    tid = os.urandom(12)
    req = stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, tid, [])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(req, ("127.0.0.1", port))
        try:
            data = s.recv(2048)
        except OSError:
            return False
    return stun.parse_message(data).transaction_id == tid


def find_inner_pid(outer: int) -> int:
    """The stunnerd process under `buildah run` (buildah -> chroot-runtime -> chroot-exec ->
    python): the descendant of `outer` whose command line runs stunnerd under /opt/venv."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    todo, seen = [outer], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            argv = []
        if len(argv) > 1 and argv[0].endswith(b"python3") and argv[1].endswith(b"/stunnerd"):
            return pid
        todo.extend(children.get(pid, []))
    return 0


def write_test_config(path: Path, turn: int, health: int, metrics: int) -> None:
    lo, hi = relay_window()
    listener = {
        "address": "127.0.0.1",
        "port": turn,
        "min_relay_port": lo,
        "max_relay_port": hi,
        "routes": ["loopback"],
    }
    config = {
        "version": "v1",
        "admin": {
            "name": "image-test",
            "loglevel": "all:INFO",
            "metrics_endpoint": f"http://127.0.0.1:{metrics}/metrics",
            "healthcheck_endpoint": f"http://127.0.0.1:{health}",
        },
        "auth": {
            "type": "static",
            "realm": "stunner.l7mp.io",
            "credentials": {"username": USERNAME, "password": PASSWORD},
        },
        "listeners": [
            {"name": "udp-listener", "protocol": "TURN-UDP", **listener},
            {"name": "tcp-listener", "protocol": "TURN-TCP", **listener},
        ],
        "clusters": [
            {"name": "loopback", "type": "STATIC", "protocol": "UDP", "endpoints": ["127.0.0.0/8"]}
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@contextlib.contextmanager
def run_image(built: Built, tmp: Path) -> Iterator[Running]:
    """A new container of the image, running stunnerd on the test's loopback ports until the
    block ends (then killed by PID if still running, and removed)."""
    turn, health, metrics = free_port(), free_port(udp=False), free_port(udp=False)
    cfg = tmp / "test.yaml"
    write_test_config(cfg, turn, health, metrics)
    ctr = buildah("from", "--quiet", built.image).strip()
    buildah("copy", "--chown", "0:0", ctr, str(cfg), TEST_CONFIG)
    # The image's own ENTRYPOINT, with the test's config instead of the default CMD.
    argv = [*built.config["Entrypoint"], "-c", TEST_CONFIG, "--grace-period", "20"]
    log = tmp / "stunnerd.log"
    with log.open("wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            buildah_cmd("run", "--isolation", "chroot", "--network", "host", ctr, "--", *argv),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    run = Running(proc, log, turn, health, metrics, ctr, startup_s=0.0, ready_s=None)
    try:
        deadline = t0 + START_TIMEOUT
        while not stun_binding_ok(turn):
            assert proc.poll() is None, f"stunnerd exited early:\n{run.log_text()}"
            assert time.monotonic() < deadline, f"no STUN answer in time:\n{run.log_text()}"
            time.sleep(0.05)
        run.startup_s = time.monotonic() - t0
        while time.monotonic() < deadline:
            try:
                if http_get(health, "/ready", timeout=0.5)[0] == 200:
                    run.ready_s = time.monotonic() - t0
                    break
            except OSError:
                pass
            time.sleep(0.05)
        run.inner_pid = find_inner_pid(proc.pid)
        print(f"\nstart-up: STUN answers after {run.startup_s:.2f} s, /ready after {run.ready_s} s")
        yield run
    finally:
        if proc.poll() is None:
            if run.inner_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.inner_pid, signal.SIGKILL)
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        buildah("rm", ctr, check=False)


@pytest.fixture(scope="module")
def running(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with run_image(built, tmp_path_factory.mktemp("image-run")) as run:
        yield run


def test_runs_as_non_root_inside_the_image(running: Running) -> None:
    pid = running.inner_pid
    assert pid, "the stunnerd process under buildah run was not found"
    status = (Path("/proc") / str(pid) / "status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M)
    assert uids is not None
    assert all(int(u) == 10001 for u in uids.groups()), status
    # its root is the container's file system, not the host's
    assert os.readlink(f"/proc/{pid}/root") != "/"
    assert os.path.exists(f"/proc/{pid}/root/opt/venv/bin/stunnerd")


def test_live_and_ready(running: Running) -> None:
    code, body = http_get(running.health_port, "/live")
    assert code == 200 and json.loads(body) == {}, body
    code, body = http_get(running.health_port, "/ready")
    assert code == 200, body
    assert json.loads(body) == {"status": 200, "message": "READY"}


def test_healthcheck_command_passes(built: Built, running: Running) -> None:
    """The image's HEALTHCHECK command, run inside the image, against a live /live.
    (It probes 127.0.0.1:8086, so it is pointed at the test's health port.)"""
    test = built.config["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    cmd = [a.replace(":8086/", f":{running.health_port}/") for a in test[1:]]
    ctr = buildah("from", "--quiet", built.image).strip()
    try:
        ok = buildah_proc("run", "--isolation", "chroot", "--network", "host", ctr, "--", *cmd)
        assert ok.returncode == 0, ok.stderr
        # and it fails when nothing answers
        bad = [a.replace(":8086/", f":{free_port(udp=False)}/") for a in test[1:]]
        proc = buildah_proc("run", "--isolation", "chroot", "--network", "host", ctr, "--", *bad)
        assert proc.returncode != 0
    finally:
        buildah("rm", ctr, check=False)


@pytest.fixture
def turnutils_peer() -> Iterator[int]:
    if not shutil.which("turnutils_peer") or not shutil.which("turnutils_uclient"):
        pytest.skip("coturn's turnutils_uclient/turnutils_peer are not installed (package coturn)")
    port = free_port(tcp=False)
    peer = subprocess.Popen(
        ["turnutils_peer", "-L", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        assert peer.poll() is None
        yield port
    finally:
        peer.terminate()
        peer.wait(timeout=10)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_turnutils_uclient_zero_loss(running: Running, turnutils_peer: int, transport: str) -> None:
    # -s: Send indications (without it uclient binds channels above 0x4FFF, the RFC 5766
    # range); -c: no extra RTCP allocations (uclient leaves those to expire).
    args = ["-s", "-c", "-u", USERNAME, "-w", PASSWORD, "-p", str(running.turn_port)]
    args += ["-e", "127.0.0.1", "-r", str(turnutils_peer), "-n", "100", "-m", "2", "-l", "200"]
    args += ["-z", "5", *(["-t"] if transport == "tcp" else []), "127.0.0.1"]
    proc = subprocess.run(
        ["turnutils_uclient", *args], capture_output=True, text=True, timeout=120, check=False
    )
    out = proc.stdout + proc.stderr
    summary = parse_summary(out, out[-3000:])
    assert summary.sent == 200, summary.output
    assert_no_loss(summary, 200)


def test_channels_are_relayed_by_the_compiled_forwarder(
    running: Running, turnutils_peer: int
) -> None:
    """The image's stunnerd runs the compiled forwarder (the shared object loads on the image's
    C library, as its non-root user): uclient's channels (no -s) lose nothing, and
    stunner_forwarder_packets grows by what they relayed."""

    def forwarded() -> tuple[float, float]:
        code, text = http_get(running.metrics_port, "/metrics")
        assert code == 200, f"/metrics: {code} {text[:500]}"
        active = sum(metric_values(text, "stunner_forwarder_active").values())
        return active, sum(metric_values(text, "stunner_forwarder_packets_total").values())

    active, before = forwarded()
    assert active == 1, running.log_text()[-3000:]
    args = ["-c", "-u", USERNAME, "-w", PASSWORD, "-p", str(running.turn_port)]
    args += ["-e", "127.0.0.1", "-r", str(turnutils_peer), "-n", "100", "-m", "2", "-l", "200"]
    proc = subprocess.run(
        ["turnutils_uclient", *args, "-z", "5", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    summary = parse_summary(out, out[-3000:])
    assert summary.sent == 200, summary.output
    assert_no_loss(summary, 200)
    _, after = forwarded()
    assert after - before >= 400, (before, after)  # 200 to the peer, 200 echoed back


def metric_values(text: str, name: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


async def release(client: Any) -> None:
    """Refresh with LIFETIME 0: the allocation ends now."""
    resp = await client.request(stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, bytes(4))])
    assert resp.cls == stun.CLASS_SUCCESS, resp


def turn_client(port: int) -> Any:
    from helpers.turnclient import RawTurnClient

    return RawTurnClient(("127.0.0.1", port))


async def test_metrics_show_allocations(running: Running) -> None:
    async def active() -> float:
        code, text = await asyncio.to_thread(http_get, running.metrics_port, "/metrics")
        assert code == 200, f"/metrics: {code} {text[:500]}\n{running.log_text()[-3000:]}"
        values = metric_values(text, "stunner_allocations_active")
        assert values, text[:3000]
        return sum(values.values())

    before = await active()  # turnutils_uclient leaves allocations behind to expire
    async with turn_client(running.turn_port) as client:
        await client.allocate(USERNAME, PASSWORD)
        try:
            assert await active() == before + 1
            code, text = await asyncio.to_thread(http_get, running.metrics_port, "/metrics")
            assert code == 200, f"/metrics: {code} {text[:500]}\n{running.log_text()[-3000:]}"
            rx = metric_values(text, "stunner_listener_packets_total")
            assert any('name="udp-listener"' in k and 'direction="rx"' in k for k in rx), rx
        finally:
            await release(client)
        assert await active() == before


async def test_sigterm_drains_then_stops(built: Built, tmp_path: Path) -> None:
    """SIGTERM to stunnerd in a fresh container while a client holds its only allocation:
    /ready turns 503 and the process stays up (draining); once the allocation is released it
    exits 0, and so does `buildah run`. (A fresh container: turnutils_uclient leaves allocations
    behind that would hold the drain until they expire.)"""
    with run_image(built, tmp_path) as running:
        await _sigterm_drain(running)


async def _sigterm_drain(running: Running) -> None:
    assert running.inner_pid
    async with turn_client(running.turn_port) as client:
        await client.allocate(USERNAME, PASSWORD)
        os.kill(running.inner_pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:
            code, body = await asyncio.to_thread(http_get, running.health_port, "/ready")
            if code == 503:
                break
            assert time.monotonic() < deadline, f"/ready still {code} after SIGTERM: {body}"
            await asyncio.sleep(0.1)
        assert running.proc.poll() is None, "exited although an allocation was still open"
        await release(client)
    rc = await asyncio.to_thread(running.proc.wait, 15)
    log = running.log_text()
    assert rc == 0, log[-3000:]
    assert "server stopped" not in log, "an allocation was cut off at exit"
