"""Coverage-guided fuzz target (atheris/libFuzzer) for the STUN codec and the TURN state machine.

    .venv/bin/python tests/fuzz/fuzz_turn.py tests/fuzz/corpus -max_total_time=600

The first byte of an input picks the target, the rest is the datagram:

- even: the codec. parse_message, every attribute decoder, parse_channel_data and
  stream_frame_length may raise StunError and nothing else.
- odd: the state machine, as in tests/hostile (OWNER holds an allocation with a permission and
  a channel). The second byte picks the source (bit 1: owner or stranger; bit 32: of IPv6),
  the listener (bit 2: UDP or TCP), the entry point (bit 4: handle_stun or
  handle_channel_data), the credentials (bit 8: static, or ephemeral TURN REST API users, whose
  usernames carry the expiry the parser must survive) and the world (bit 16: the IPv6 one of
  tests/fuzz/ipv6_kit.py, where the listeners offer both families and the owner of the
  source's family holds an allocation with a channel to an IPv6 peer: the IPv4 OWNER an
  IPv6-relay one, the IPv6 OWNER6 a dual one).
  Any exception (handle_stun must never raise, nor count an internal error), an unsigned message
  that changes state, two answers to one request, an unauthenticated answer with SOFTWARE,
  a long nonce or more than MAX_RATIO (5.6x) the request's size, an answer to anyone but the
  client, or a relay sending to a peer of the other family is a crash.

Seed corpus: tests/fuzz/make_corpus.py writes real messages of every method to corpus/.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/fuzz/: ipv6_kit

# Coverage of the code under test only: instrumenting the helpers' imports too (pytest, asyncio,
# the network shell) cost half the run's time and fed libFuzzer features of no interest.
with atheris.instrument_imports(
    include=["stunner_dp.stun", "stunner_dp.turn", "stunner_dp.config"]
):
    from helpers.hostile_kit import (
        NOW,
        FakeRelay,
        ctx,
        loaded_server,
        snapshot,
        validly_signed,
        validly_signed_rest,
    )
    from ipv6_kit import loaded_dual_server, owner_of, snapshot_families, source

    from stunner_dp import stun

# as tests/hostile/test_fuzz_state_machine.py: a bare Allocate header earns a 112-byte 401 (the
# RFC 8489 nonce cookie and PASSWORD-ALGORITHMS included), 5.6x; its nonce is 35 bytes
MAX_RATIO = 5.6
MAX_NONCE = 36


def _codec(data: bytes) -> None:
    with contextlib.suppress(stun.StunError):
        stun.stream_frame_length(data)
    with contextlib.suppress(stun.StunError):
        stun.parse_channel_data(data)
    try:
        msg = stun.parse_message(data)
    except stun.StunError:
        return
    for _t, value in msg.attributes:
        for decode in (
            stun.decode_address,
            lambda v: stun.decode_xor_address(v, msg.transaction_id),
            stun.decode_error_code,
            stun.decode_unknown_attributes,
            stun.decode_u32,
            stun.decode_channel_number,
            stun.decode_requested_transport,
            stun.decode_even_port,
            stun.decode_family,
            stun.decode_address_error_code,
            stun.decode_text,
        ):
            with contextlib.suppress(stun.StunError):
                decode(value)
    msg.check_integrity(b"k" * 16)


def _families_hold(out: list[Any], client: tuple[str, int]) -> None:
    """Answers go to the client; a relay sends only to peers of its own family."""
    for sender, addr, _ in out:
        if isinstance(sender, FakeRelay):
            assert (":" in sender.address[0]) == (":" in addr[0]), (sender.address, addr)
        else:
            assert addr == client, (addr, client)


def _state_machine(selector: int, data: bytes) -> None:
    ephemeral = bool(selector & 8)
    if selector & 16:
        turn = loaded_dual_server(owner_of(selector), ephemeral=ephemeral)
    else:
        turn, _ = loaded_server(ephemeral=ephemeral)
    client = source(selector)
    listener = "tcp" if selector & 2 else "udp"
    before = snapshot(turn), snapshot_families(turn)
    if selector & 4:
        out = turn.handle_channel_data(ctx(client, listener), data)
        assert (snapshot(turn), snapshot_families(turn)) == before
        assert all(len(payload) <= len(data) - 4 for _, _, payload in out)
        _families_hold(out, client)
        return
    out = turn.handle_stun(ctx(client, listener), data, NOW + 1)
    assert turn.internal_errors == 0, "handle_stun hit an unexpected exception"
    _families_hold(out, client)
    signed = validly_signed_rest(data) if ephemeral else validly_signed(data)
    if not signed:
        after = snapshot(turn), snapshot_families(turn)
        assert after == before, "state changed without MESSAGE-INTEGRITY"
    try:
        msg = stun.parse_message(data)
    except stun.StunError:
        assert out == []
        return
    if msg.cls != stun.CLASS_REQUEST:
        return
    assert len(out) <= 1, "more than one answer to a request"
    if out and not signed:
        answer = stun.parse_message(out[0][2])
        assert not answer.has(stun.ATTR_SOFTWARE)
        nonce = answer.get(stun.ATTR_NONCE)
        assert nonce is None or len(nonce) <= MAX_NONCE
        assert len(out[0][2]) <= MAX_RATIO * len(data), (len(data), len(out[0][2]))


def test_one_input(raw: bytes) -> None:
    if len(raw) < 2:
        return
    mode, selector, data = raw[0], raw[1], raw[2:]
    if mode & 1:
        _state_machine(selector, data)
    else:
        _codec(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
