"""Per-user bandwidth caps (`admin.user_bandwidth`, an extension): relayed payload bytes per
second per quota user, in each direction, as a token bucket of `burst` bytes.

The media hot paths keep no per-user state and pay nothing for a cap. Instead the shell calls
`UserBandwidth.review` on a short timer with every allocation: it reads the counters the hot
paths already keep (each allocation's `Traffic`, the kernel fast path's counts folded into
them) and charges what each user relayed since the last review to the user's buckets. A
bucket that goes below zero puts its user under the cap: the shell takes that user's
allocations off the fast paths, and their packets go through `allow`, which charges the
bucket per packet and refuses what does not fit (the shell drops it and counts it here).
A user whose last review period saw no drop and whose buckets are not in debt goes back to
the fast paths.

The counters stay the truth: `allow` only remembers what it let through (`pending`), so the
bucket is charged once, by the review, whatever path a byte took. The debt a burst leaves
while a user was on the fast path is paid back before more passes, so over time a user gets
`burst` + `rate` x seconds. No I/O, no clock: the shell passes `now`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from stunner_dp.turn.allocation import Allocation

__all__ = ["DEBT_SECONDS", "TO_CLIENT", "TO_PEER", "Review", "UserBandwidth"]

TO_PEER = 0  # client -> peer (Traffic.out_*)
TO_CLIENT = 1  # peer -> client (Traffic.in_*)
DEBT_SECONDS = 5.0  # a bucket's debt is bounded to this many seconds of its rate


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    pending: int = 0  # bytes `allow` let through since the last review (not charged yet)
    dropped: bool = False  # `allow` refused something since the last review


@dataclass(slots=True)
class _User:
    buckets: tuple[_Bucket, _Bucket]
    capped: bool = False
    allocations: int = 0  # seen at the last review


@dataclass(slots=True)
class Review:
    """What changed at a review: users to take off the fast paths and to put back."""

    capped: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)


class UserBandwidth:
    """The caps of every user; `rate` bytes/s (0 = off) and `burst` bytes per direction."""

    def __init__(self, rate: int, burst: int) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.users: dict[str, _User] = {}
        # what each allocation's counters said at the last review: (to peer, to client) bytes
        self._seen: dict[Allocation, tuple[int, int]] = {}
        # refused by `allow`, for the metrics: [packets, bytes] per direction
        self.dropped_packets = [0, 0]
        self.dropped_bytes = [0, 0]

    def reconfigure(self, rate: int, burst: int) -> None:
        """A new cap: tokens kept, clamped to the new burst."""
        self.rate, self.burst = float(rate), float(burst)
        for user in self.users.values():
            for b in user.buckets:
                b.tokens = min(b.tokens, self.burst)

    @property
    def capped_users(self) -> int:
        return sum(1 for u in self.users.values() if u.capped)

    def is_capped(self, user: str) -> bool:
        found = self.users.get(user)
        return found is not None and found.capped

    def _refill(self, b: _Bucket, now: float) -> None:
        b.tokens = min(self.burst, b.tokens + max(0.0, now - b.stamp) * self.rate)
        b.stamp = now

    def _user(self, name: str, now: float) -> _User:
        user = self.users.get(name)
        if user is None:
            user = self.users[name] = _User((_Bucket(self.burst, now), _Bucket(self.burst, now)))
        return user

    # -- the review (timer) --------------------------------------------------------------------

    def review(self, allocations: Iterable[Allocation], now: float) -> Review:
        """Charge what every allocation relayed since the last review; say who goes under the
        cap and who comes out of it."""
        seen: dict[Allocation, tuple[int, int]] = {}
        used: dict[str, list[int]] = {}
        count: dict[str, int] = {}
        for alloc in allocations:
            _, out_bytes, _, in_bytes = alloc.totals()
            before = self._seen.get(alloc, (0, 0))
            seen[alloc] = (out_bytes, in_bytes)
            row = used.setdefault(alloc.quota_user, [0, 0])
            row[TO_PEER] += max(0, out_bytes - before[0])
            row[TO_CLIENT] += max(0, in_bytes - before[1])
            count[alloc.quota_user] = count.get(alloc.quota_user, 0) + 1
        self._seen = seen  # ended allocations leave with it
        floor = -DEBT_SECONDS * self.rate
        out = Review()
        for name, user in list(self.users.items()):
            if name not in used:
                user.allocations = 0
                for b in user.buckets:
                    self._refill(b, now)
                    b.pending = 0
                    b.dropped = False
                if user.capped:
                    user.capped = False
                    out.released.append(name)
                if all(b.tokens >= self.burst for b in user.buckets):
                    del self.users[name]  # a full bucket holds nothing a fresh one would not
        for name, row in used.items():
            user = self._user(name, now)
            user.allocations = count[name]
            over = dropped = False
            for direction, b in enumerate(user.buckets):
                self._refill(b, now)
                b.tokens = max(floor, b.tokens - row[direction])
                b.pending = 0
                dropped = dropped or b.dropped
                b.dropped = False
                over = over or b.tokens < 0
            if over and not user.capped:
                user.capped = True
                out.capped.append(name)
            elif user.capped and not over and not dropped:
                user.capped = False
                out.released.append(name)
        return out

    # -- the slow path of a capped user (per packet) -------------------------------------------

    def allow(self, user: str, direction: int, size: int, now: float) -> bool:
        """May `size` payload bytes of `user` be relayed in `direction` now? A refusal is
        counted as a drop."""
        found = self.users.get(user)
        if found is None or not found.capped:
            return True
        b = found.buckets[direction]
        self._refill(b, now)
        if b.tokens - b.pending >= size:
            b.pending += size
            return True
        b.dropped = True
        self.dropped_packets[direction] += 1
        self.dropped_bytes[direction] += size
        return False
