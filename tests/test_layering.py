"""The arrows of docs/architecture.md: `stun` and `turn` are sans-IO. Neither may import
asyncio, sockets or the clock, nor the network shell above them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stunner_dp"
FORBIDDEN = {"asyncio", "socket", "selectors", "time", "uvloop", "aiohttp"}
SHELL = ("stunner_dp.net", "stunner_dp.observe", "stunner_dp.daemon", "stunner_dp.client")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "path",
    sorted([*PACKAGE.joinpath("stun").glob("*.py"), *PACKAGE.joinpath("turn").glob("*.py")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_sans_io_modules_import_no_io(path: Path) -> None:
    for name in imported_modules(path):
        assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
        assert not name.startswith(SHELL), f"{path.name} imports the shell: {name}"


def test_importing_the_codec_starts_no_event_loop_machinery() -> None:
    code = (
        "import sys, stunner_dp.stun, stunner_dp.turn.server; "
        "print(sorted(m for m in ('asyncio', 'socket', 'uvloop') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
