"""Bounds on a config's size and shape, so that a hostile or runaway config costs little.

A real STUNner config is a few KB (a Kubernetes ConfigMap holds at most 1 MiB) and four levels
deep (config -> listeners -> [i] -> routes); these bounds are far above that, and each refusal
is a ConfigError naming the bound and the fix.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

__all__ = [
    "MAX_CLUSTERS",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_ENDPOINTS",
    "MAX_LISTENERS",
    "MAX_VALUES",
    "MAX_YAML_ALIASES",
    "ValuesExceeded",
    "check_count",
    "check_shape",
    "too_deep",
    "too_many_values",
]

MAX_CONFIG_BYTES = 8 * 1024 * 1024  # the file, or one CDS message
MAX_DEPTH = 32  # nested mappings and lists
MAX_VALUES = 1_000_000  # every scalar, mapping and list, after YAML aliases are expanded
MAX_YAML_ALIASES = 100  # `*name` references
MAX_LISTENERS = 1024
MAX_CLUSTERS = 4096
MAX_ENDPOINTS = 100_000  # over all clusters


def too_deep(depth: int = MAX_DEPTH) -> ConfigError:
    return ConfigError(
        "config",
        None,
        "a STUNner config is a few levels deep; remove the deeply nested value",
        problem=f"nested more than {depth} levels deep",
    )


class ValuesExceeded(ConfigError):
    """A config with more values than the bound it was loaded with (a caller with a tight
    bound may try again with a looser one elsewhere)."""


def too_many_values(count: int = MAX_VALUES) -> ConfigError:
    return ValuesExceeded(
        "config",
        None,
        "write the config without YAML anchors and aliases (&name, *name) and keep it small",
        problem=f"holds more than {count} values (YAML aliases included, once expanded)",
    )


def check_count(field: str, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise ConfigError(
            field,
            None,
            f"at most {limit} {what}; split the config across several gateways",
            problem=f"{count} {what}",
        )


def check_shape(data: Any, depth: int = MAX_DEPTH, values: int = MAX_VALUES) -> None:
    """Walk parsed YAML/JSON data without recursion: refuse nesting deeper than `depth` and
    more than `values` values (an aliased subtree counts each time it is referenced, as the
    validation that follows would walk it)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while stack:
        item, level = stack.pop()
        seen += 1
        if seen > values:
            raise too_many_values(values)
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > depth:
            raise too_deep(depth)
        stack.extend((child, level + 1) for child in children)
        if seen + len(stack) > values:
            raise too_many_values(values)
