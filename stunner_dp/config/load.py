"""Read a config from text or a file (YAML or JSON) into a validated StunnerConfig."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .model import StunnerConfig
from .parse import parse_config

__all__ = ["load_config_file", "load_config_text"]


def _yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    where = ""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        where = f"line {mark.line + 1}, column {mark.column + 1}: "
    problem = getattr(exc, "problem", None) or str(exc)
    problem_text = f"{source} cannot be parsed as YAML or JSON"
    return ConfigError("config", None, f"{where}{problem}", problem=problem_text)


def load_config_text(text: str, env: Mapping[str, str] | None = None) -> StunnerConfig:
    """Parse YAML or JSON config text; syntax errors become a ConfigError with the line."""
    return _load_text(text, env, "the text")


def _load_text(text: str, env: Mapping[str, str] | None, source: str) -> StunnerConfig:
    data: Any
    stripped = text.lstrip()
    try:
        # JSON first: PyYAML speaks YAML 1.1 and trips on some valid JSON (tabs, "\/")
        data = json.loads(text) if stripped.startswith("{") else None
    except json.JSONDecodeError:
        data = None
    if data is None:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, source) from None
    if data is None:
        raise ConfigError("config", None, f"{source} holds no config", problem="empty")
    return parse_config(data, env)


def load_config_file(path: str | Path, env: Mapping[str, str] | None = None) -> StunnerConfig:
    """Load a file given as a path or as `file://PATH`."""
    name = str(path)
    if name.startswith("file://"):
        name = name.removeprefix("file://")
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        fix = f"{reason}; give a readable config file (a path or file://PATH)"
        raise ConfigError("config", name, fix, problem=f"cannot read {name}") from None
    return _load_text(text, env, name)
