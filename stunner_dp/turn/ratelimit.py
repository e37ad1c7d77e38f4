"""Limits: what one user, the whole dataplane and an unauthenticated stranger may make us do.

Every limit keeps its state in a `Limits` ledger, the seam between the state machine and where
the counts live: `LocalLimits` (in this process, what a single `Server` uses) or the shared
memory table of `stunnerd -u N` (stunner_dp.daemon.ledger), so that a limit holds per dataplane
whatever the number of workers. Only the Allocate path and unauthenticated answers touch the
ledger, never media.

- Allocations: `Limits.acquire(user, quota, cap)` counts an allocation for the quota user
  against `user_quota` (486) and against `max_allocations` (508) in one step; `release(user)`
  when it is deleted.
- `UnauthLimiter`: answers to unauthenticated requests (401/438 challenges, Binding responses,
  400/420 errors) per source IP over UDP and DTLS, a token bucket of `rate` answers per second
  with a burst of `BURST` seconds' worth: a crowd of real clients behind one NAT gets its
  challenges at once, a spoofed source cannot make us a reflector for more than the burst plus
  `rate` answers a second. Streams (TCP, TLS) are not limited: their source completed a
  handshake, so it is not spoofed, and a stream's dropped answer is never retransmitted.
- `AuthFailureLimiter`: failed logins, `limit` per `window` seconds per (user, source IP and
  port), and `SHARED_IP_FACTOR` times that per (user, source IP). While either bucket is empty,
  that user's logins from there get 401 without a key check, so a password cannot be guessed
  faster; a guesser behind a shared NAT locks out his own 5-tuple, and the other clients of
  the address only once he has made `SHARED_IP_FACTOR` times more guesses from fresh ports.
  Requests on an existing allocation signed with its key are never locked out (server.py).

Tables are bounded whatever the input and fail safe: when one is full, a new key shares an
overflow bucket (it is limited, never unlimited), and a user the quota table has no room for
gets 486.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = [
    "AUTH_FAILURE_WINDOW",
    "MAX_ENTRIES",
    "AuthFailureLimiter",
    "Buckets",
    "Limits",
    "LocalLimits",
    "TokenBuckets",
    "UnauthLimiter",
    "Verdict",
]

AUTH_FAILURE_WINDOW = 60.0  # seconds over which `auth_failures_per_user` failures are allowed
MAX_ENTRIES = 65536
OVERFLOW_KEY = "\0overflow"  # the bucket every new key shares while a table is full
PRUNE_INTERVAL = 1.0  # seconds between scans of a full table for refilled buckets


class Verdict(Enum):
    """What `Limits.acquire` says about one more allocation."""

    OK = "ok"
    QUOTA = "quota"  # the user has `user_quota` allocations (or no room is left to count it)
    CAPACITY = "capacity"  # the dataplane has `max_allocations`


class Buckets(Protocol):
    """Token buckets by key: `capacity` tokens, refilled at `rate` a second; rate 0 = no limit."""

    rate: float
    capacity: float

    def available(self, key: str, now: float) -> bool:
        """Is there a token for `key` (without taking it)?"""
        ...

    def take(self, key: str, now: float) -> bool:
        """Take one token for `key`; False (and nothing taken) when the bucket is empty."""
        ...


class Limits(Protocol):
    """Where the counts of every limit live: in this process, or shared by all workers."""

    def acquire(self, user: str, quota: int, cap: int) -> Verdict:
        """Count one more allocation of `user` if `quota` (per user) and `cap` (in all) allow
        it; 0 = unlimited."""
        ...

    def release(self, user: str) -> None:
        """One allocation of `user` is gone."""
        ...

    def buckets(self, name: str, rate: float, capacity: float) -> Buckets:
        """The token buckets called `name`, with this rate and capacity (a new rate on the same
        name keeps the tokens, clamped to the new capacity)."""
        ...


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """Token buckets by key in a dict of at most `max_entries` keys. When it is full, buckets
    that have refilled are dropped (they hold nothing a fresh one would not); if that frees
    nothing, new keys share one overflow bucket until it does."""

    def __init__(self, rate: float, capacity: float, max_entries: int = MAX_ENTRIES) -> None:
        self.rate = rate
        self.capacity = capacity
        self.max_entries = max_entries
        self._buckets: dict[str, _Bucket] = {}
        self._pruned_at = float("-inf")

    def __len__(self) -> int:
        return len(self._buckets)

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.stamp)
        bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.rate)
        bucket.stamp = now

    def available(self, key: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) < self.max_entries - 1:
                return True
            bucket = self._buckets.get(OVERFLOW_KEY)
            if bucket is None:
                return True
        self._refill(bucket, now)
        return bucket.tokens >= 1.0

    def take(self, key: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._bucket(key, now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._refill(bucket, now)
            return bucket
        if len(self._buckets) >= self.max_entries - 1:  # room kept for the overflow bucket
            if now - self._pruned_at >= PRUNE_INTERVAL:  # a scan at most this often: a flood
                self._pruned_at = now  # of new keys must not cost a scan each
                self._prune(now)
            if len(self._buckets) >= self.max_entries - 1:
                key = OVERFLOW_KEY
                bucket = self._buckets.get(key)
                if bucket is not None:
                    self._refill(bucket, now)
                    return bucket
        bucket = self._buckets[key] = _Bucket(self.capacity, now)
        return bucket

    def _prune(self, now: float) -> None:
        full = self.capacity - 1e-9
        for key in [k for k, b in self._buckets.items() if self._full_at(b, now) >= full]:
            del self._buckets[key]

    def _full_at(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)


class LocalLimits:
    """The ledger of one process: dicts (a user counts only while it has allocations, so the
    quota table is bounded by the allocations)."""

    def __init__(self) -> None:
        self.users: dict[str, int] = {}
        self.total = 0
        self._tables: dict[str, TokenBuckets] = {}

    def acquire(self, user: str, quota: int, cap: int) -> Verdict:
        if quota and self.users.get(user, 0) >= quota:
            return Verdict.QUOTA
        if cap and self.total >= cap:
            return Verdict.CAPACITY
        self.users[user] = self.users.get(user, 0) + 1
        self.total += 1
        return Verdict.OK

    def release(self, user: str) -> None:
        left = self.users.get(user, 0) - 1
        if left > 0:
            self.users[user] = left
        else:
            self.users.pop(user, None)
        self.total = max(0, self.total - 1)

    def buckets(self, name: str, rate: float, capacity: float) -> Buckets:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = TokenBuckets(rate, capacity)
        else:
            table.rate, table.capacity = rate, capacity
        return table


class UnauthLimiter:
    """Unauthenticated answers per source IP: `rate` per second, a burst of `BURST` seconds'
    worth; 0 = unlimited."""

    # A crowd behind one NAT (2,000 fresh clients at once at the default 100/s) is served
    # without a retransmission; a flood from one source gets this once, then `rate` a second.
    BURST = 30.0

    def __init__(self, rate: int, limits: Limits | None = None) -> None:
        self.rate = rate
        self._buckets = (limits or LocalLimits()).buckets("unauth", float(rate), self.BURST * rate)

    def __len__(self) -> int:
        return len(self._buckets) if isinstance(self._buckets, TokenBuckets) else 0

    def allow(self, ip: str, now: float) -> bool:
        return self._buckets.take(ip, now)


class AuthFailureLimiter:
    """Failed logins: `limit` per `window` seconds per (user, source IP and port) and
    `SHARED_IP_FACTOR` times that per (user, source IP); 0 = unlimited."""

    SHARED_IP_FACTOR = 10

    def __init__(
        self, limit: int, window: float = AUTH_FAILURE_WINDOW, limits: Limits | None = None
    ) -> None:
        self.limit = limit
        self.window = window
        ledger = limits or LocalLimits()
        rate = limit / window if limit else 0.0
        per_ip = limit * self.SHARED_IP_FACTOR
        self._by_source = ledger.buckets("auth_source", rate, float(limit))
        self._by_ip = ledger.buckets("auth_ip", rate * self.SHARED_IP_FACTOR, float(per_ip))

    def locked(self, user: str, source: tuple[str, int], now: float) -> bool:
        """Is `user` locked out from `source` (answer 401 without checking the key)?"""
        if not self.limit:
            return False
        ip = source[0]
        return not (
            self._by_source.available(f"{user}\0{ip}\0{source[1]}", now)
            and self._by_ip.available(f"{user}\0{ip}", now)
        )

    def failed(self, user: str, source: tuple[str, int], now: float) -> None:
        if self.limit:
            ip = source[0]
            self._by_source.take(f"{user}\0{ip}\0{source[1]}", now)
            self._by_ip.take(f"{user}\0{ip}", now)
