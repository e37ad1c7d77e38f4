"""Rate limits for what an unauthenticated stranger can make the server do.

Two limits, both sans-IO (the caller passes `now`), both with bounded memory:

- `UnauthLimiter`: answers to requests that were not authenticated (401/438 challenges,
  Binding responses, 400/420 errors) per source IP, as a token bucket of `rate` answers per
  second with a burst of 2 * `rate`. Past it, requests are dropped without an answer: a spoofed
  source cannot turn the server into a reflector at more than `rate` answers per second.
- `AuthFailureLimiter`: failed authentications per user (the quota user: for TURN REST API
  usernames the user id, not the timestamp), a token bucket of `limit` failures refilled at
  `limit` per `window` seconds. While it is empty, requests for that user are answered 401
  without checking the key, so a password cannot be guessed faster than `limit` per `window`.
  Source IPs that authenticated as that user within the last `trust` seconds (an hour: longer
  than any allocation lifetime, so a client that keeps its allocation alive stays trusted) are
  exempt: a stranger hammering a shared username does not lock out the clients already using
  it, nor stop their refreshes.

Tables are capped at `max_entries` keys; when one is full, entries whose bucket has refilled
are dropped, and if that frees nothing the table starts over (limits fail open for a moment
rather than letting memory grow under a flood of spoofed sources or usernames).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AUTH_FAILURE_WINDOW",
    "MAX_ENTRIES",
    "AuthFailureLimiter",
    "TokenBuckets",
    "UnauthLimiter",
]

AUTH_FAILURE_WINDOW = 60.0  # seconds over which `auth_failures_per_user` failures are allowed
MAX_ENTRIES = 65536


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """Token buckets by key: `capacity` tokens, refilled at `rate` tokens per second.
    A rate of 0 means unlimited (every `take` succeeds and nothing is stored)."""

    def __init__(self, rate: float, capacity: float, max_entries: int = MAX_ENTRIES) -> None:
        self.rate = rate
        self.capacity = capacity
        self.max_entries = max_entries
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _refill(self, bucket: _Bucket, now: float) -> None:
        elapsed = max(0.0, now - bucket.stamp)
        bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.rate)
        bucket.stamp = now

    def available(self, key: str, now: float) -> bool:
        """Is there a token for `key` (without taking it)?"""
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            return True
        self._refill(bucket, now)
        return bucket.tokens >= 1.0

    def take(self, key: str, now: float) -> bool:
        """Take one token for `key`; False (and nothing taken) when the bucket is empty."""
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
        else:
            self._refill(bucket, now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _prune(self, now: float) -> None:
        full = self.capacity - 1e-9
        for key in [k for k, b in self._buckets.items() if self._full_at(b, now) >= full]:
            del self._buckets[key]
        if len(self._buckets) >= self.max_entries:
            self._buckets.clear()

    def _full_at(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)


class UnauthLimiter:
    """Unauthenticated answers per source IP: `rate` per second, a burst of `BURST` seconds'
    worth; 0 = unlimited."""

    BURST = 2.0

    def __init__(self, rate: int, max_entries: int = MAX_ENTRIES) -> None:
        self.rate = rate
        self._buckets = TokenBuckets(float(rate), self.BURST * rate, max_entries)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, ip: str, now: float) -> bool:
        return self._buckets.take(ip, now)


class AuthFailureLimiter:
    """Failed authentications per (user, source IP): `limit` per `window` seconds; 0 =
    unlimited. Keyed by the source too: a stranger guessing at a shared username (with static
    auth every client has the same one) locks out himself, not its other users."""

    def __init__(
        self, limit: int, window: float = AUTH_FAILURE_WINDOW, max_entries: int = MAX_ENTRIES
    ) -> None:
        self.limit = limit
        self.window = window
        rate = limit / window if limit else 0.0
        self._failures = TokenBuckets(rate, float(limit), max_entries)

    def locked(self, user: str, ip: str, now: float) -> bool:
        """Is `user` locked out from `ip` (answer 401 without checking the key)?"""
        return bool(self.limit) and not self._failures.available(f"{user}\0{ip}", now)

    def failed(self, user: str, ip: str, now: float) -> None:
        if self.limit:
            self._failures.take(f"{user}\0{ip}", now)
