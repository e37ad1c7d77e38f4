"""Property: whatever the bytes, parsers and decoders raise only StunError."""

from __future__ import annotations

import contextlib

import pytest
from helpers.stun_samples import ALL_SAMPLES, LT_KEY, decode_every_attribute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stunner_dp import stun

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DECODERS = [
    stun.decode_address,
    lambda v: stun.decode_xor_address(v, bytes(12)),
    stun.decode_error_code,
    stun.decode_address_error_code,
    stun.decode_unknown_attributes,
    stun.decode_u32,
    stun.decode_channel_number,
    stun.decode_requested_transport,
    stun.decode_even_port,
    stun.decode_family,
    stun.decode_icmp,
    stun.decode_text,
]


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A real TURN message with random flips, truncation, extension or splicing."""
    data = bytearray(draw(st.sampled_from(ALL_SAMPLES)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "fix_length"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.sampled_from([0x00, 0xFF, 0x80, 0x7F, 0x14, 0x08]))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "extend":
            data += draw(st.binary(max_size=40))
        elif op == "fix_length" and len(data) >= 4:
            # Keep the header length consistent so the attribute walk is reached.
            n = len(data) - 20
            data[2:4] = (n & 0xFFFF).to_bytes(2, "big")
    return bytes(data)


def _exercise_message(data: bytes) -> None:
    try:
        msg = stun.parse_message(data)
    except stun.StunError:
        return
    decode_every_attribute(msg)
    msg.check_integrity(LT_KEY)
    msg.check_integrity_sha256(LT_KEY)


def _exercise_framing(data: bytes) -> None:
    with contextlib.suppress(stun.StunError):
        stun.parse_channel_data(data)
    with contextlib.suppress(stun.StunError):
        stun.stream_frame_length(data)
    stun.is_stun(data)
    stun.is_channel_data(data)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    _exercise_message(data)
    _exercise_framing(data)
    # And with a valid header glued on so the attribute walk is reached.
    body = data[: len(data) & ~3]
    _exercise_message(
        b"\x00\x03" + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12) + body
    )


@FUZZ
@given(mutated_messages())
def test_mutated_messages(data: bytes) -> None:
    _exercise_message(data)
    _exercise_framing(data)


@FUZZ
@given(st.binary(max_size=40))
def test_decoders_on_arbitrary_values(value: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(stun.StunError):
            decode(value)


@given(st.binary(max_size=24), st.binary(max_size=20))
def test_xor_decoder_with_arbitrary_transaction_id(value: bytes, tid: bytes) -> None:
    with contextlib.suppress(stun.StunError):
        stun.decode_xor_address(value, tid)


@pytest.mark.parametrize("junk", [None, 7, "text", 1.5, object()])
def test_non_bytes_inputs(junk: object) -> None:
    for fn in (stun.parse_message, stun.parse_channel_data, stun.stream_frame_length, *DECODERS):
        with pytest.raises(stun.StunError):
            fn(junk)  # type: ignore[arg-type]


def test_samples_are_valid() -> None:
    for sample in ALL_SAMPLES:
        msg = stun.parse_message(sample)
        decode_every_attribute(msg)
