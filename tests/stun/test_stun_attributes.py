"""Round trips and rejection cases for every attribute value codec."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stunner_dp import stun

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: a.compressed)
ports = st.integers(0, 0xFFFF)
addresses = st.tuples(st.one_of(ipv4, ipv6), ports)
tids = st.binary(min_size=12, max_size=12)
error_codes = st.integers(300, 699)
reasons = st.text(max_size=60)
families = st.sampled_from([stun.FAMILY_IPV4, stun.FAMILY_IPV6])


@given(addresses)
def test_address_round_trip(addr: tuple[str, int]) -> None:
    value = stun.encode_address(addr)
    assert len(value) == (8 if ":" not in addr[0] else 20)
    assert stun.decode_address(value) == addr


@given(addresses, tids)
def test_xor_address_round_trip(addr: tuple[str, int], tid: bytes) -> None:
    value = stun.encode_xor_address(addr, tid)
    assert stun.decode_xor_address(value, tid) == addr
    # XOR really obfuscates: plain decoding of the XORed value gives something else
    # unless the XOR pad is zero in those positions.
    if addr[1] ^ 0x2112 != addr[1]:
        assert stun.decode_address(value) != addr


@given(addresses, tids)
def test_xor_address_matches_reference_formula(addr: tuple[str, int], tid: bytes) -> None:
    ip = ipaddress.ip_address(addr[0])
    pad = (0x2112A442).to_bytes(4, "big") + tid
    xored = bytes(a ^ b for a, b in zip(ip.packed, pad, strict=False))
    family = 1 if ip.version == 4 else 2
    expected = bytes((0, family)) + (addr[1] ^ 0x2112).to_bytes(2, "big") + xored
    assert stun.encode_xor_address(addr, tid) == expected


def test_ipv6_text_is_compressed() -> None:
    value = stun.encode_address(("2001:0db8:0000:0000:0000:0000:0000:0001", 1))
    assert stun.decode_address(value) == ("2001:db8::1", 1)
    assert stun.decode_address(stun.encode_address(("::1", 2))) == ("::1", 2)


@given(error_codes, reasons)
def test_error_code_round_trip(code: int, reason: str) -> None:
    assert stun.decode_error_code(stun.encode_error_code(code, reason)) == (code, reason)


@given(families, error_codes, reasons)
def test_address_error_code_round_trip(family: int, code: int, reason: str) -> None:
    value = stun.encode_address_error_code(family, code, reason)
    assert stun.decode_address_error_code(value) == (family, code, reason)


def test_error_code_default_reason_and_layout() -> None:
    assert stun.encode_error_code(401) == b"\x00\x00\x04\x01Unauthorized"
    assert stun.decode_error_code(stun.encode_error_code(438)) == (438, "Stale Nonce")
    assert stun.decode_error_code(stun.encode_error_code(599)) == (599, "")
    # Reserved bits above the class are ignored.
    assert stun.decode_error_code(b"\xff\xff\xfc\x14") == (420, "")
    assert stun.encode_address_error_code(2, 440)[:4] == b"\x02\x00\x04\x28"


@given(st.lists(st.integers(0, 0xFFFF), max_size=20))
def test_unknown_attributes_round_trip(types: list[int]) -> None:
    assert stun.decode_unknown_attributes(stun.encode_unknown_attributes(types)) == types


@given(st.integers(0, 0xFFFFFFFF))
def test_u32_round_trip(v: int) -> None:
    assert stun.decode_u32(stun.encode_u32(v)) == v


@given(st.integers(stun.CHANNEL_MIN, stun.CHANNEL_MAX))
def test_channel_number_round_trip(ch: int) -> None:
    value = stun.encode_channel_number(ch)
    assert value[2:] == b"\x00\x00"
    assert stun.decode_channel_number(value) == ch


@given(st.integers(0, 255))
def test_requested_transport_round_trip(proto: int) -> None:
    assert stun.decode_requested_transport(stun.encode_requested_transport(proto)) == proto


def test_requested_transport_layout() -> None:
    assert stun.encode_requested_transport(stun.TRANSPORT_UDP) == b"\x11\x00\x00\x00"


@given(st.booleans())
def test_even_port_round_trip(reserve: bool) -> None:
    assert stun.decode_even_port(stun.encode_even_port(reserve)) is reserve


@given(families)
def test_family_round_trip(family: int) -> None:
    assert stun.decode_family(stun.encode_family(family)) == family


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFFFFFF))
def test_icmp_round_trip(t: int, c: int, d: int) -> None:
    value = stun.encode_icmp(t, c, d)
    assert len(value) == 8 and value[:2] == b"\x00\x00"
    assert stun.decode_icmp(value) == (t, c, d)


@given(st.text(max_size=100))
def test_text_round_trip(text: str) -> None:
    assert stun.decode_text(stun.encode_text(text)) == text


@pytest.mark.parametrize(
    ("decoder", "value"),
    [
        (stun.decode_address, b"\x00\x01\x00"),
        (stun.decode_address, b"\x00\x01\x00\x01\x01\x02\x03"),
        (stun.decode_address, b"\x00\x02" + bytes(6)),
        (stun.decode_address, b"\x00\x03" + bytes(6)),
        (lambda v: stun.decode_xor_address(v, bytes(12)), b"\x00\x02" + bytes(17)),
        (lambda v: stun.decode_xor_address(v, b"short"), b"\x00\x02" + bytes(18)),
        (stun.decode_error_code, b"\x00\x00\x04"),
        (stun.decode_error_code, b"\x00\x00\x02\x00"),
        (stun.decode_error_code, b"\x00\x00\x07\x00"),
        (stun.decode_error_code, b"\x00\x00\x04\x64"),
        (stun.decode_error_code, b"\x00\x00\x04\x00\xff"),
        (stun.decode_address_error_code, b"\x03\x00\x04\x00"),
        (stun.decode_address_error_code, b"\x01\x00\x04"),
        (stun.decode_unknown_attributes, b"\x00\x01\x00"),
        (stun.decode_u32, b"\x00\x00\x00"),
        (stun.decode_u32, bytes(5)),
        (stun.decode_channel_number, b"\x40\x00"),
        (stun.decode_requested_transport, b"\x11"),
        (stun.decode_even_port, b""),
        (stun.decode_even_port, b"\x80\x00\x00\x00"),
        (stun.decode_family, b"\x03\x00\x00\x00"),
        (stun.decode_family, b"\x01"),
        (stun.decode_icmp, bytes(4)),
        (stun.decode_text, b"\xc3\x28"),
        (stun.decode_text, b"a" * 764),
        (lambda v: stun.decode_text(v, 513), b"a" * 514),
    ],
)
def test_decoders_reject(decoder: object, value: bytes) -> None:
    with pytest.raises(stun.StunError):
        decoder(value)  # type: ignore[operator]


@pytest.mark.parametrize(
    "call",
    [
        lambda: stun.encode_address(("not-an-ip", 1)),
        lambda: stun.encode_address(("1.2.3.4", 70000)),
        lambda: stun.encode_xor_address(("1.2.3.4", 1), b"short"),
        lambda: stun.encode_error_code(200),
        lambda: stun.encode_error_code(700),
        lambda: stun.encode_error_code(400, "x" * 800),
        lambda: stun.encode_family(3),
        lambda: stun.encode_requested_transport(256),
        lambda: stun.encode_icmp(256, 0, 0),
        lambda: stun.encode_channel_data(0x3FFF, b""),
    ],
)
def test_encoders_reject_bad_arguments(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


@given(st.binary(min_size=16, max_size=16))
def test_ipv6_text_matches_ipaddress(packed: bytes) -> None:
    value = b"\x00\x02\x00\x01" + packed
    assert stun.decode_address(value)[0] == ipaddress.IPv6Address(packed).compressed


@pytest.mark.parametrize(
    "ip",
    ["::", "::1", "1::", "1:0:0:2:0:0:0:3", "1:0:0:2:0:0:3:4", "0:1:0:1:0:1:0:1", "::ffff:1.2.3.4"],
)
def test_ipv6_text_edge_cases(ip: str) -> None:
    packed = ipaddress.IPv6Address(ip).packed
    text = stun.decode_address(b"\x00\x02\x00\x01" + packed)[0]
    assert text == ipaddress.IPv6Address(ip).compressed
