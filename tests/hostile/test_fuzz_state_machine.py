"""Property tests on the TURN state machine with random and mutated-valid messages.

Whatever arrives, from the client that owns an allocation or from a stranger, over UDP or TCP:
- nothing raises out of handle_stun / handle_channel_data / handle_peer_data;
- a request gets at most one datagram back;
- no allocation, permission, channel or reservation changes unless the message carries a
  valid MESSAGE-INTEGRITY (checked with the real key as the oracle);
- answers to anything not validly signed carry no SOFTWARE, a NONCE of at most 36 bytes, and
  are at most AMPLIFICATION_BOUND times the size of the request (the largest ratio seen is
  printed by the last test of this file and quoted in the README).
"""

from __future__ import annotations

import pytest
from helpers.hostile_kit import (
    CHANNEL,
    KEY,
    NOW,
    OTHER_PEER,
    OWNER,
    PEER,
    REALM,
    STRANGER,
    build,
    corpus,
    ctx,
    loaded_server,
    method_bodies,
    new_server,
    snapshot,
    validly_signed,
)
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from stunner_dp import stun
from stunner_dp.config import AdminConfig
from stunner_dp.turn.ratelimit import UnauthLimiter

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

# An unauthenticated answer is at most this many times its request (requests of >= 20 bytes,
# the smallest a STUN message can be). The worst case is a bare 20-byte Allocate header that
# earns a 401: header 20 + ERROR-CODE 20 ("Unauthorized") + REALM 4 + len(realm) padded +
# NONCE 40 (35 characters: RFC 8489's nonce cookie and feature bits, 13, then ours) +
# PASSWORD-ALGORITHMS 12 (RFC 8489 9.2.4 requires both in every 401/438). With stunnerd's
# default realm (15 bytes) that is 112 bytes, 5.6x; a real client's first Allocate carries
# REQUESTED-TRANSPORT (28 bytes: 4.0x). Per source IP the rate limit caps what a spoofed
# victim can receive (admin.unauth_rate_per_ip answers a second).
AMPLIFICATION_BOUND = 5.6
MAX_NONCE = 36

_seen = {"ratio": 0.0, "in": 0, "out": 0, "what": ""}
_CORPUS = corpus(new_server().nonce_for(ctx(OWNER), NOW))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A corpus message with 0-4 random edits: bit flips, byte sets, truncation, extension,
    splicing with another message, and header-length repair so the attribute walk is reached."""
    data = bytearray(draw(st.sampled_from(_CORPUS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "splice", "fixlen"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.sampled_from([0x00, 0xFF, 0x80, 0x7F, 0x40, 0x01]))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "extend":
            data += draw(st.binary(max_size=64))
        elif op == "splice":
            other = draw(st.sampled_from(_CORPUS))
            cut = draw(st.integers(0, min(len(data), len(other))))
            data = data[:cut] + bytearray(other[cut:])
        elif op == "fixlen" and len(data) >= 20:
            data[2:4] = ((len(data) - 20) & 0xFFFF).to_bytes(2, "big")
    return bytes(data)


messages = st.one_of(mutated(), st.binary(min_size=0, max_size=200))
sources = st.sampled_from([OWNER, STRANGER])
listeners = st.sampled_from(["udp", "tcp"])


def _check_unauthenticated_answer(
    request: bytes, answer: bytes, what: str, *, guide: bool = True
) -> None:
    msg = stun.parse_message(answer)
    assert not msg.has(stun.ATTR_SOFTWARE), "SOFTWARE in an unauthenticated answer"
    assert not msg.has(stun.ATTR_MESSAGE_INTEGRITY)
    nonce = msg.get(stun.ATTR_NONCE)
    assert nonce is None or len(nonce) <= MAX_NONCE
    if len(request) >= 20:
        ratio = len(answer) / len(request)
        if guide and currently_in_test_context():
            target(ratio, label="amplification")
        if ratio > _seen["ratio"]:
            _seen.update(ratio=ratio, out=len(answer), what=what)
            _seen["in"] = len(request)
        assert ratio <= AMPLIFICATION_BOUND, (len(request), len(answer), msg)


@FUZZ
@given(data=messages, source=sources, listener=listeners)
def test_stun_input_never_raises_and_never_changes_state_unsigned(
    data: bytes, source: tuple[str, int], listener: str
) -> None:
    turn, _ = loaded_server()
    before = snapshot(turn)
    out = turn.handle_stun(ctx(source, listener), data, NOW + 1)
    signed = validly_signed(data)
    if not signed:
        assert snapshot(turn) == before
    try:
        msg = stun.parse_message(data)
    except stun.StunError:
        assert out == []
        return
    if msg.cls == stun.CLASS_REQUEST:
        assert len(out) <= 1
        if out and not signed:
            _check_unauthenticated_answer(data, out[0][2], stun.method_name(msg.method))
    elif msg.cls == stun.CLASS_INDICATION and msg.method == stun.METHOD_SEND:
        # a Send goes out only from the allocation's own client, to its permitted peer
        for sink, addr, _payload in out:
            assert source == OWNER and listener == "udp"
            assert sink is turn.allocations["udp"][OWNER].relay and addr == PEER
    else:
        assert out == []


@FUZZ
@given(data=messages, source=sources, listener=listeners)
def test_channel_data_goes_only_to_the_bound_peer(
    data: bytes, source: tuple[str, int], listener: str
) -> None:
    turn, alloc = loaded_server()
    before = snapshot(turn)
    out = turn.handle_channel_data(ctx(source, listener), data)
    assert snapshot(turn) == before
    for sink, addr, payload in out:
        assert (source, listener) == (OWNER, "udp")
        assert sink is alloc.relay and addr == PEER
        assert len(payload) <= len(data) - 4
        assert int.from_bytes(data[:2], "big") == CHANNEL


@FUZZ
@given(data=st.binary(max_size=300), peer=st.sampled_from([PEER, OTHER_PEER, (PEER[0], 1)]))
def test_peer_data_reaches_the_client_only_from_a_permitted_peer(
    data: bytes, peer: tuple[str, int]
) -> None:
    turn, alloc = loaded_server()
    out = turn.handle_peer_data(alloc, peer, data)
    if peer != PEER:
        # OTHER_PEER has no permission; PEER's IP with another port has one (all ports,
        # the wildcard cluster) and so may reach the client
        assert out == [] or peer[0] == PEER[0]
    for sink, addr, _ in out:
        assert sink is alloc.link and addr == OWNER


@FUZZ
@given(
    names=st.lists(st.sampled_from(sorted(method_bodies())), min_size=1, max_size=8),
    source=sources,
)
def test_unsigned_sequences_never_change_state(names: list[str], source: tuple[str, int]) -> None:
    """Whole sequences of well-formed unsigned or wrongly signed requests, not just one."""
    turn, _ = loaded_server()
    before = snapshot(turn)
    nonce = turn.nonce_for(ctx(source), NOW)
    wrong = b"\x00" * 16
    for i, name in enumerate(names):
        method, attrs = method_bodies()[name]
        data = build(method, attrs, key=wrong if i % 2 else None, nonce=nonce)
        out = turn.handle_stun(ctx(source), data, NOW + i)
        assert len(out) == 1
        _check_unauthenticated_answer(data, out[0][2], name, guide=False)
    assert snapshot(turn) == before


def test_valid_signatures_do_change_state() -> None:
    """The oracle is not vacuous: the same corpus, signed right, allocates and binds."""
    turn = new_server()
    nonce = turn.nonce_for(ctx(STRANGER), NOW)
    for name in ("Allocate", "CreatePermission", "ChannelBind", "Refresh"):
        method, attrs = method_bodies()[name]
        before = snapshot(turn)
        data = build(method, attrs, key=KEY, nonce=nonce)
        (answer,) = turn.handle_stun(ctx(STRANGER), data, NOW)
        assert stun.parse_message(answer[2]).cls == stun.CLASS_SUCCESS, name
        assert validly_signed(data)
        assert snapshot(turn) != before, name


@pytest.mark.parametrize("name", sorted(method_bodies()))
def test_smallest_requests_of_every_method(name: str) -> None:
    """The deterministic worst cases: bare headers and unsigned requests of every method."""
    method, attrs = method_bodies()[name]
    for data in (build(method), build(method, attrs), build(method, attrs, fingerprint=True)):
        turn = new_server()
        (answer,) = turn.handle_stun(ctx(STRANGER), data, NOW)
        _check_unauthenticated_answer(data, answer[2], name)


def test_amplification_is_bounded_and_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this file: prints the largest bytes-out/bytes-in ratio seen before
    authentication (over every test above) and holds it to the bound."""
    for name in sorted(method_bodies()):
        test_smallest_requests_of_every_method(name)
    ratio = _seen["ratio"]
    with capsys.disabled():
        print(
            f"\nlargest unauthenticated amplification: {ratio:.2f}x "
            f"({_seen['in']} bytes in -> {_seen['out']} out, {_seen['what']}; realm {REALM!r})"
        )
    assert 1.0 < ratio <= AMPLIFICATION_BOUND


def test_a_longer_realm_grows_the_challenge_by_its_length_only() -> None:
    realm = "r" * 100
    turn = new_server(realm=realm)
    data = build(stun.METHOD_ALLOCATE)
    (answer,) = turn.handle_stun(ctx(STRANGER), data, NOW)
    # ERROR-CODE, REALM, NONCE (35 bytes, padded), PASSWORD-ALGORITHMS (SHA-256, MD5)
    assert len(answer[2]) == 20 + 20 + (4 + 100) + (4 + 36) + (4 + 8)
    assert not stun.parse_message(answer[2]).has(stun.ATTR_SOFTWARE)


def test_rate_limit_applies_to_fuzzed_strangers_too() -> None:
    rate = 5
    burst = int(UnauthLimiter.BURST * rate)  # the bucket a stranger starts with
    turn = new_server(AdminConfig(unauth_rate_per_ip=rate))

    def answers(count: int, now: float) -> int:
        binding = build(stun.METHOD_BINDING)
        return sum(len(turn.handle_stun(ctx(STRANGER), binding, now)) for _ in range(count))

    # at once: the burst is answered, not one more
    assert answers(burst + 40, NOW) == burst
    assert turn.rate_limited == 40
    # two seconds later: burst + rate * t in all, the bucket refilled by rate * t alone
    assert answers(50, NOW + 2) == 2 * rate
    assert turn.rate_limited == 40 + 50 - 2 * rate
