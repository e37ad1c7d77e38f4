"""A short bounded run of the coverage-guided fuzz target, seeded with the checked-in corpus.
New inputs go to a temporary directory; a crash fails the test with libFuzzer's report (the
crashing input is kept under the temporary directory, named in the output)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RUNS = 20000
MAX_SECONDS = 60

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed"
)


def test_seed_corpus_is_there() -> None:
    seeds = list((HERE / "corpus").iterdir())
    assert len(seeds) >= 100, "run tests/fuzz/make_corpus.py"


def test_bounded_fuzz_run(tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    cmd = [
        sys.executable,
        str(HERE / "fuzz_turn.py"),
        str(new),
        str(HERE / "corpus"),
        f"-runs={RUNS}",
        f"-max_total_time={MAX_SECONDS}",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MAX_SECONDS + 120)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-4000:]
    assert "Done " in report and "runs in" in report, report[-2000:]
