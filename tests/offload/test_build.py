"""The shipped turn_offload.bpf.o is exactly what scripts/build-bpf makes from the source."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "stunner_dp" / "offload" / "turn_offload.bpf.o"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_shipped_object_matches_a_rebuild(tmp_path: Path) -> None:
    if shutil.which("clang") is None or shutil.which("llvm-strip") is None:
        if IN_CI:
            pytest.fail("clang/llvm-strip missing in CI: apt-get install clang llvm libbpf-dev")
        pytest.skip("clang or llvm-strip not installed (apt-get install clang llvm libbpf-dev)")
    out = tmp_path / "turn_offload.bpf.o"
    subprocess.run([str(REPO / "scripts" / "build-bpf"), str(out)], check=True, timeout=120,
                   capture_output=True)
    assert out.read_bytes() == SHIPPED.read_bytes(), (
        "stunner_dp/offload/turn_offload.bpf.o is stale: run scripts/build-bpf and commit it")


def test_object_is_small_bpf_elf_with_btf() -> None:
    data = SHIPPED.read_bytes()
    assert data[:4] == b"\x7fELF"
    assert int.from_bytes(data[18:20], "little") == 247  # EM_BPF
    assert b".BTF" in data and b".BTF.ext" in data  # llvm-strip -g keeps BTF (maps, CO-RE)
    assert len(data) < 200_000
