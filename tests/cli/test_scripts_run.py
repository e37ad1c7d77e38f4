"""./scripts/run, the README's first command: it sets up and runs the server; run again with
nothing changed, it does not reinstall (only a new pyproject.toml does)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VENV": str(REPO / ".venv")}
    return subprocess.run(
        [str(REPO / "scripts" / "run"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def test_second_run_does_not_reinstall() -> None:
    first = run_script("-d")  # dry run: print the effective config of config/stunnerd.yaml
    assert first.returncode == 0, first.stderr
    assert "listeners" in first.stdout
    second = run_script("-d")
    assert second.returncode == 0, second.stderr
    assert "installing" not in second.stdout, second.stdout
    assert "pyproject.toml unchanged" in second.stdout
    assert config_lines(second.stdout) == config_lines(first.stdout)


def config_lines(stdout: str) -> list[str]:
    """What stunnerd printed, without the script's own ">>" lines."""
    return [line for line in stdout.splitlines() if not line.startswith(">>")]
