"""What the state machine tells the shell happened, for logs and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from stunner_dp.turn.allocation import Allocation
from stunner_dp.turn.types import Addr


@dataclass(slots=True, frozen=True)
class AllocationCreated:
    allocation: Allocation


@dataclass(slots=True, frozen=True)
class AllocationRefreshed:
    allocation: Allocation
    lifetime: int


@dataclass(slots=True, frozen=True)
class AllocationDeleted:
    allocation: Allocation
    reason: str  # "refresh" | "expired" | "connection closed" | "listener removed"


@dataclass(slots=True, frozen=True)
class PermissionDenied:
    listener: str
    client: Addr
    peer: Addr
    clusters: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class AuthFailed:
    listener: str
    client: Addr
    username: str
    reason: str


@dataclass(slots=True, frozen=True)
class RequestRejected:
    """A request answered with an error other than the authentication challenge."""

    listener: str
    client: Addr
    method: str
    code: int
    reason: str


@dataclass(slots=True, frozen=True)
class RequestFailed:
    """A message whose handling raised an unexpected exception (a bug): dropped unanswered."""

    listener: str
    client: Addr
    error: Exception


Event = (
    AllocationCreated
    | AllocationRefreshed
    | AllocationDeleted
    | PermissionDenied
    | AuthFailed
    | RequestRejected
    | RequestFailed
)
