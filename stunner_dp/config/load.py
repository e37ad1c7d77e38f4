"""Read a config from text or a file (YAML or JSON) into a validated StunnerConfig."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import Node

from .errors import ConfigError
from .limits import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_VALUES,
    MAX_YAML_ALIASES,
    check_shape,
    too_deep,
    too_many_values,
)
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


# libyaml's scanner when it is there (about 6x faster); the composer is always PyYAML's, ours
_YamlBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _BoundedComposer(Composer):
    """PyYAML's composer, counting as it goes: nesting depth (its recursion would end in a
    bare RecursionError), aliases, and values once aliases are expanded (a 1 KB "billion
    laughs" file expands to millions), each refused before it costs anything."""

    def __init__(self, max_values: int) -> None:
        super().__init__()
        self.max_values = max_values
        self.depth = 0
        self.aliases = 0
        self.values = 0  # values composed so far, an alias counting as the values it names
        self.sizes: dict[int, int] = {}  # id(anchored node) -> its size, aliases expanded

    # the event methods come from the parser this is mixed with
    check_event: Any
    peek_event: Any

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise ConfigError(
                    "config",
                    None,
                    "write the config without YAML anchors and aliases (&name, *name)",
                    problem=f"more than {MAX_YAML_ALIASES} YAML aliases",
                )
            node = super().compose_node(parent, index)
            self._count(self.sizes.get(id(node), 1))
            return node
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise too_deep()
        before = self.values
        self._count(1)
        anchored = self.peek_event().anchor is not None
        node = super().compose_node(parent, index)
        if anchored:
            self.sizes[id(node)] = self.values - before
        self.depth -= 1
        return node

    def _count(self, values: int) -> None:
        self.values += values
        if self.values > self.max_values:
            raise too_many_values(self.max_values)


class _BoundedLoader(_BoundedComposer, _YamlBase):  # type: ignore[misc]
    def __init__(self, stream: str, max_values: int) -> None:
        _YamlBase.__init__(self, stream)
        _BoundedComposer.__init__(self, max_values)


def load_config_text(
    text: str, env: Mapping[str, str] | None = None, *, max_values: int = MAX_VALUES
) -> StunnerConfig:
    """Parse YAML or JSON config text; syntax errors become a ConfigError with the line, and
    what breaks a bound of `limits` one naming the bound."""
    return _load_text(text, env, "the text", max_values)


def _check_size(size: int, source: str) -> None:
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            "config",
            None,
            f"a config is at most {MAX_CONFIG_BYTES} bytes; remove what stunnerd does not need",
            problem=f"{source} is larger than {MAX_CONFIG_BYTES} bytes",
        )


def _load_text(
    text: str, env: Mapping[str, str] | None, source: str, max_values: int
) -> StunnerConfig:
    data: Any
    # characters, not bytes: a config is ASCII but for the odd name, and this costs nothing
    _check_size(len(text), source)
    stripped = text.lstrip()
    try:
        # JSON first: PyYAML speaks YAML 1.1 and trips on some valid JSON (tabs, "\/")
        data = json.loads(text) if stripped.startswith("{") else None
    except json.JSONDecodeError:
        data = None
    except RecursionError:  # the C decoder's own depth guard, far deeper than MAX_DEPTH
        raise too_deep() from None
    if data is None:
        loader = _BoundedLoader(text, max_values)
        try:
            data = loader.get_single_data()
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, source) from None
        finally:
            loader.dispose()
    if data is None:
        raise ConfigError("config", None, f"{source} holds no config", problem="empty")
    check_shape(data, values=max_values)  # JSON's depth and size (YAML's are checked above)
    return parse_config(data, env)


def load_config_file(
    path: str | Path, env: Mapping[str, str] | None = None, *, max_values: int = MAX_VALUES
) -> StunnerConfig:
    """Load a file given as a path or as `file://PATH`."""
    name = str(path)
    if name.startswith("file://"):
        name = name.removeprefix("file://")
    try:
        with open(name, "rb") as f:
            # read one byte past the bound: a bigger file is refused without being read whole
            raw = f.read(MAX_CONFIG_BYTES + 1)
        _check_size(len(raw), name)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        fix = f"{reason}; give a readable config file (a path or file://PATH)"
        raise ConfigError("config", name, fix, problem=f"cannot read {name}") from None
    return _load_text(text, env, name, max_values)
