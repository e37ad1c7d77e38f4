"""Environment variable expansion, as stunnerd does it before validating a config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["expand_env", "expand_tree"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")

# credentials are taken verbatim: a password may well contain "$"
_VERBATIM = (("auth", "credentials"),)


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Replace `$VAR` and `${VAR}`; an unset variable becomes "" (then the default applies)."""
    if "$" not in text:
        return text
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), text)


def expand_tree(data: Any, env: Mapping[str, str], path: tuple[str, ...] = ()) -> Any:
    """A copy of a parsed YAML/JSON tree with every string value expanded (keys untouched)."""
    if path in _VERBATIM:
        return data
    if isinstance(data, str):
        return expand_env(data, env)
    if isinstance(data, Mapping):
        return {k: expand_tree(v, env, (*path, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_tree(v, env, path) for v in data]
    return data
