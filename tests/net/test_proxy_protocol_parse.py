"""The PROXY protocol header parser (net/proxy_protocol.py): bytes in, a header, None (more
bytes needed) or ProxyHeaderError out, and never any other exception."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stunner_dp.net.proxy_protocol import (
    MAX_V1,
    MAX_V2_BODY,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    parse_header,
)

V4 = (("198.18.0.7", 40001), ("10.0.0.5", 3478))
V6 = (("2001:db8::7", 40001), ("2001:db8::1", 3478))


@pytest.mark.parametrize("ends", [V4, V6])
@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
def test_header_and_what_follows(ends: tuple[tuple[str, int], ...], encode: object) -> None:
    src, dst = ends
    header = encode(src, dst)  # type: ignore[operator]
    got = parse_header(header + b"\x00\x01 STUN follows")
    assert got == ProxyHeader(1 if encode is encode_v1 else 2, src, dst, len(header))


def test_haproxy_v1_line() -> None:
    line = b"PROXY TCP4 127.0.0.2 127.0.0.1 51234 3479\r\n"
    assert parse_header(line) == ProxyHeader(
        1, ("127.0.0.2", 51234), ("127.0.0.1", 3479), len(line)
    )


def test_local_and_unknown_carry_no_client() -> None:
    assert parse_header(b"PROXY UNKNOWN ffff::1 whatever\r\n") == ProxyHeader(1, None, None, 32)
    local = encode_v2(None, None)
    assert parse_header(local) == ProxyHeader(2, None, None, 16)


def test_v2_tlvs_are_skipped() -> None:
    tlv = b"\x01\x00\x02h2"  # PP2_TYPE_ALPN
    header = encode_v2(*V4, tlvs=tlv)
    got = parse_header(header + b"rest")
    assert got is not None and got.length == len(header) and got.source == V4[0]


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
def test_every_prefix_needs_more(encode: object) -> None:
    header = encode(*V6)  # type: ignore[operator]
    for cut in range(len(header)):
        assert parse_header(header[:cut]) is None, cut


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01\x00\x00",  # a STUN Binding request: no header at all
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello without the header
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # bare LF
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # IPv6 under TCP4
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xb2 2\r\n",
        b"PROXY " + b"A" * MAX_V1,  # no CRLF within the bound
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in the v2 form
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
        V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8),  # TCP4 block too short
        V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),  # UDP4
        V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216),  # AF_UNIX
        V2_SIGNATURE + b"\x21\x11" + (MAX_V2_BODY + 1).to_bytes(2, "big"),  # too long
        V2_SIGNATURE[:5] + b"X",
    ],
)
def test_not_a_header(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_its_error(data: bytes) -> None:
    try:
        got = parse_header(data)
    except ProxyHeaderError:
        return
    assert got is None or 0 < got.length <= len(data)


_prefixes = st.sampled_from(
    [b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", V2_SIGNATURE]
    + [V2_SIGNATURE + bytes([vc, fam]) for vc in (0x20, 0x21) for fam in (0, 0x11, 0x21)]
)


@settings(max_examples=1000, deadline=None)
@given(_prefixes, st.binary(max_size=120))
def test_header_like_bytes_raise_only_its_error(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    try:
        got = parse_header(data)
    except ProxyHeaderError:
        return
    assert got is None or 0 < got.length <= len(data)


_ports = st.integers(0, 65535)
_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).map(str)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.tuples(_v4, _v4), st.tuples(_v6, _v6)),
    _ports,
    _ports,
    st.booleans(),
    st.binary(max_size=40),
)
def test_round_trip(ips: tuple[str, str], sport: int, dport: int, v2: bool, rest: bytes) -> None:
    src, dst = (ips[0], sport), (ips[1], dport)
    header = (encode_v2 if v2 else encode_v1)(src, dst)
    got = parse_header(header + rest)
    assert got is not None and got.version == (2 if v2 else 1) and got.length == len(header)
    assert got.source is not None and got.destination is not None
    assert (ip_address(got.source[0]), got.source[1]) == (ip_address(src[0]), sport)
    assert (ip_address(got.destination[0]), got.destination[1]) == (ip_address(dst[0]), dport)
