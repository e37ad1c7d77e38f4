"""The integer reading of endpoint addresses (config.endpoints.ip_value, Endpoint.key) equals
what ipaddress reads, for every form: it only spares the ipaddress objects' cost."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import given
from hypothesis import strategies as st

from stunner_dp.config.endpoints import _network_key, _parse_network, ip_value, parse_ip

FORMS = [
    "::", "::1", "1::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8::", "1::2:3", ":1::2", "1::2:", "1:::2", "::ffff:1.2.3.4", "::1.2.3.4",
    "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3", "::1.2.3.04", "12345::", "g::",
    "::ffff:01.2.3.4", "1.2.3.4:5", "256.1.1.1", "1..2.3", "1.2.3.4.", "\u0663.1.1.1",
    "0000:0000::0001", "00000::1", "fe80::1%eth0", "1.2.3.4/255.0.0.0", "1.2.3.4/0.0.0.255",
    "1.2.3.4\x00", "10.0.0.0/08", "::ffff:10.0.0.0/104", "::ffff:0:0/95", "1.2.3.4/33",
]  # fmt: skip


def by_ipaddress(text: str) -> tuple[object, object]:
    net = _parse_network(text)
    addr = parse_ip(text)
    return (
        None if net is None else (net.version, net.prefixlen, int(net.network_address)),
        None if addr is None else (addr.version, int(addr)),
    )


def test_odd_forms_read_alike() -> None:
    for form in FORMS:
        for text in (form, form + "/64", form + "/120"):
            assert (_network_key(text), ip_value(text)) == by_ipaddress(text), text


@given(
    st.one_of(
        st.integers(0, 2**32 - 1).map(lambda v: str(IPv4Address(v))),
        st.integers(0, 2**128 - 1).map(lambda v: str(IPv6Address(v))),
        st.integers(0, 2**128 - 1).map(lambda v: IPv6Address(v).exploded.upper()),
        st.integers(0, 2**32 - 1).map(lambda v: f"::ffff:{IPv4Address(v)}"),
    ),
    st.one_of(st.none(), st.integers(0, 130)),
)
def test_addresses_and_networks_read_alike(addr: str, length: int | None) -> None:
    text = addr if length is None else f"{addr}/{length}"
    assert (_network_key(text), ip_value(text)) == by_ipaddress(text)
