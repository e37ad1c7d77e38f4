"""The single exception type of the STUN codec."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")


class StunError(Exception):
    """Malformed STUN/TURN wire data.

    Every parse/decode function raises only this, whatever the input, so the
    server's request path needs exactly one ``except`` to drop or reject a
    datagram.
    """


def only_stun_errors(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Safety net: turn any stray exception (wrong input type, ...) into StunError.

    The decoders check lengths explicitly for clear messages; this only
    guarantees the "raises nothing else" contract for inputs nobody foresaw.
    """

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except StunError:
            raise
        except Exception as exc:
            raise StunError(f"{func.__name__}: {exc!r}") from exc

    return wrapper
