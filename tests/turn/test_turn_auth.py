"""Long-term credentials: static and ephemeral (TURN REST API) users, stateless nonces."""

from __future__ import annotations

import pytest
from helpers.turn_harness import (
    PASSWORD,
    REALM,
    SECRET,
    T0,
    UDP_TRANSPORT,
    USER,
    Harness,
    assert_success,
    ephemeral_auth,
    error_code,
    lt_key,
    make_config,
    rest_password,
)

from stunner_dp import stun
from stunner_dp.turn import events as ev

ALLOCATE = stun.METHOD_ALLOCATE


def assert_challenge(resp: stun.Message, code: int) -> bytes:
    """A 401/438 challenge: REALM and a NONCE, unsigned; returns the nonce."""
    assert error_code(resp) == code
    assert resp.get(stun.ATTR_REALM) == REALM.encode()
    nonce = resp.get(stun.ATTR_NONCE)
    assert nonce
    assert resp.integrity_offset == -1
    return nonce


def test_wrong_password_is_401() -> None:
    h = Harness()
    c = h.client(password="not-pass-1")
    resp = c.allocate()
    assert_challenge(resp, 401)
    assert h.server.allocation_count == 0 and h.relays.calls == []
    [failed] = h.events(ev.AuthFailed)
    assert (failed.username, failed.reason, failed.listener) == (USER, "wrong password", "udp")


def test_unknown_user_is_401() -> None:
    h = Harness()
    c = h.client(username="mallory", password=PASSWORD)
    assert_challenge(c.allocate(), 401)
    [failed] = h.events(ev.AuthFailed)
    assert (failed.username, failed.reason) == ("mallory", "unknown username")


def test_wrong_realm_is_401() -> None:
    h = Harness()
    c = h.client()
    c.fetch_nonce()
    c.realm = "other.realm"
    assert_challenge(c.allocate(), 401)
    assert h.events(ev.AuthFailed)[0].reason == "realm mismatch"


@pytest.mark.parametrize("method", [stun.METHOD_REFRESH, stun.METHOD_CREATE_PERMISSION,
                                    stun.METHOD_CHANNEL_BIND])  # fmt: skip
def test_every_turn_method_is_challenged(method: int) -> None:
    c = Harness().client()
    assert_challenge(c.transact(c.build(method, auth=False)), 401)


@pytest.mark.parametrize("drop", [stun.ATTR_USERNAME, stun.ATTR_REALM, stun.ATTR_NONCE])
def test_integrity_without_username_realm_or_nonce_is_400(drop: int) -> None:
    h = Harness()
    c = h.client()
    c.fetch_nonce()
    attrs = [
        (stun.ATTR_USERNAME, USER.encode()),
        (stun.ATTR_REALM, REALM.encode()),
        (stun.ATTR_NONCE, c.nonce or b""),
    ]
    attrs = UDP_TRANSPORT + [a for a in attrs if a[0] != drop]
    req = stun.encode_message(ALLOCATE, stun.CLASS_REQUEST, b"x" * 12, attrs, integrity_key=c.key)
    assert error_code(c.transact(req)) == 400
    assert h.server.allocation_count == 0


def test_stale_nonce_is_438_with_a_fresh_nonce_that_works() -> None:
    h = Harness()
    c = h.client()
    c.fetch_nonce(T0)
    old = c.nonce
    # 600 s old: still good
    assert_success(c.request(stun.METHOD_BINDING, now=T0 + 600), stun.METHOD_BINDING)
    assert_success(c.allocate(now=T0 + 600), ALLOCATE)
    assert_success(c.refresh(now=T0 + 600.9), stun.METHOD_REFRESH)  # int(now) - t = 600
    # 601 s old: stale
    resp = c.refresh(now=T0 + 601)
    fresh = assert_challenge(resp, 438)
    assert fresh != old
    assert h.allocation(c).expires == T0 + 600.9 + 600  # the stale refresh changed nothing
    c.learn(resp)
    assert_success(c.refresh(1200, now=T0 + 601), stun.METHOD_REFRESH)
    assert h.allocation(c).expires == T0 + 601 + 1200


def test_forged_nonce_is_rejected() -> None:
    h = Harness()
    c = h.client()
    c.fetch_nonce(T0)
    assert c.nonce is not None
    forged = bytes([c.nonce[0] ^ 1]) + c.nonce[1:]  # same length, wrong MAC
    assert error_code(c.allocate(nonce=forged)) == 438
    assert error_code(c.allocate(nonce=b"short")) == 438
    assert h.server.allocation_count == 0


def test_nonce_from_another_server_secret_is_rejected() -> None:
    a, b = Harness(), Harness()
    b.server.nonces._secret = b"another secret"
    ca = a.client()
    ca.fetch_nonce(T0)
    cb = b.client()
    cb.nonce = ca.nonce
    assert error_code(cb.allocate()) == 438


# -- ephemeral (TURN REST API) ------------------------------------------------------------------


def ephemeral(expiry: float, user: str = "alice", secret: str = SECRET) -> tuple[str, str]:
    username = f"{int(expiry)}:{user}"
    return username, rest_password(secret, username)


def test_ephemeral_credentials_succeed() -> None:
    h = Harness(make_config(auth=ephemeral_auth()))
    username, password = ephemeral(T0 + 3600)
    # the helper itself, pinned to a value computed with openssl:
    # printf 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64
    assert rest_password("secret", "1700000000:alice") == "d8soP47RbdIKLDUOpnJPVQyq5Ts="
    c = h.client(username=username, password=password)
    resp = c.allocate(now=T0)
    assert_success(resp, ALLOCATE)
    assert resp.check_integrity(lt_key(username, REALM, password))
    assert h.allocation(c).username == username


def test_ephemeral_username_up_to_its_expiry_then_401() -> None:
    h = Harness(make_config(auth=ephemeral_auth()))
    username, password = ephemeral(T0 + 100)
    c = h.client(username=username, password=password)
    assert_success(c.allocate(now=T0 + 100), ALLOCATE)  # the expiry second itself is fine
    resp = c.refresh(now=T0 + 101)
    assert_challenge(resp, 401)
    [failed] = h.events(ev.AuthFailed)
    assert failed.username == username
    assert "expired" in failed.reason


def test_expired_ephemeral_username_is_401() -> None:
    h = Harness(make_config(auth=ephemeral_auth()))
    username, password = ephemeral(T0 - 1)
    assert_challenge(h.client(username=username, password=password).allocate(now=T0), 401)
    assert h.server.allocation_count == 0


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (f"{int(T0) + 3600}:alice", rest_password("wrong secret", f"{int(T0) + 3600}:alice")),
        (f"{int(T0) + 3600}:alice", rest_password(SECRET, f"{int(T0) + 3601}:alice")),
        ("alice", rest_password(SECRET, "alice")),  # no timestamp at all
    ],
    ids=["wrong-secret", "password-of-another-username", "no-timestamp"],
)
def test_bad_ephemeral_credentials_are_401(username: str, password: str) -> None:
    h = Harness(make_config(auth=ephemeral_auth()))
    assert_challenge(h.client(username=username, password=password).allocate(now=T0), 401)
    assert h.server.allocation_count == 0


def test_static_user_cannot_log_in_when_auth_is_ephemeral() -> None:
    h = Harness(make_config(auth=ephemeral_auth()))
    assert_challenge(h.client().allocate(), 401)


def test_nonce_cache_holds_only_genuine_nonces_and_still_ages_them() -> None:
    from stunner_dp.turn.auth import NONCE_LIFETIME, Nonces, NonceState, nonce_binding

    nonces = Nonces(b"secret")
    me, other = nonce_binding("udp", ("192.0.2.1", 1000)), nonce_binding("udp", ("192.0.2.1", 1001))
    good = nonces.issue(T0, me)
    assert nonces.issue(T0 + 0.5, me) == good  # the same client, the same second
    assert nonces.issue(T0, other) != good  # each client its own
    assert nonces.check(good, T0 + 1, me) is NonceState.OK
    assert nonces.check(good, T0 + 1, other) is NonceState.INVALID  # cached, yet still bound
    assert nonces.check(good, T0 + NONCE_LIFETIME + 1, me) is NonceState.STALE  # and aged
    forged = "A" * 22
    for _ in range(3):
        assert nonces.check(forged, T0, me) is NonceState.INVALID
    assert (forged, me) not in nonces._genuine
    assert Nonces(b"other").check(good, T0, me) is NonceState.INVALID
