"""The limits ledger of `stunnerd -u N`: one shared-memory table for every worker, so that
`user_quota`, `max_allocations`, the unauthenticated-answer rate and the failed-login lockout
hold per dataplane, not per worker (stunner_dp.turn.ratelimit has the `Limits` seam).

The supervisor creates it (`SharedLimits.create`, a memfd) and hands the descriptor to each
worker (pass_fds); a worker maps it with `SharedLimits.attach(fd, index)`. Layout, all fixed
size whatever the input (attackers choose usernames and source IPs):

- a header (magic, sizes, the hash key: keys are hashed with a secret keyed BLAKE2b, so
  nobody can aim collisions);
- allocation totals, one u32 per worker;
- the quota table: `USER_SLOTS` slots of (key hash, one u32 count per worker). A user's count
  is the sum of the columns; when a worker dies the supervisor zeroes its column
  (`clear_worker`), so its allocations stop counting. A user the table has no room for
  gets 486 (fail safe);
- one token-bucket table per name (`TABLES`): `BUCKET_SLOTS` slots of (key hash, tokens,
  stamp). A key that finds no room shares a busy bucket: it is limited, never unlimited.

Keys probe `PROBE` neighbouring slots. Read-modify-write holds a POSIX byte-range lock
(fcntl.lockf) on the slots it touches: per process, released by the kernel when a worker
dies, so a killed worker never leaves a table locked. Only the Allocate path and answers to
unauthenticated requests come here, never media.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from stunner_dp.turn.ratelimit import Buckets, Verdict

__all__ = ["SharedLimits"]

MAGIC = 0x5344504C  # "SDPL"
VERSION = 1
USER_SLOTS = 65536
BUCKET_SLOTS = 65536
PROBE = 8
TABLES = ("unauth", "auth_source", "auth_ip")

_HEADER = struct.Struct("<IIIII12x16s")  # magic, version, workers, user slots, bucket slots, key
_HASH = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_BUCKET = struct.Struct("<Qdd")  # key hash, tokens, stamp
HEADER_SIZE = 64
ALLOC_LOCK = 0  # the lock byte of the totals and the quota table
BUCKET_LOCKS = 1 << 30  # lock offsets of bucket slots start here (past the end of the file)


def _layout(workers: int, user_slots: int, bucket_slots: int) -> tuple[int, int, int, int]:
    """(totals offset, users offset, user slot size, buckets offset) and so the file size."""
    totals = HEADER_SIZE
    users = totals + ((4 * workers + 7) // 8) * 8
    user_slot = 8 + 4 * workers
    buckets = users + user_slots * user_slot
    return totals, users, user_slot, buckets


class SharedLimits:
    """The `Limits` of one worker over the shared table (worker `index` of `workers`)."""

    def __init__(self, fd: int, index: int) -> None:
        self.fd = fd
        size = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, size)
        magic, version, workers, user_slots, bucket_slots, key = _HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or version != VERSION:
            raise ValueError("not a stunner-dp limits table")
        if not 0 <= index < workers:
            raise ValueError(f"worker index {index} out of range 0-{workers - 1}")
        self.index = index
        self.workers = workers
        self.user_slots = user_slots
        self.bucket_slots = bucket_slots
        self._key = key
        self._totals, self._users, self._user_slot, self._buckets = _layout(
            workers, user_slots, bucket_slots
        )

    @classmethod
    def create(
        cls, workers: int, user_slots: int = USER_SLOTS, bucket_slots: int = BUCKET_SLOTS
    ) -> int:
        """A new zeroed table for `workers` workers: its descriptor (inheritable, for
        pass_fds). Pages are touched only when used."""
        _, _, _, buckets = _layout(workers, user_slots, bucket_slots)
        size = buckets + len(TABLES) * bucket_slots * _BUCKET.size
        fd = os.memfd_create("stunner-dp-limits", 0)
        os.ftruncate(fd, size)
        header = _HEADER.pack(MAGIC, VERSION, workers, user_slots, bucket_slots, os.urandom(16))
        os.pwrite(fd, header, 0)
        return fd

    @classmethod
    def attach(cls, fd: int, index: int) -> SharedLimits:
        return cls(fd, index)

    def close(self) -> None:
        self._map.close()

    # -- helpers ------------------------------------------------------------------------------

    def _hash(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, key=self._key)
        return int.from_bytes(digest.digest(), "little") or 1  # 0 marks an empty slot

    @contextmanager
    def _locked(self, start: int, length: int = 1) -> Iterator[None]:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, length, start)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, length, start)

    def _first_slot(self, h: int, slots: int) -> int:
        return h % (slots - PROBE + 1)  # windows never wrap: a lock range covers its window

    def _user_count(self, off: int) -> int:
        return sum(_U32.unpack_from(self._map, off + 8 + 4 * w)[0] for w in range(self.workers))

    def _total(self) -> int:
        return sum(
            _U32.unpack_from(self._map, self._totals + 4 * w)[0] for w in range(self.workers)
        )

    def _add(self, off: int, delta: int) -> None:
        (value,) = _U32.unpack_from(self._map, off)
        _U32.pack_into(self._map, off, max(0, value + delta))

    def _find_user(self, h: int) -> tuple[int | None, int | None]:
        """(the slot of `h`, a free slot in its window), offsets or None."""
        first = self._first_slot(h, self.user_slots)
        free = None
        for j in range(PROBE):
            off = self._users + (first + j) * self._user_slot
            (slot_hash,) = _HASH.unpack_from(self._map, off)
            if slot_hash == h:
                return off, None
            if free is None and (slot_hash == 0 or self._user_count(off) == 0):
                free = off
        return None, free

    # -- Limits -------------------------------------------------------------------------------

    def acquire(self, user: str, quota: int, cap: int) -> Verdict:
        h = self._hash(user)
        with self._locked(ALLOC_LOCK):
            found, free = self._find_user(h)
            count = self._user_count(found) if found is not None else 0
            if quota and (count >= quota or (found is None and free is None)):
                return Verdict.QUOTA
            if cap and self._total() >= cap:
                return Verdict.CAPACITY
            slot = found if found is not None else free
            if slot is not None:
                if found is None:  # claim it: no worker counts anything in it
                    self._map[slot : slot + self._user_slot] = bytes(self._user_slot)
                    _HASH.pack_into(self._map, slot, h)
                self._add(slot + 8 + 4 * self.index, 1)
            self._add(self._totals + 4 * self.index, 1)
        return Verdict.OK

    def release(self, user: str) -> None:
        h = self._hash(user)
        with self._locked(ALLOC_LOCK):
            found, _ = self._find_user(h)
            if found is not None:
                self._add(found + 8 + 4 * self.index, -1)
            self._add(self._totals + 4 * self.index, -1)

    def buckets(self, name: str, rate: float, capacity: float) -> Buckets:
        return SharedBuckets(self, TABLES.index(name), rate, capacity)

    # -- the supervisor's side -----------------------------------------------------------------

    def clear_worker(self, index: int) -> None:
        """Worker `index` is gone: none of its allocations count any more."""
        with self._locked(ALLOC_LOCK):
            _U32.pack_into(self._map, self._totals + 4 * index, 0)
            for slot in range(self.user_slots):
                off = self._users + slot * self._user_slot
                if _HASH.unpack_from(self._map, off)[0]:
                    _U32.pack_into(self._map, off + 8 + 4 * index, 0)

    def allocations(self) -> int:
        """Allocations counted in all (for tests and the supervisor)."""
        with self._locked(ALLOC_LOCK):
            return self._total()


class SharedBuckets:
    """Token buckets in one table of a `SharedLimits`; rate 0 = unlimited."""

    def __init__(self, ledger: SharedLimits, table: int, rate: float, capacity: float) -> None:
        self.ledger = ledger
        self.rate = rate
        self.capacity = capacity
        self._base = ledger._buckets + table * ledger.bucket_slots * _BUCKET.size
        self._lock_base = BUCKET_LOCKS + table * ledger.bucket_slots

    def _tokens(self, tokens: float, stamp: float, now: float) -> float:
        return min(self.capacity, tokens + max(0.0, now - stamp) * self.rate)

    def _slot(self, h: int, now: float) -> tuple[int, bool]:
        """(offset, whether it is fresh: `h`'s own slot or a claimable one, else a busy
        bucket `h` shares)."""
        m = self.ledger._map
        first = self.ledger._first_slot(h, self.ledger.bucket_slots)
        claim = None
        for j in range(PROBE):
            off = self._base + (first + j) * _BUCKET.size
            slot_hash, tokens, stamp = _BUCKET.unpack_from(m, off)
            if slot_hash == h:
                return off, False
            if claim is None and (
                slot_hash == 0 or self._tokens(tokens, stamp, now) >= self.capacity - 1e-9
            ):
                claim = off
        if claim is not None:
            return claim, True
        return self._base + first * _BUCKET.size, False  # no room: share (fail safe)

    def available(self, key: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        h = self.ledger._hash(key)
        first = self.ledger._first_slot(h, self.ledger.bucket_slots)
        with self.ledger._locked(self._lock_base + first, PROBE):
            off, fresh = self._slot(h, now)
            if fresh:
                return self.capacity >= 1.0
            _, tokens, stamp = _BUCKET.unpack_from(self.ledger._map, off)
            return self._tokens(tokens, stamp, now) >= 1.0

    def take(self, key: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        m = self.ledger._map
        h = self.ledger._hash(key)
        first = self.ledger._first_slot(h, self.ledger.bucket_slots)
        with self.ledger._locked(self._lock_base + first, PROBE):
            off, fresh = self._slot(h, now)
            if fresh:
                slot_hash, tokens = h, self.capacity
            else:
                slot_hash, tokens, stamp = _BUCKET.unpack_from(m, off)
                tokens = self._tokens(tokens, stamp, now)
            if tokens < 1.0:
                _BUCKET.pack_into(m, off, slot_hash, tokens, now)
                return False
            _BUCKET.pack_into(m, off, slot_hash, tokens - 1.0, now)
            return True
