"""turn/ratelimit.py with a fake clock, the admin keys that configure it, and the state
machine's counters (rate_limited, auth_failures, auth_locked) for the metrics."""

from __future__ import annotations

from typing import Any

import pytest
from helpers.hostile_kit import (
    KEY,
    NOW,
    OWNER,
    PEER,
    STRANGER,
    UDP,
    build,
    ctx,
    new_server,
    peer_attr,
    sm_config,
)

from stunner_dp import stun
from stunner_dp.config import AdminConfig, ConfigError, parse_config
from stunner_dp.turn.auth import long_term_key, nonce_binding
from stunner_dp.turn.ratelimit import MAX_ENTRIES, AuthFailureLimiter, TokenBuckets, UnauthLimiter

AUTH = {"credentials": {"username": "u", "password": "p"}}


# -- token buckets -------------------------------------------------------------------------


def test_bucket_burst_then_refill() -> None:
    b = TokenBuckets(rate=2.0, capacity=4.0)
    assert [b.take("k", 0.0) for _ in range(5)] == [True] * 4 + [False]
    assert not b.take("k", 0.4)  # 0.8 tokens back: not enough
    assert b.take("k", 0.5)
    assert [b.take("k", 100.0) for _ in range(5)] == [True] * 4 + [False]  # capped at capacity


def test_bucket_keys_are_independent_and_zero_rate_is_unlimited() -> None:
    b = TokenBuckets(rate=1.0, capacity=1.0)
    assert b.take("a", 0.0) and not b.take("a", 0.0)
    assert b.take("b", 0.0)
    off = TokenBuckets(rate=0.0, capacity=0.0)
    assert all(off.take("a", 0.0) for _ in range(1000)) and len(off) == 0


def test_bucket_table_is_bounded_under_a_flood_of_keys() -> None:
    b = TokenBuckets(rate=1.0, capacity=2.0, max_entries=100)
    for i in range(10_000):
        b.take(f"10.0.{i // 256}.{i % 256}", float(i) * 0.001)
    assert len(b) <= 100


def test_pruning_drops_only_refilled_buckets() -> None:
    b = TokenBuckets(rate=1.0, capacity=2.0, max_entries=3)
    for _ in range(3):
        b.take("busy", 0.0)  # emptied at t=0
    b.take("a", 0.0)
    b.take("b", 0.0)
    b.take("c", 1.0)  # table full: "a" and "b" are full again and go, "busy" is not
    assert sorted(b._buckets) == ["busy", "c"]


def test_full_table_fails_safe_new_keys_share_one_bucket() -> None:
    b = TokenBuckets(rate=1.0, capacity=2.0, max_entries=10)
    for i in range(9):
        b.take(f"busy{i}", 0.0)  # none has refilled: nothing can be pruned
    took = [b.take(f"new{i}", 0.0) for i in range(50)]
    assert took.count(True) == 2  # the overflow bucket's capacity, not one per new key
    assert len(b) <= 10
    assert not b.available("another", 0.0)


def test_unauth_limiter_burst_lets_a_crowd_through_then_holds_the_rate() -> None:
    lim = UnauthLimiter(100)
    burst = int(UnauthLimiter.BURST * 100)
    assert burst >= 2000  # 2,000 fresh clients behind one NAT, at once
    assert sum(lim.allow("1.2.3.4", NOW) for _ in range(burst + 500)) == burst
    assert sum(lim.allow("1.2.3.4", NOW + 1) for _ in range(1000)) == 100
    assert sum(UnauthLimiter(0).allow("x", NOW) for _ in range(1000)) == 1000


# -- failed authentications ----------------------------------------------------------------


def test_failures_lock_a_user_from_that_source_and_the_lock_wears_off() -> None:
    lim = AuthFailureLimiter(3, window=60.0)
    guesser = ("9.9.9.9", 5000)
    for _ in range(3):
        assert not lim.locked("alice", guesser, NOW)
        lim.failed("alice", guesser, NOW)
    assert lim.locked("alice", guesser, NOW)
    assert not lim.locked("alice", ("8.8.8.8", 5000), NOW + 10)  # locks out only himself
    assert not lim.locked("alice", ("9.9.9.9", 5001), NOW)  # ... not his NAT's other clients
    assert not lim.locked("bob", guesser, NOW)
    assert not lim.locked("alice", guesser, NOW + 20.1)  # one failure's worth came back


def test_a_guesser_hopping_ports_hits_the_looser_per_ip_cap() -> None:
    lim = AuthFailureLimiter(3, window=60.0)
    cap = 3 * AuthFailureLimiter.SHARED_IP_FACTOR
    for port in range(cap):
        assert not lim.locked("alice", ("9.9.9.9", 6000 + port), NOW)
        lim.failed("alice", ("9.9.9.9", 6000 + port), NOW)
    assert lim.locked("alice", ("9.9.9.9", 7777), NOW)  # no more guesses from that IP
    assert not lim.locked("bob", ("9.9.9.9", 7777), NOW)  # other users there: served


def test_failure_tables_are_bounded() -> None:
    lim = AuthFailureLimiter(2, window=60.0)
    for i in range(70_000):
        lim.failed("u", (f"ip{i}", i), NOW + i * 0.0001)
    assert len(lim._by_source) <= MAX_ENTRIES  # type: ignore[arg-type]


# -- in the state machine ------------------------------------------------------------------


def test_counters_and_lockout_in_the_state_machine() -> None:
    turn = new_server(AdminConfig(auth_failures_per_user=2))
    wrong = long_term_key("user-1", "stunner.l7mp.io", "nope")

    def allocate(key: bytes, who: tuple[str, int]) -> int:
        data = build(stun.METHOD_ALLOCATE, UDP, key=key, nonce=turn.nonce_for(ctx(who), NOW))
        (out,) = turn.handle_stun(ctx(who), data, NOW)
        msg = stun.parse_message(out[2])
        if msg.cls == stun.CLASS_SUCCESS:
            return 0
        return stun.decode_error_code(msg.get(stun.ATTR_ERROR_CODE) or b"")[0]

    assert allocate(KEY, OWNER) == 0
    assert allocate(wrong, STRANGER) == 401
    assert allocate(wrong, STRANGER) == 401
    assert (turn.auth_failures, turn.auth_locked) == (2, 0)
    assert allocate(KEY, STRANGER) == 401  # locked: the right key is not even checked
    assert (turn.auth_failures, turn.auth_locked) == (2, 1)
    assert turn.allocation_count == 1
    # the guesser's failures cost nobody else anything
    assert allocate(KEY, (OWNER[0], OWNER[1] + 1)) == 0


def test_limits_follow_a_live_config_change() -> None:
    turn = new_server(AdminConfig(unauth_rate_per_ip=1))
    burst = int(UnauthLimiter.BURST)
    sent = [
        turn.handle_stun(ctx(STRANGER), build(stun.METHOD_BINDING), NOW) for _ in range(burst + 3)
    ]
    assert sum(map(len, sent)) == burst and turn.rate_limited == 3
    turn.update_config(sm_config(AdminConfig(unauth_rate_per_ip=0)))
    sent = [turn.handle_stun(ctx(STRANGER), build(stun.METHOD_BINDING), NOW) for _ in range(50)]
    assert sum(map(len, sent)) == 50 and turn.rate_limited == 3
    kept = turn.unauth_limiter
    turn.update_config(sm_config(AdminConfig(unauth_rate_per_ip=0, user_quota=3)))
    assert turn.unauth_limiter is kept  # unchanged keys keep their state


# -- config keys ---------------------------------------------------------------------------


def test_admin_limit_keys_defaults_and_values() -> None:
    d = parse_config({"version": "v1", "auth": AUTH}, env={}).admin
    assert (d.unauth_rate_per_ip, d.auth_failures_per_user) == (100, 10)
    admin = {"unauth_rate_per_ip": 7, "auth_failures_per_user": 0}
    a = parse_config({"version": "v1", "auth": AUTH, "admin": admin}, env={}).admin
    assert (a.unauth_rate_per_ip, a.auth_failures_per_user) == (7, 0)
    cfg = parse_config({"version": "v1", "auth": AUTH, "admin": admin}, env={})
    assert parse_config(cfg.to_dict(), env={}) == cfg


@pytest.mark.parametrize("key", ["unauth_rate_per_ip", "auth_failures_per_user"])
@pytest.mark.parametrize("value", [-1, "lots", 2**31])
def test_admin_limit_keys_are_validated(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"version": "v1", "auth": AUTH, "admin": {key: value}}, env={})
    assert info.value.field == f"admin.{key}"


def test_a_locked_out_address_keeps_its_calls_and_its_other_clients_log_in() -> None:
    """One stranger on a shared NAT: the owner's allocation (same IP) keeps working, and until
    the guesser has tried from many ports, other clients of that IP log in."""
    limit = 2
    turn = new_server(AdminConfig(auth_failures_per_user=limit))
    wrong = long_term_key("user-1", "stunner.l7mp.io", "nope")

    def answer(method: int, attrs: Any, key: bytes, who: tuple[str, int]) -> int:
        n = turn.nonces.issue(NOW, nonce_binding("udp", who))
        (out,) = turn.handle_stun(ctx(who), build(method, attrs, key=key, nonce=n), NOW)
        msg = stun.parse_message(out[2])
        if msg.cls == stun.CLASS_SUCCESS:
            return 0
        return stun.decode_error_code(msg.get(stun.ATTR_ERROR_CODE) or b"")[0]

    assert answer(stun.METHOD_ALLOCATE, UDP, KEY, OWNER) == 0
    guesser = (OWNER[0], OWNER[1] + 1)
    for _ in range(limit + 3):
        assert answer(stun.METHOD_ALLOCATE, UDP, wrong, guesser) == 401
    assert answer(stun.METHOD_ALLOCATE, UDP, KEY, guesser) == 401  # his 5-tuple is locked
    assert answer(stun.METHOD_ALLOCATE, UDP, KEY, (OWNER[0], OWNER[1] + 2)) == 0  # a neighbour
    # now he hops ports until the whole IP is locked for that user ...
    for port in range(limit * AuthFailureLimiter.SHARED_IP_FACTOR):
        answer(stun.METHOD_ALLOCATE, UDP, wrong, (OWNER[0], 50000 + port))
    assert answer(stun.METHOD_ALLOCATE, UDP, KEY, (OWNER[0], 60000)) == 401
    # ... and the owner's requests on its allocation, signed with its key, still pass
    lifetime = [(stun.ATTR_LIFETIME, stun.encode_u32(600))]
    assert answer(stun.METHOD_REFRESH, lifetime, KEY, OWNER) == 0
    assert answer(stun.METHOD_CREATE_PERMISSION, peer_attr(PEER), KEY, OWNER) == 0
    assert turn.auth_locked >= 2
