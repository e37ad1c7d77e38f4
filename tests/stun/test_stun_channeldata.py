"""ChannelData framing and TCP/TLS stream demultiplexing."""

from __future__ import annotations

import pytest
from helpers.stun_samples import ALL_SAMPLES
from hypothesis import given
from hypothesis import strategies as st

from stunner_dp import stun

channels = st.integers(stun.CHANNEL_MIN, stun.CHANNEL_MAX)


@given(channels, st.binary(max_size=300), st.booleans())
def test_round_trip(channel: int, payload: bytes, pad: bool) -> None:
    data = stun.encode_channel_data(channel, payload, pad=pad)
    assert stun.is_channel_data(data)
    assert not stun.is_stun(data)
    assert len(data) == 4 + (len(payload) + (-len(payload) & 3 if pad else 0))
    assert stun.parse_channel_data(data) == (channel, payload)
    assert stun.stream_frame_length(data + b"tail") == 4 + ((len(payload) + 3) & ~3)


def test_layout() -> None:
    assert stun.encode_channel_data(0x4001, b"abcde") == b"\x40\x01\x00\x05abcde"
    assert stun.encode_channel_data(0x4001, b"abcde", pad=True) == b"\x40\x01\x00\x05abcde\0\0\0"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x40\x00\x00",
        b"\x40\x00\x00\x05abcd",  # length beyond datagram
        b"\x40\x00\x00\x01abcde",  # bytes beyond padding
        b"\x50\x00\x00\x00",  # reserved channel range
        b"\x3f\xff\x00\x00",
    ],
)
def test_parse_rejects(data: bytes) -> None:
    with pytest.raises(stun.StunError):
        stun.parse_channel_data(data)


def test_udp_padding_tolerated() -> None:
    assert stun.parse_channel_data(b"\x40\x00\x00\x01a\xff\xff\xff") == (0x4000, b"a")
    assert stun.parse_channel_data(b"\x4f\xff\x00\x00") == (0x4FFF, b"")


def test_is_channel_data() -> None:
    assert stun.is_channel_data(b"\x4f\x00\x00\x00")
    assert not stun.is_channel_data(b"\x50\x00\x00\x00")
    assert not stun.is_channel_data(b"\x40\x00\x00")
    for sample in ALL_SAMPLES:
        assert not stun.is_channel_data(sample)


def test_stream_frame_length() -> None:
    assert stun.stream_frame_length(b"") is None
    assert stun.stream_frame_length(b"\x00\x01\x00") is None
    for sample in ALL_SAMPLES:
        for kind in (bytes, bytearray, memoryview):
            assert stun.stream_frame_length(kind(sample[:4])) == len(sample)
    with pytest.raises(stun.StunError):
        stun.stream_frame_length(b"\x80\x00\x00\x00")
    with pytest.raises(stun.StunError):
        stun.stream_frame_length(b"\xc0\x00\x00\x00")
    with pytest.raises(stun.StunError):
        stun.stream_frame_length(b"\x00\x01\x00\x03")  # STUN length not a multiple of 4


def test_stream_splitting() -> None:
    """Frames concatenated on a stream are split back exactly."""
    frames = [
        ALL_SAMPLES[0],
        stun.encode_channel_data(0x4000, b"xyz", pad=True),
        ALL_SAMPLES[4],
        stun.encode_channel_data(0x4ABC, b"", pad=True),
    ]
    buf = b"".join(frames)
    out = []
    while buf:
        n = stun.stream_frame_length(buf)
        assert n is not None
        out.append(buf[:n])
        buf = buf[n:]
    assert out == frames
