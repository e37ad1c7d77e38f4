"""RFC 8489 long-term credentials on the state machine: SHA-256 (PASSWORD-ALGORITHM,
MESSAGE-INTEGRITY-SHA256), USERHASH, the nonce cookie and the bid-down checks of 9.2.4, the
attribute-order rules of 14.5-14.7 on requests, and TURN REST credentials with HMAC-SHA256 and
several secrets. MD5-only (RFC 5389) clients are the harness's default client."""

from __future__ import annotations

import os

import pytest
from helpers.turn_harness import (
    PASSWORD,
    REALM,
    SECRET,
    T0,
    UDP_TRANSPORT,
    USER,
    Client,
    Harness,
    assert_success,
    error_code,
    make_config,
    rest_password,
)

from stunner_dp import stun
from stunner_dp.config import AuthConfig
from stunner_dp.stun import Message
from stunner_dp.turn.auth import ephemeral_password, long_term_key, userhash

SHA256 = stun.PASSWORD_ALGORITHM_SHA256
MD5 = stun.PASSWORD_ALGORITHM_MD5
OFFER = stun.encode_password_algorithms([(SHA256, b""), (MD5, b"")])


def challenge(c: Client) -> Message:
    resp = c.fetch_nonce()
    assert c.nonce is not None
    return resp


def sha256_request(
    c: Client,
    method: int = stun.METHOD_ALLOCATE,
    attrs: list[tuple[int, bytes]] | None = None,
    *,
    offer: bytes | None = OFFER,
    choice: int | None = SHA256,
    key_algorithm: int = SHA256,
    identity: tuple[int, bytes] | None = None,
    nonce: bytes | None = None,
    mi256: bool = True,
    mi: bool = False,
    password: str = PASSWORD,
    username: str = USER,
    trailer: bytes = b"",
) -> bytes:
    """A request as an RFC 8489 client builds it after a challenge; every part can be bent."""
    body = list(UDP_TRANSPORT if attrs is None else attrs)
    body += [
        identity or (stun.ATTR_USERNAME, username.encode()),
        (stun.ATTR_REALM, REALM.encode()),
        (stun.ATTR_NONCE, nonce if nonce is not None else (c.nonce or b"")),
    ]
    if offer is not None:
        body.append((stun.ATTR_PASSWORD_ALGORITHMS, offer))
    if choice is not None:
        body.append((stun.ATTR_PASSWORD_ALGORITHM, stun.encode_password_algorithm(choice)))
    key = long_term_key(username, REALM, password, key_algorithm)
    data = stun.encode_message(
        method,
        stun.CLASS_REQUEST,
        os.urandom(12),
        body,
        integrity_key=key if mi else None,
        integrity_sha256_key=key if mi256 else None,
    )
    if trailer:  # attributes after the integrity attributes, length fixed up
        data += trailer
        data = data[:2] + (len(data) - 20).to_bytes(2, "big") + data[4:]
    return data


# -- the challenge ------------------------------------------------------------------------------


def test_challenge_carries_the_nonce_cookie_and_password_algorithms() -> None:
    resp = challenge(Harness().client())
    nonce = (resp.get(stun.ATTR_NONCE) or b"").decode()
    both = stun.SECURITY_FEATURE_PASSWORD_ALGORITHMS | stun.SECURITY_FEATURE_USERNAME_ANONYMITY
    assert nonce.startswith("obMatJos2") and stun.nonce_features(nonce) == both
    assert resp.get(stun.ATTR_PASSWORD_ALGORITHMS) == OFFER  # SHA-256 first: our preference
    assert resp.integrity_offset < 0 and resp.integrity_sha256_offset < 0


def test_ephemeral_challenge_offers_no_username_anonymity() -> None:
    """REST usernames cannot be listed, so no USERHASH can name one: the bit stays clear."""
    h = Harness(make_config(auth=AuthConfig(type="ephemeral", realm=REALM, secret=SECRET)))
    nonce = (challenge(h.client()).get(stun.ATTR_NONCE) or b"").decode()
    assert stun.nonce_features(nonce) == stun.SECURITY_FEATURE_PASSWORD_ALGORITHMS


def test_stale_nonce_answer_carries_password_algorithms() -> None:
    h = Harness()
    c = h.client()
    challenge(c)
    resp = c.transact(sha256_request(c), now=T0 + 601)
    assert error_code(resp) == 438
    assert resp.get(stun.ATTR_PASSWORD_ALGORITHMS) == OFFER


# -- SHA-256 --------------------------------------------------------------------------------


def test_sha256_client_allocates_and_answers_are_signed_with_sha256() -> None:
    h = Harness()
    c = h.client()
    challenge(c)
    resp = c.transact(sha256_request(c))
    assert_success(resp, stun.METHOD_ALLOCATE)
    key = long_term_key(USER, REALM, PASSWORD, SHA256)
    assert resp.integrity_offset < 0, "a SHA-256 request gets a SHA-256 answer only"
    assert resp.check_integrity_sha256(key)
    assert h.allocation(c).key == key
    # the allocation's later requests, signed the same way
    tid = os.urandom(12)
    peer = [(stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(("93.184.216.34", 7000), tid))]
    perm = c.transact(sha256_request(c, stun.METHOD_CREATE_PERMISSION, peer))
    assert_success(perm, stun.METHOD_CREATE_PERMISSION)
    assert perm.check_integrity_sha256(key) and perm.integrity_offset < 0


def test_md5_password_with_sha256_integrity() -> None:
    """PASSWORD-ALGORITHM MD5 with MESSAGE-INTEGRITY-SHA256: the MD5 key, the SHA-256 MAC."""
    h = Harness()
    c = h.client()
    challenge(c)
    resp = c.transact(sha256_request(c, choice=MD5, key_algorithm=MD5))
    assert_success(resp, stun.METHOD_ALLOCATE)
    assert resp.check_integrity_sha256(long_term_key(USER, REALM, PASSWORD))


def test_md5_client_unchanged() -> None:
    """An RFC 5389 client ignores the cookie and PASSWORD-ALGORITHMS: MD5, MESSAGE-INTEGRITY,
    and its answers carry MESSAGE-INTEGRITY only."""
    h = Harness()
    c = h.client()
    resp = c.allocate()
    assert_success(resp, stun.METHOD_ALLOCATE)
    assert resp.integrity_sha256_offset < 0 and resp.check_integrity(c.key)


def test_both_integrity_attributes_sha256_is_checked_and_answered() -> None:
    h = Harness()
    c = h.client()
    challenge(c)
    resp = c.transact(sha256_request(c, mi=True))
    assert_success(resp, stun.METHOD_ALLOCATE)
    assert resp.integrity_sha256_offset > 0 and resp.integrity_offset < 0


def test_sha256_request_with_a_wrong_password_is_401() -> None:
    h = Harness()
    c = h.client()
    challenge(c)
    resp = c.transact(sha256_request(c, password="not-it"))
    assert error_code(resp) == 401
    assert resp.get(stun.ATTR_PASSWORD_ALGORITHMS) == OFFER
    assert not h.has_allocation(c)


def test_sha256_key_with_md5_choice_is_401() -> None:
    """The key follows PASSWORD-ALGORITHM: a MAC under the SHA-256 key for an MD5 choice fails."""
    h = Harness()
    c = h.client()
    challenge(c)
    assert error_code(c.transact(sha256_request(c, choice=MD5, key_algorithm=SHA256))) == 401


# -- USERHASH -------------------------------------------------------------------------------


def test_userhash_authenticates_the_static_user() -> None:
    h = Harness()
    c = h.client()
    challenge(c)
    ident = (stun.ATTR_USERHASH, userhash(USER, REALM))
    resp = c.transact(sha256_request(c, identity=ident))
    assert_success(resp, stun.METHOD_ALLOCATE)
    assert h.allocation(c).username == USER


def test_unknown_userhash_is_401() -> None:
    h = Harness()
    c = h.client()
    challenge(c)
    ident = (stun.ATTR_USERHASH, userhash("someone-else", REALM))
    assert error_code(c.transact(sha256_request(c, identity=ident))) == 401
    ident = (stun.ATTR_USERHASH, b"short")
    assert error_code(c.transact(sha256_request(c, identity=ident))) == 401


def test_missing_username_and_userhash_is_400() -> None:
    h = Harness()
    c = h.client()
    challenge(c)
    data = stun.encode_message(
        stun.METHOD_ALLOCATE,
        stun.CLASS_REQUEST,
        os.urandom(12),
        [*UDP_TRANSPORT, (stun.ATTR_REALM, REALM.encode()), (stun.ATTR_NONCE, c.nonce or b"")],
        integrity_sha256_key=long_term_key(USER, REALM, PASSWORD, SHA256),
    )
    assert error_code(c.transact(data)) == 400


# -- bid-down (9.2.4) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "choice"),
    [
        # a man in the middle removed SHA-256 from the 401: the client echoes what it saw
        pytest.param(stun.encode_password_algorithms([(MD5, b"")]), MD5, id="sha256-removed"),
        # reordered (MD5 first, to steer a client that takes the first)
        pytest.param(stun.encode_password_algorithms([(MD5, b""), (SHA256, b"")]), MD5, id="order"),
        # PASSWORD-ALGORITHMS removed from the 401, the client still names an algorithm
        pytest.param(None, MD5, id="list-removed"),
        # the list echoed, no choice
        pytest.param(OFFER, None, id="choice-missing"),
        # a choice outside the list
        pytest.param(OFFER, 0x0003, id="choice-not-offered"),
    ],
)
def test_bid_down_is_400(offer: bytes | None, choice: int | None) -> None:
    h = Harness()
    c = h.client()
    challenge(c)
    key_alg = choice if choice in (MD5, SHA256) else MD5
    resp = c.transact(sha256_request(c, offer=offer, choice=choice, key_algorithm=key_alg or MD5))
    assert error_code(resp) == 400
    assert not h.has_allocation(c)


def test_feature_bits_stripped_from_the_nonce_is_438() -> None:
    """A man in the middle clears the cookie's bits so that the client falls back to MD5: the
    nonce's MAC covers the bits, so the doctored nonce is not ours; 438 with a fresh one, and
    nothing is allocated under it."""
    h = Harness()
    c = h.client()
    challenge(c)
    assert c.nonce is not None
    doctored = b"obMatJos2AAAA" + c.nonce[13:]
    c.nonce = doctored
    resp = c.transact(c.build(stun.METHOD_ALLOCATE, UDP_TRANSPORT))  # MD5, MESSAGE-INTEGRITY
    assert error_code(resp) == 438
    fresh = (resp.get(stun.ATTR_NONCE) or b"").decode()
    assert fresh != doctored.decode()
    assert stun.nonce_features(fresh) & stun.SECURITY_FEATURE_PASSWORD_ALGORITHMS
    assert not h.has_allocation(c)
    # the cookie removed altogether: the same
    c.nonce = doctored[13:]
    assert error_code(c.transact(c.build(stun.METHOD_ALLOCATE, UDP_TRANSPORT))) == 438


# -- attribute order (14.5-14.7) on a request --------------------------------------------------


def test_attribute_after_integrity_is_ignored_by_the_server() -> None:
    """An unknown comprehension-required attribute after MESSAGE-INTEGRITY-SHA256 (say, added
    by a middlebox) is ignored: no 420, the request succeeds."""
    h = Harness()
    c = h.client()
    challenge(c)
    junk = (0x0777).to_bytes(2, "big") + (4).to_bytes(2, "big") + b"junk"
    resp = c.transact(sha256_request(c, trailer=junk))
    assert_success(resp, stun.METHOD_ALLOCATE)


def test_username_after_integrity_cannot_change_the_user() -> None:
    h = Harness()
    c = h.client()
    challenge(c)
    data = c.build(stun.METHOD_ALLOCATE, UDP_TRANSPORT, username="", fingerprint=False)
    evil = b"mallory!"
    data += (stun.ATTR_USERNAME).to_bytes(2, "big") + len(evil).to_bytes(2, "big") + evil
    data = data[:2] + (len(data) - 20).to_bytes(2, "big") + data[4:]
    # the USERNAME before MESSAGE-INTEGRITY is empty: 401, and the trailing one is not used
    assert error_code(c.transact(data)) == 401


# -- TURN REST: HMAC-SHA256 and several secrets ------------------------------------------------


def rest_harness(**kw: object) -> Harness:
    auth = AuthConfig(type="ephemeral", realm=REALM, secret=SECRET, **kw)  # type: ignore[arg-type]
    return Harness(make_config(auth=auth))


def rest_user() -> str:
    return f"{int(T0) + 3600}:alice"


def test_rest_hmac_sha256() -> None:
    h = rest_harness(rest_hmac="sha256")
    name = rest_user()
    good = h.client(username=name, password=ephemeral_password(SECRET, name, "sha256"))
    assert_success(good.allocate(), stun.METHOD_ALLOCATE)
    sha1 = h.client(("192.0.2.11", 40000), username=name, password=rest_password(SECRET, name))
    assert error_code(sha1.allocate()) == 401


def test_previous_secrets_accepted_first_one_issues() -> None:
    h = rest_harness(previous_secrets=("old-secret", "older-secret"))
    name = rest_user()
    for i, secret in enumerate((SECRET, "old-secret", "older-secret")):
        c = h.client(("192.0.2.20", 40000 + i), username=name, password=rest_password(secret, name))
        assert_success(c.allocate(), stun.METHOD_ALLOCATE)
    gone = h.client(("192.0.2.21", 1), username=name, password=rest_password("retired", name))
    assert error_code(gone.allocate()) == 401
    assert h.server.credentials.secrets[0] == SECRET


def test_secret_rotation_keeps_live_clients() -> None:
    """Rotate: the new secret first, the old one listed as previous. A client that got its
    password before the rotation logs in afresh after it."""
    name = rest_user()
    password = rest_password(SECRET, name)
    h = rest_harness()
    live = h.client(username=name, password=password)
    assert_success(live.allocate(), stun.METHOD_ALLOCATE)
    auth = AuthConfig(
        type="ephemeral", realm=REALM, secret="new-secret", previous_secrets=(SECRET,)
    )
    h.server.update_config(make_config(auth=auth))
    again = h.client(("192.0.2.30", 1), username=name, password=password)
    assert_success(again.allocate(), stun.METHOD_ALLOCATE)
    assert_success(live.refresh(), stun.METHOD_REFRESH)


def test_sha256_rest_user_with_sha256_password_algorithm() -> None:
    h = rest_harness(rest_hmac="sha256", previous_secrets=("old",))
    name = rest_user()
    c = h.client(username=name)
    challenge(c)
    password = ephemeral_password("old", name, "sha256")
    resp = c.transact(sha256_request(c, username=name, password=password))
    assert_success(resp, stun.METHOD_ALLOCATE)
    assert resp.check_integrity_sha256(long_term_key(name, REALM, password, SHA256))
