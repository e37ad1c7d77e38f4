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


# -- the Server's state machine is reached only through its verbs ---------------------------------

ROOT = PACKAGE.parent


def _turn_attributes(path: Path) -> list[tuple[int, str]]:
    """(line, use) of every `<expr>.turn` in the module that is not a module path
    (`stunner_dp.turn.server`): use is "read", "write" (it, or an attribute or item of it, is
    assigned or deleted) or "call" (a method of it is called)."""
    tree = ast.parse(path.read_text())
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr == "turn"):
            continue
        root = node.value
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id == "stunner_dp":
            continue  # the package stunner_dp.turn
        use = "write" if isinstance(node.ctx, ast.Store | ast.Del) else "read"
        outer: ast.AST = node
        while use == "read":
            parent = parents.get(outer)
            if isinstance(parent, ast.Call) and parent.func is outer and outer is not node:
                use = "call"
            elif not isinstance(parent, ast.Attribute | ast.Subscript):
                break
            elif isinstance(parent.ctx, ast.Store | ast.Del):
                use = "write"
            outer = parent
        found.append((node.lineno, use))
    return sorted(found)


def _python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


@pytest.mark.parametrize(
    "path",
    [p for p in _python_files(PACKAGE) if PACKAGE / "net" not in p.parents],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_the_net_layer_touches_the_servers_state_machine(path: Path) -> None:
    """The daemon, the worker, observe, ...: `Server.set_draining`, `set_dns_answers`, `apply`;
    never `server.turn`."""
    assert _turn_attributes(path) == [], f"{path.relative_to(ROOT)} reaches into Server.turn"


@pytest.mark.parametrize(
    "path",
    _python_files(ROOT / "tests", ROOT / "bench"),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_tests_and_benchmarks_only_look_at_the_state_machine(path: Path) -> None:
    uses = [(line, use) for line, use in _turn_attributes(path) if use != "read"]
    assert uses == [], f"{path.relative_to(ROOT)} changes Server.turn: use the Server's verbs"


def test_server_turn_is_read_only() -> None:
    from stunner_dp.net.runtime import Server

    assert isinstance(Server.turn, property) and Server.turn.fset is None
    assert {"set_draining", "set_dns_answers", "apply"} <= set(vars(Server))


def test_the_rule_finds_what_it_forbids(tmp_path: Path) -> None:
    """The checker itself: each way of reaching in is seen, module paths are not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import stunner_dp.turn.server\n"
        "x = stunner_dp.turn.server.TurnServer\n"
        "a = server.turn.allocations['udp']\n"
        "server.turn.draining = True\n"
        "server.turn.revalidate()\n"
        "server.turn.access.rules['x'] = []\n"
        "del server.turn\n"
    )
    assert _turn_attributes(sample) == [
        (3, "read"),
        (4, "write"),
        (5, "call"),
        (6, "write"),
        (7, "write"),
    ]
