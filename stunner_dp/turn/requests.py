"""What a request handler of `TurnServer` takes and how it refuses: shared by `server.py` and
the RFC 6062 handlers in `tcp_allocations.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stunner_dp.stun import ErrorCode, Message
from stunner_dp.turn.types import Context


class Reject(Exception):
    """Ends a request handler with an error response."""

    def __init__(
        self, code: ErrorCode, reason: str = "", attrs: list[tuple[int, bytes]] | None = None
    ) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason or code.reason
        self.attrs = attrs or []


@dataclass(slots=True, frozen=True)
class Authenticated:
    username: str
    key: bytes


# A handler returns the success response's attributes, or a whole response already encoded
# (an Allocate keeps its own, to answer a retransmission byte for byte).
Handler = Callable[[Context, Message, Authenticated, float], list[tuple[int, bytes]] | bytes]
