"""Typed accessors over a raw YAML/JSON mapping that raise ConfigError with the field path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["get_int", "get_list", "get_mapping", "get_str", "join"]

_QUOTE = "must be a string (quote it in YAML)"


def join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def get_mapping(value: Any, path: str) -> Mapping[str, Any]:
    """A section; absent or null is an empty section."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, "must be a mapping of keys to values")
    return value


def get_list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(path, value, "must be a list (YAML `- item` lines or [a, b])")
    return value


def get_str(m: Mapping[str, Any], key: str, base: str, default: str = "") -> str:
    """A string value; absent or null gives `default` (an empty string stays empty)."""
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError(join(base, key), value, _QUOTE)
    return value


def get_int(
    m: Mapping[str, Any],
    key: str,
    base: str,
    default: int,
    lo: int,
    hi: int,
    rule: str,
    *,
    zero_is_default: bool = False,
) -> int:
    """An integer in [lo, hi]; a numeric string (e.g. from `${PORT}`) counts, "" is absent."""
    path, value = join(base, key), m.get(key)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(path, value, f"must be an integer: {rule}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None or (zero_is_default and value == 0):
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, value, f"must be an integer: {rule}")
    if not lo <= value <= hi:
        raise ConfigError(path, value, rule)
    return value
