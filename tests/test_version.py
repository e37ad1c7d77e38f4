"""One source for the version: stunner_dp.__version__. The installed distribution, the image's
default label and the image tags in deploy/ all carry it; `python -m stunner_dp` runs the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml

import stunner_dp

REPO = Path(__file__).resolve().parents[1]


def test_distribution_version_is_the_package_version() -> None:
    assert version("stunner-dp") == stunner_dp.__version__


def test_pyproject_takes_the_version_from_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"], "a second version in pyproject.toml"
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "stunner_dp.__version__"}


def test_dockerfile_label_default_is_the_package_version() -> None:
    found = re.search(r"^ARG VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert found and found.group(1) == stunner_dp.__version__


def test_deploy_image_tags_are_the_package_version() -> None:
    tags = []
    for path in sorted((REPO / "deploy").rglob("*.yaml")):
        text = path.read_text()
        tags += [(path, t) for t in re.findall(r"image:\s*stunner-dp:(\S+)", text)]
        for doc in yaml.safe_load_all(text):
            for image in (doc or {}).get("images", []) if isinstance(doc, dict) else []:
                tags.append((path, image["newTag"]))
    assert tags, "no image tag found in deploy/"
    for path, tag in tags:
        assert tag == stunner_dp.__version__, f"{path.relative_to(REPO)}: {tag}"


def test_python_m_stunner_dp_runs_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "stunner_dp", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert stunner_dp.__version__ in out.stdout


def test_license_file_is_the_declared_license() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = project["project"]["license"]["text"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith(f"{declared} License"), text[:80]
    assert "Permission is hereby granted, free of charge" in text
