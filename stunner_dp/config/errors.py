"""The one error type of the config package: it names the field, the bad value and the fix."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MISSING", "ConfigError"]


class _Missing:
    """Marks a required value that is absent (so `None` can stay a real YAML value)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"  # unpickles to the module's singleton, so `is MISSING` holds


MISSING: Any = _Missing()


def _show(value: object) -> str:
    # strings are quoted so that an empty or space-padded value is visible in the log line
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


class ConfigError(ValueError):
    """A config that stunnerd would reject.

    `field` is the path of the offending key ("listeners[1].port"), `value` the value found
    (`MISSING` when absent) and `allowed` says what is allowed or how to fix it. `str()` is a
    single line so that it fits one log record:
    "listeners[1].port: 70000 is not valid: a port is 1-65535".
    """

    def __init__(self, field: str, value: object, allowed: str, *, problem: str = "") -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        if not problem:
            problem = "missing" if value is MISSING else f"{_show(value)} is not valid"
        self.problem = problem
        message = f"{field}: {problem}: {allowed}"
        super().__init__(message.replace("\r", " ").replace("\n", " "))

    def __reduce__(self) -> tuple[Any, ...]:
        # worker processes send errors back pickled; the default would call __init__(message)
        return (_rebuild, (self.field, self.value, self.allowed, self.problem))

    @classmethod
    def missing(cls, field: str, allowed: str) -> ConfigError:
        return cls(field, MISSING, allowed)


def _rebuild(field: str, value: object, allowed: str, problem: str) -> ConfigError:
    return ConfigError(field, value, allowed, problem=problem)
