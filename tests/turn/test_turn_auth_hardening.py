"""Issue 13, authentication: TURN REST usernames that are not ASCII timestamps, nonces bound
to the client, the REALM checked, one path for unknown users and wrong passwords, and a guard
that turns a bug in request handling into a counted, dropped packet."""

from __future__ import annotations

import string

import pytest
from helpers.turn_harness import (
    CLIENT,
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
from hypothesis import given, settings
from hypothesis import strategies as st

from stunner_dp import stun
from stunner_dp.turn import events as ev
from stunner_dp.turn.auth import ephemeral_expiry, quota_user

ALLOCATE = stun.METHOD_ALLOCATE


def _ephemeral_harness() -> Harness:
    return Harness(make_config(auth=ephemeral_auth()))


# -- TURN REST usernames --------------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    [
        "²:x",  # SUPERSCRIPT TWO: str.isdigit() says yes, int() says no
        "1²:alice",
        "٣٣٣٣٣٣٣٣٣٣:alice",  # ARABIC-INDIC digits: int() would take them as 3333333333
        "\uff11\uff17" + "\uff19" * 8 + ":alice",  # FULLWIDTH digits
        "9" * 500 + ":alice",  # past any real timestamp, and long
    ],
)
def test_rest_username_without_an_ascii_timestamp_is_401(username: str) -> None:
    h = _ephemeral_harness()
    c = h.client(username=username, password=rest_password(SECRET, username))
    resp = c.allocate(now=T0)
    assert error_code(resp) == 401
    assert resp.get(stun.ATTR_REALM) == REALM.encode()
    assert h.server.allocation_count == 0
    assert h.server.internal_errors == 0
    [failed] = h.events(ev.AuthFailed)
    assert failed.username == username


def test_rest_username_with_an_ascii_timestamp_still_works() -> None:
    h = _ephemeral_harness()
    username = f"alice:{int(T0) + 60}"  # the timestamp need not come first
    c = h.client(username=username, password=rest_password(SECRET, username))
    assert_success(c.allocate(now=T0), ALLOCATE)


_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(string.digits + ":"),
        st.characters(categories=("Nd", "No", "Nl")),  # every kind of Unicode digit
        st.characters(codec="utf-8"),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(username=_TEXT)
def test_rest_username_parser_takes_ascii_digits_only(username: str) -> None:
    expiry = ephemeral_expiry(username)  # never raises
    # a timestamp: 1 to 20 ASCII digits (20 already pass 2**64)
    ascii_parts = [
        p for p in username.split(":") if 0 < len(p) <= 20 and all("0" <= c <= "9" for c in p)
    ]
    if expiry is None:
        assert not ascii_parts
    else:
        assert expiry == int(ascii_parts[0])
    assert isinstance(quota_user(username, "ephemeral"), str)


@settings(max_examples=150, deadline=None)
@given(username=_TEXT.filter(lambda u: 0 < len(u.encode()) <= stun.MAX_USERNAME_BYTES))
def test_any_rest_username_gets_one_answer_and_no_exception(username: str) -> None:
    h = _ephemeral_harness()
    c = h.client(username=username, password=rest_password(SECRET, username))
    resp = c.allocate(now=T0)  # transact: exactly one answer
    assert resp.cls in (stun.CLASS_SUCCESS, stun.CLASS_ERROR)
    assert h.server.internal_errors == 0


# -- a bug in a handler costs one packet ------------------------------------------------------


def test_an_unexpected_exception_is_counted_and_dropped_not_raised() -> None:
    h = Harness()
    c = h.client()
    assert_success(c.allocate(), ALLOCATE)

    def broken(*_: object) -> list[tuple[int, bytes]]:
        raise ZeroDivisionError("a bug")

    h.server._handlers[stun.METHOD_REFRESH] = broken
    for _ in range(3):
        assert c.send(c.build(stun.METHOD_REFRESH)) == []
    assert h.server.internal_errors == 3
    failures = h.events(ev.RequestFailed)
    assert len(failures) == 3
    assert isinstance(failures[0].error, ZeroDivisionError)
    assert failures[0].client == CLIENT
    # everything else still works
    assert_success(c.create_permission(("93.184.216.34", 7000)), stun.METHOD_CREATE_PERMISSION)


# -- nonces bound to the client --------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "listener"),
    [
        (("192.0.2.99", 40000), "udp"),  # another IP
        ((CLIENT[0], CLIENT[1] + 1), "udp"),  # the same IP, another port (a shared NAT)
        (CLIENT, "tcp"),  # the same address over another transport
    ],
    ids=["other-ip", "other-port", "other-transport"],
)
def test_a_replayed_allocate_from_another_address_is_438(
    addr: tuple[str, int], listener: str
) -> None:
    h = Harness()
    victim = h.client()
    victim.fetch_nonce()
    signed = victim.build(ALLOCATE, UDP_TRANSPORT)
    thief = h.client(addr, listener=listener)
    resp = thief.transact(signed)
    assert error_code(resp) == 438
    assert h.server.allocation_count == 0
    fresh = resp.get(stun.ATTR_NONCE)
    assert fresh and fresh != victim.nonce
    # the victim's own request, from its own address, is still good
    assert_success(victim.transact(signed), ALLOCATE)
    # and the thief, with a nonce of its own, is a client like any other
    thief.learn(resp)
    assert_success(thief.allocate(), ALLOCATE)


def test_nonces_are_stateless_any_server_with_the_secret_checks_them() -> None:
    a, b = Harness(), Harness()  # two workers, one secret
    ca = a.client()
    ca.fetch_nonce()
    cb = b.client()
    cb.nonce = ca.nonce
    assert_success(cb.allocate(), ALLOCATE)


# -- REALM --------------------------------------------------------------------------------


def test_another_realm_signed_with_this_realms_key_is_401_with_this_realm() -> None:
    h = Harness()
    c = h.client()
    c.fetch_nonce()
    c.realm = "other.realm"
    this_realms_key = lt_key(USER, REALM, c.password)
    resp = c.transact(c.build(ALLOCATE, UDP_TRANSPORT, key=this_realms_key))
    assert error_code(resp) == 401
    assert resp.get(stun.ATTR_REALM) == REALM.encode()
    assert h.server.allocation_count == 0
    [failed] = h.events(ev.AuthFailed)
    assert failed.reason == "realm mismatch"


def test_another_realm_is_refused_on_an_existing_allocation_too() -> None:
    h = Harness()
    c = h.client()
    assert_success(c.allocate(), ALLOCATE)
    c.realm = "other.realm"
    key = lt_key(USER, REALM, c.password)
    assert error_code(c.transact(c.build(stun.METHOD_REFRESH, key=key))) == 401


# -- unknown user and wrong password take the same path -----------------------------------------


def _integrity_checks(monkeypatch: pytest.MonkeyPatch, username: str, password: str) -> int:
    calls = 0
    original = stun.Message.check_integrity

    def counting(self: stun.Message, key: bytes) -> bool:
        nonlocal calls
        calls += 1
        return original(self, key)

    h = Harness()
    c = h.client(username=username, password=password)
    c.fetch_nonce()
    with monkeypatch.context() as m:
        m.setattr(stun.Message, "check_integrity", counting)
        assert error_code(c.allocate()) == 401
    return calls


def test_unknown_user_costs_the_same_integrity_check_as_a_wrong_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong_password = _integrity_checks(monkeypatch, USER, "not-the-password")
    unknown_user = _integrity_checks(monkeypatch, "mallory", "not-the-password")
    assert wrong_password == unknown_user == 1
