"""Peer judging under hostile requests (issue 13, items 1, 10 and 12): a request with more peers
than the permission cap is refused before any peer is judged; the server's own transport
addresses are never peers, whatever the clusters say; a Send indication with an unknown
comprehension-required attribute is discarded; a 420 lists each unknown type once; ChannelBind
to peer port 0 is a 400."""

from __future__ import annotations

import os

import pytest
from helpers.turn_harness import (
    CLIENT,
    PEER,
    RELAY_IP,
    FakeRelay,
    FakeRelayFactory,
    Harness,
    allocated,
    assert_success,
    error_code,
    make_config,
)

from stunner_dp import stun
from stunner_dp.config import AdminConfig, ClusterConfig, ListenerConfig
from stunner_dp.turn import events as ev
from stunner_dp.turn.access import OwnAddresses, PortSet
from stunner_dp.turn.types import Addr

CREATE_PERMISSION = stun.METHOD_CREATE_PERMISSION
CHANNEL_BIND = stun.METHOD_CHANNEL_BIND
LISTENER_PORT = 3478  # the harness's listeners keep the default port
RELAY_LOW, RELAY_HIGH = 30000, 32767  # and the default relay range


def loopback_harness(admin: AdminConfig | None = None) -> Harness:
    """A listener on 127.0.0.1 (relays there too) whose cluster allows all of loopback."""
    listeners = (
        ListenerConfig(
            name="udp", protocol="TURN-UDP", address="127.0.0.1", routes=("loop", "public")
        ),
    )
    clusters = (
        ClusterConfig(name="loop", endpoints=("127.0.0.0/8",)),
        ClusterConfig(name="public", endpoints=("0.0.0.0/0",)),
    )
    return Harness(make_config(listeners=listeners, clusters=clusters, admin=admin))


# -- item 1: the peer count is capped before any peer is judged ---------------------------------


def test_more_peers_than_the_cap_is_508_before_any_is_judged() -> None:
    h, c = allocated(Harness(make_config(admin=AdminConfig(max_permissions_per_allocation=8))))
    # every peer would be denied (TEST-NET-3 is special): judged first, the answer were 403
    denied = [("203.0.113.1", 1000 + i) for i in range(9)]
    resp = c.create_permission(*denied)
    assert error_code(resp) == 508
    assert h.events(ev.PermissionDenied) == []
    assert h.allocation(c).permissions == {}
    # at the cap, the peers are judged as ever
    assert error_code(c.create_permission(*denied[:8])) == 403
    assert_success(c.create_permission(*[PEER] * 8), CREATE_PERMISSION)


def test_a_message_with_more_attributes_than_the_bound_is_malformed() -> None:
    h, c = allocated()
    tid = os.urandom(12)
    peer = (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(PEER, tid))
    attrs = [peer] * stun.MAX_ATTRIBUTES
    # the bound counts every attribute, the credentials and the trailers too
    data = c.build(CREATE_PERMISSION, attrs, tid=tid)
    with pytest.raises(stun.StunError):
        stun.parse_message(data)
    malformed = h.server.malformed
    assert c.send(data) == []
    assert h.server.malformed == malformed + 1
    assert h.allocation(c).permissions == {}
    fits = c.build(CREATE_PERMISSION, attrs[: stun.MAX_ATTRIBUTES - 8], tid=tid)
    assert len(stun.parse_message(fits).attributes) <= stun.MAX_ATTRIBUTES


# -- item 12 ------------------------------------------------------------------------------------


def test_unknown_attributes_are_listed_once_each() -> None:
    _, c = allocated()
    unknown = [(0x7F01, b"x"), (0x7F02, b""), (0x7F01, b"y"), (0x7F01, b""), (0x7F02, b"z")]
    resp = c.request(stun.METHOD_REFRESH, unknown)
    assert error_code(resp) == 420
    raw = resp.get(stun.ATTR_UNKNOWN_ATTRIBUTES)
    assert raw is not None
    assert stun.decode_unknown_attributes(raw) == [0x7F01, 0x7F02]


def test_send_indication_with_unknown_required_attribute_is_discarded() -> None:
    h, c = allocated()
    assert_success(c.create_permission(PEER), CREATE_PERMISSION)
    tid = os.urandom(12)
    attrs = [
        (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(PEER, tid)),
        (stun.ATTR_DATA, b"payload"),
    ]
    unknown = stun.encode_message(
        stun.METHOD_SEND, stun.CLASS_INDICATION, tid, [*attrs, (0x7F33, b"?")]
    )
    assert c.send(unknown) == []
    # an unknown comprehension-optional one is ignored (RFC 8489 14), and the control relays
    optional = stun.encode_message(
        stun.METHOD_SEND, stun.CLASS_INDICATION, tid, [*attrs, (0xFF33, b"?")]
    )
    [(sink, addr, data)] = c.send(optional)
    assert (sink, addr, data) == (h.allocation(c).relay, PEER, b"payload")


def test_channel_bind_to_peer_port_0_is_400() -> None:
    h, c = allocated()
    assert error_code(c.channel_bind(0x4000, (PEER[0], 0))) == 400
    assert h.allocation(c).bindings == {}
    assert_success(c.channel_bind(0x4000, PEER), CHANNEL_BIND)


# -- item 10: the server's own transport addresses ----------------------------------------------

OWN_PEERS = [
    ("127.0.0.1", LISTENER_PORT),
    ("127.0.0.1", RELAY_LOW),
    ("127.0.0.1", RELAY_HIGH),
    ("127.0.0.1", 31001),  # the harness's first relay port: the client's own relay
    ("127.1.2.3", LISTENER_PORT),  # any loopback address reaches a wildcard socket
    ("::ffff:127.0.0.1", LISTENER_PORT),  # the mapped form is the same address
]


@pytest.mark.parametrize("peer", OWN_PEERS)
def test_own_addresses_are_forbidden_whatever_the_cluster(peer: tuple[str, int]) -> None:
    h, c = allocated(loopback_harness())
    assert error_code(c.create_permission(peer)) == 403
    assert error_code(c.channel_bind(0x4000, peer)) == 403
    assert h.allocation(c).permissions == {}
    assert len(h.events(ev.PermissionDenied)) == 2


def test_a_permission_on_our_own_ip_leaves_out_our_ports() -> None:
    h, c = allocated(loopback_harness())
    assert_success(c.create_permission(("127.0.0.1", 5000)), CREATE_PERMISSION)
    alloc = h.allocation(c)
    ports = alloc.permissions["127.0.0.1"].ports
    assert 5000 in ports and 40000 in ports
    assert LISTENER_PORT not in ports and RELAY_LOW not in ports and RELAY_HIGH not in ports
    # so neither Send nor a peer's datagram crosses to or from our own sockets
    assert c.send_indication(("127.0.0.1", LISTENER_PORT), b"to the listener") == []
    assert c.send_indication(("127.0.0.1", 31002), b"to another relay") == []
    assert h.server.handle_peer_data(alloc, ("127.0.0.1", 31002), b"from a relay") == []
    [(_, addr, _)] = c.send_indication(("127.0.0.1", 5000), b"control")
    assert addr == ("127.0.0.1", 5000)


def test_two_allocations_cannot_reach_each_other() -> None:
    h = loopback_harness()
    _, a = allocated(h)
    _, b = allocated(h, addr=("192.0.2.11", 40001))
    relay_a, relay_b = h.allocation(a).relay_addr, h.allocation(b).relay_addr
    assert error_code(a.create_permission(relay_b)) == 403
    assert error_code(b.channel_bind(0x4000, relay_a)) == 403
    assert_success(a.create_permission(("127.0.0.1", 5000)), CREATE_PERMISSION)
    assert a.send_indication(relay_b, b"cross") == []


class WildcardRelays(FakeRelayFactory):
    """Relays of a wildcard listener advertise the host's address, as RelayPool does."""

    host_ip = "198.51.100.7"

    def _handle(self, address: Addr) -> FakeRelay:
        ip = self.host_ip if address[0] == "0.0.0.0" else address[0]
        return super()._handle((ip, address[1]))


def test_the_relay_ip_of_a_wildcard_listener_counts_as_ours() -> None:
    """Once a relay on the host's address exists, permissions to that address leave out our
    ports, those granted before it too."""
    routes = ("net",)
    listeners = (
        ListenerConfig(name="udp", protocol="TURN-UDP", address=RELAY_IP, routes=routes),
        ListenerConfig(name="wild", protocol="TURN-UDP", address="0.0.0.0", routes=routes),
    )
    clusters = (ClusterConfig(name="net", endpoints=("198.51.100.0/24",)),)
    h = Harness(make_config(listeners=listeners, clusters=clusters))
    h.relays = h.server.relays = WildcardRelays()  # type: ignore[misc]
    _, c = allocated(h)
    host = WildcardRelays.host_ip
    assert_success(c.create_permission((host, 5000)), CREATE_PERMISSION)
    assert 31005 in h.allocation(c).permissions[host].ports  # not known to be ours yet
    _, d = allocated(h, addr=("192.0.2.11", 40001), listener="wild")
    relay_d = h.allocation(d).relay_addr
    assert relay_d[0] == host
    ports = h.allocation(c).permissions[host].ports
    assert 5000 in ports and relay_d[1] not in ports and 31005 not in ports
    assert error_code(c.create_permission(relay_d)) == 403
    assert c.send_indication(relay_d, b"cross") == []


def test_own_addresses_from_config() -> None:
    config = make_config(
        listeners=(
            ListenerConfig(
                name="l",
                protocol="TURN-UDP",
                address="10.0.0.5",
                port=3479,
                public_address="203.0.113.4",
                public_port=30478,
                min_relay_port=40000,
                max_relay_port=40099,
            ),
        )
    )
    own = OwnAddresses.from_config(config, ips=["10.9.9.9"], ports=[50001])
    for ip in ("10.0.0.5", "203.0.113.4", "10.9.9.9", "127.0.0.1", "0.0.0.0", "::1", "::"):
        assert own.is_local(ip), ip
        assert own.owns(ip, 3479) and own.owns(ip, 30478) and own.owns(ip, 40050), ip
        assert own.owns(ip, 50001) and not own.owns(ip, 3478), ip
    assert not own.is_local("10.0.0.6") and not own.owns("10.0.0.6", 3479)
    assert own.peer_ports("10.0.0.6", PortSet.ANY) is PortSet.ANY
    narrowed = own.peer_ports("10.0.0.5", PortSet.range(3470, 3480))
    assert narrowed == PortSet([(3470, 3478), (3480, 3480)])


def test_client_address_constant_is_not_local() -> None:
    assert not OwnAddresses().is_local(CLIENT[0])
