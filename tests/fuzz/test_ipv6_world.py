"""The fuzz target's IPv6 world (tests/fuzz/ipv6_kit.py) is what it says, and its seeds reach
the paths they were written for: a seed the state machine refuses for a reason nobody meant
would leave the fuzzer exploring 4xx answers only. Runs without atheris."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.hostile_kit import KEY as KEY4
from helpers.hostile_kit import (
    NOW,
    OWNER,
    PEER,
    UDP,
    Attrs,
    FakeRelay,
    build,
    ctx,
    peer_attr,
)
from helpers.hostile_kit import USER as USER4
from ipv6_kit import (
    ODD_PEERS6,
    OTHER_PEER6,
    OWNER6,
    PEER6,
    RELAY_IP6,
    STRANGER6,
    V4_CHANNEL,
    V6,
    channel_data_seeds,
    ipv6_corpus,
    loaded_dual_server,
    nonce_of,
)

from stunner_dp import stun
from stunner_dp.turn.server import TurnServer
from stunner_dp.turn.types import Addr

CORPUS = Path(__file__).resolve().parent / "corpus"


def _relays(turn: TurnServer, client: Addr) -> list[str]:
    return [r.address[0] for r in turn.allocations["udp"][client].relays]


def _ask(
    turn: TurnServer, client: Addr, method: int, attrs: Callable[[bytes], Attrs] | Attrs
) -> stun.Message:
    data = build(method, attrs, key=KEY4, nonce=nonce_of(turn, client), username=USER4)
    out = turn.handle_stun(ctx(client), data, NOW + 1)
    assert len(out) == 1
    return stun.parse_message(out[0][2])


@pytest.mark.parametrize(
    ("owner", "relays"), [(OWNER, [RELAY_IP6]), (OWNER6, ["198.51.100.1", RELAY_IP6])]
)
def test_each_owner_holds_the_allocation_the_world_promises(owner: Addr, relays: list[str]) -> None:
    turn = loaded_dual_server(owner)
    assert list(turn.allocations["udp"]) == [owner]
    assert _relays(turn, owner) == relays
    assert turn.allocations["udp"][owner].channels[0x4000].peer == PEER6


@pytest.mark.parametrize("owner", [OWNER, OWNER6])
def test_ipv6_peers_get_permissions_channels_and_send(owner: Addr) -> None:
    turn = loaded_dual_server(owner)
    assert _ask(turn, owner, stun.METHOD_CREATE_PERMISSION, peer_attr(OTHER_PEER6)).cls == (
        stun.CLASS_SUCCESS
    )
    tid = b"\x07" * 12
    send = [*peer_attr(PEER6)(tid), (stun.ATTR_DATA, b"to-v6")]
    data = build(stun.METHOD_SEND, send, cls=stun.CLASS_INDICATION, tid=tid)
    [(relay, addr, payload)] = turn.handle_stun(ctx(owner), data, NOW + 1)
    assert isinstance(relay, FakeRelay) and relay.address[0] == RELAY_IP6
    assert (addr, payload) == (PEER6, b"to-v6")
    [(relay, addr, _)] = turn.handle_channel_data(ctx(owner), channel_data_seeds()[0])
    assert isinstance(relay, FakeRelay) and (relay.address[0], addr) == (RELAY_IP6, PEER6)


def test_dual_allocation_drops_its_ipv6_relay_and_keeps_its_ipv4_channel() -> None:
    turn = loaded_dual_server(OWNER6)
    assert turn.allocations["udp"][OWNER6].channels[V4_CHANNEL].peer == PEER
    [(relay, addr, _)] = turn.handle_channel_data(ctx(OWNER6), channel_data_seeds()[1])
    assert isinstance(relay, FakeRelay) and addr == PEER and ":" not in relay.address[0]
    zero = [*V6, (stun.ATTR_LIFETIME, stun.encode_u32(0))]
    assert _ask(turn, OWNER6, stun.METHOD_REFRESH, zero).cls == stun.CLASS_SUCCESS
    assert _relays(turn, OWNER6) == ["198.51.100.1"]


def test_a_stranger_of_either_family_gets_an_ipv6_relay() -> None:
    for stranger in (STRANGER6, ("192.0.2.77", 4000)):
        turn = loaded_dual_server(OWNER6)
        resp = _ask(turn, stranger, stun.METHOD_ALLOCATE, UDP + V6)
        raw = resp.get(stun.ATTR_XOR_RELAYED_ADDRESS)
        assert raw is not None, stun.decode_error_code(resp.get(stun.ATTR_ERROR_CODE) or b"")
        assert stun.decode_xor_address(raw, resp.transaction_id)[0] == RELAY_IP6


def test_odd_ipv6_peers_are_refused_with_an_answer_not_an_error() -> None:
    turn = loaded_dual_server(OWNER)
    for peer in ODD_PEERS6:
        resp = _ask(turn, OWNER, stun.METHOD_CREATE_PERMISSION, peer_attr(peer))
        assert resp.cls in (stun.CLASS_SUCCESS, stun.CLASS_ERROR)
    assert turn.internal_errors == 0


def test_the_checked_in_corpus_has_the_ipv6_seeds() -> None:
    """make_corpus.py was run after ipv6_kit.py changed: IPv6-world seeds from both owners,
    and the codec sees IPv6 XOR-RELAYED-ADDRESS."""
    seeds = [p.read_bytes() for p in CORPUS.iterdir()]
    world6 = [s for s in seeds if s[0] & 1 and s[1] & 16]
    assert {s[1] & 32 for s in world6} == {0, 32}
    assert len(world6) >= len(ipv6_corpus("n")) * 4
    relayed6 = 0
    for seed in seeds:
        if seed[0] & 1 or not stun.is_stun(seed[2:]):
            continue
        msg = stun.parse_message(seed[2:])
        for value in msg.get_all(stun.ATTR_XOR_RELAYED_ADDRESS):
            relayed6 += ":" in stun.decode_xor_address(value, msg.transaction_id)[0]
    assert relayed6 > 0
