"""Shared test setup. The `turn_server` fixture and its helpers come from the stunner_dp.testing
plugin (registered through the pytest11 entry point)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# Helper modules used by several test folders: tests/net/turnclient.py (a raw TURN client),
# tests/cli/stunnerd_proc.py (stunnerd as a subprocess), tests/interop/uclient.py (uclient's
# summary).
for helper_dir in (TESTS / "net", TESTS / "cli", TESTS / "interop"):
    if str(helper_dir) not in sys.path:
        sys.path.insert(0, str(helper_dir))
