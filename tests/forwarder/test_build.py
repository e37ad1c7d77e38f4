"""The shipped libturn_forwarder.so is exactly what scripts/build-forwarder makes from the
source, and it is what the loader expects: a small x86-64 ELF shared object exporting the
fwd_* API, needing nothing but the C library, with a non-executable stack."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "stunner_dp" / "forwarder" / "libturn_forwarder.so"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
API = {
    "fwd_abi", "fwd_new", "fwd_free", "fwd_run", "fwd_stop", "fwd_watch", "fwd_unwatch",
    "fwd_add", "fwd_remove", "fwd_counters", "fwd_totals",
}  # fmt: skip
EM_X86_64, ET_DYN = 62, 3  # e_machine, e_type
SHT_DYNSYM, SHT_DYNAMIC, DT_NEEDED = 11, 6, 1
PT_GNU_STACK, PF_X = 0x6474E551, 1


def test_shipped_object_matches_a_rebuild(tmp_path: Path) -> None:
    if shutil.which(os.environ.get("CLANG", "clang")) is None:
        if IN_CI:
            pytest.fail("clang missing in CI: apt-get install clang libc6-dev")
        pytest.skip("clang not installed (apt-get install clang libc6-dev)")
    out = tmp_path / "libturn_forwarder.so"
    subprocess.run([str(REPO / "scripts" / "build-forwarder"), str(out)], check=True,
                   timeout=120, capture_output=True)  # fmt: skip
    assert out.read_bytes() == SHIPPED.read_bytes(), (
        "stunner_dp/forwarder/libturn_forwarder.so is stale: run scripts/build-forwarder and "
        "commit it"
    )


class Elf:
    """Just enough of an ELF64 little-endian reader: sections, dynamic symbols, DT_NEEDED."""

    def __init__(self, data: bytes) -> None:
        assert data[:4] == b"\x7fELF", "not an ELF file"
        assert data[4] == 2 and data[5] == 1, "not ELF64 little-endian"
        self.data = data
        (self.type, self.machine) = struct.unpack_from("<HH", data, 16)
        phoff, shoff = struct.unpack_from("<QQ", data, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
        self.sections = [
            struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
        ]
        self.segments = [
            struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)
        ]

    def _string(self, table: int, offset: int) -> str:
        start = self.sections[table][4] + offset
        return self.data[start : self.data.index(b"\0", start)].decode()

    def exported(self) -> set[str]:
        """Global symbols the object defines (st_shndx != SHN_UNDEF) in .dynsym."""
        names = set()
        for sh in self.sections:
            if sh[1] != SHT_DYNSYM:
                continue
            offset, size, link, entsize = sh[4], sh[5], sh[6], sh[9]
            for i in range(size // entsize):
                name, info, _other, shndx = struct.unpack_from(
                    "<IBBH", self.data, offset + i * entsize
                )
                if shndx != 0 and info >> 4 in (1, 2):  # STB_GLOBAL, STB_WEAK
                    names.add(self._string(link, name))
        return names

    def needed(self) -> list[str]:
        out = []
        for sh in self.sections:
            if sh[1] != SHT_DYNAMIC:
                continue
            offset, size, link = sh[4], sh[5], sh[6]
            for i in range(size // 16):
                tag, value = struct.unpack_from("<qQ", self.data, offset + i * 16)
                if tag == DT_NEEDED:
                    out.append(self._string(link, value))
        return out


def test_object_is_a_small_x86_64_shared_object_with_the_api() -> None:
    data = SHIPPED.read_bytes()
    elf = Elf(data)
    assert (elf.type, elf.machine) == (ET_DYN, EM_X86_64)  # BUILT_FOR in stunner_dp/forwarder
    missing = API - elf.exported()
    assert not missing, missing
    # the C library only (libpthread is a stub in glibc >= 2.34, still named by older links)
    assert set(elf.needed()) <= {"libc.so.6", "libpthread.so.0"}, elf.needed()
    [stack] = [p for p in elf.segments if p[0] == PT_GNU_STACK]
    assert not stack[1] & PF_X, "executable stack"  # -z noexecstack
    assert b".debug" not in data  # -g0 and -s: nothing but code and what loading needs
    assert len(data) < 100_000


def test_the_loader_finds_the_abi_it_wants() -> None:
    from stunner_dp import forwarder

    if forwarder.forwarder_unavailable_reason() is not None:
        pytest.skip(f"cannot load here: {forwarder.forwarder_unavailable_reason()}")
    assert forwarder.object_path() == SHIPPED  # the package data, not another copy
    assert forwarder.ABI == 1
