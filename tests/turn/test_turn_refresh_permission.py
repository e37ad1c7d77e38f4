"""Refresh and CreatePermission."""

from __future__ import annotations

import pytest
from helpers.turn_harness import (
    CLIENT,
    LOCAL_PEER,
    PEER,
    PEER2,
    RELAY_IP,
    SECRET,
    T0,
    USER,
    Harness,
    allocated,
    assert_success,
    ephemeral_auth,
    error_code,
    lifetime_of,
    make_config,
    rest_password,
)

from stunner_dp import stun
from stunner_dp.config import AdminConfig, ClusterConfig, ListenerConfig
from stunner_dp.turn import events as ev

REFRESH = stun.METHOD_REFRESH
CREATE_PERMISSION = stun.METHOD_CREATE_PERMISSION


# -- Refresh ----------------------------------------------------------------------------------


def test_refresh_extends_the_allocation() -> None:
    h, c = allocated()
    resp = c.refresh(1200, now=T0 + 500)
    assert_success(resp, REFRESH)
    assert lifetime_of(resp) == 1200
    assert resp.check_integrity(c.key)
    alloc = h.allocation(c)
    assert alloc.expires == T0 + 500 + 1200
    [refreshed] = h.events(ev.AllocationRefreshed)
    assert (refreshed.allocation, refreshed.lifetime) == (alloc, 1200)
    h.server.expire(T0 + 1699)
    assert h.has_allocation(c)
    h.server.expire(T0 + 1700)
    assert not h.has_allocation(c)


@pytest.mark.parametrize(("asked", "granted"), [(None, 600), (30, 600), (9999, 3600)])
def test_refresh_lifetime_is_clamped_like_allocate(asked: int | None, granted: int) -> None:
    h, c = allocated()
    resp = c.refresh(asked, now=T0 + 10)
    assert lifetime_of(resp) == granted
    assert h.allocation(c).expires == T0 + 10 + granted


def test_refresh_with_lifetime_0_deletes_and_frees_the_port() -> None:
    h, c = allocated()
    alloc = h.allocation(c)
    relay = h.relays.by_port(31001)
    resp = c.refresh(0, now=T0 + 5)
    assert_success(resp, REFRESH)
    assert lifetime_of(resp) == 0
    assert not h.has_allocation(c)
    assert relay.close_count == 1 and relay.attached is None
    assert h.relays.open_ports == set()
    assert h.server.user_allocations[USER] == 0
    [deleted] = h.events(ev.AllocationDeleted)
    assert (deleted.allocation, deleted.reason) == (alloc, "refresh")
    # the 5-tuple is free again
    assert error_code(c.refresh(now=T0 + 6)) == 437
    assert_success(c.allocate(now=T0 + 7), stun.METHOD_ALLOCATE)


@pytest.mark.parametrize("method", [REFRESH, CREATE_PERMISSION, stun.METHOD_CHANNEL_BIND])
def test_requests_without_an_allocation_are_437(method: int) -> None:
    h = Harness()
    c = h.client()
    if method == REFRESH:
        resp = c.refresh()
    elif method == CREATE_PERMISSION:
        resp = c.create_permission(PEER)
    else:
        resp = c.channel_bind(0x4000, PEER)
    assert error_code(resp) == 437
    assert resp.check_integrity(c.key)


def test_allocation_belongs_to_its_listener() -> None:
    h, _c = allocated()
    other = h.client(CLIENT, listener="tcp")  # same address, other listener: other 5-tuple
    assert error_code(other.refresh()) == 437


@pytest.mark.parametrize("method", [REFRESH, CREATE_PERMISSION, stun.METHOD_CHANNEL_BIND])
def test_another_user_on_the_same_5_tuple_is_441(method: int) -> None:
    h = Harness(make_config(auth=ephemeral_auth()))
    alice = f"{int(T0) + 3600}:alice"
    bob = f"{int(T0) + 3600}:bob"
    h, _ = allocated(h, username=alice, password=rest_password(SECRET, alice))
    intruder = h.client(username=bob, password=rest_password(SECRET, bob))
    if method == REFRESH:
        resp = intruder.refresh(0)
    elif method == CREATE_PERMISSION:
        resp = intruder.create_permission(PEER)
    else:
        resp = intruder.channel_bind(0x4000, PEER)
    assert error_code(resp) == 441
    alloc = h.server.allocations["udp"][CLIENT]
    assert alloc.username == alice and alloc.permissions == {} and alloc.bindings == {}


def test_refresh_with_the_other_address_family_is_443() -> None:
    h, c = allocated()
    v6 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV6))]
    resp = c.request(REFRESH, v6, now=T0 + 5)
    assert error_code(resp) == 443
    assert h.allocation(c).expires == T0 + 600
    v4 = [(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.encode_family(stun.FAMILY_IPV4))]
    assert_success(c.request(REFRESH, v4, now=T0 + 5), REFRESH)


# -- CreatePermission ---------------------------------------------------------------------------


def test_create_permission_with_several_peers() -> None:
    h, c = allocated()
    resp = c.create_permission(PEER, PEER2, LOCAL_PEER, now=T0 + 10)
    assert_success(resp, CREATE_PERMISSION)
    assert resp.check_integrity(c.key)
    perms = h.allocation(c).permissions
    assert set(perms) == {PEER[0], PEER2[0], LOCAL_PEER[0]}
    assert all(p.expires == T0 + 10 + 300 for p in perms.values())
    assert perms[PEER[0]].cluster == "public"
    assert perms[LOCAL_PEER[0]].cluster == "local"
    # permissions are per IP; the port range of the endpoint goes with it
    assert 5000 in perms[LOCAL_PEER[0]].ports and 6000 not in perms[LOCAL_PEER[0]].ports


def test_create_permission_again_refreshes_it() -> None:
    h, c = allocated()
    assert_success(c.create_permission(PEER, now=T0), CREATE_PERMISSION)
    assert_success(c.create_permission((PEER[0], 1), now=T0 + 200), CREATE_PERMISSION)
    perms = h.allocation(c).permissions
    assert list(perms) == [PEER[0]]
    assert perms[PEER[0]].expires == T0 + 500


def test_create_permission_without_peer_is_400() -> None:
    h, c = allocated()
    resp = c.request(CREATE_PERMISSION)
    assert error_code(resp) == 400
    assert h.allocation(c).permissions == {}


def test_create_permission_with_a_malformed_peer_is_400() -> None:
    _h, c = allocated()
    resp = c.request(CREATE_PERMISSION, [(stun.ATTR_XOR_PEER_ADDRESS, b"\x00\x01\x00")])
    assert error_code(resp) == 400


def test_denied_peer_is_403_and_names_peer_and_listener() -> None:
    h, c = allocated()
    denied = ("10.1.2.3", 9999)  # private: the wildcard does not cover it
    resp = c.create_permission(PEER, denied, now=T0 + 1)
    assert error_code(resp) == 403
    assert resp.check_integrity(c.key)
    assert h.allocation(c).permissions == {}  # all or nothing
    [event] = h.events(ev.PermissionDenied)
    assert event.peer == denied
    assert event.listener == "udp"
    assert event.client == CLIENT
    assert event.clusters == ("public", "local")


@pytest.mark.parametrize(
    "peer", [("127.0.0.2", 5050), ("169.254.169.254", 80), ("0.0.0.0", 80), ("224.0.0.1", 5)]
)
def test_special_peers_are_403_through_the_wildcard(peer: tuple[str, int]) -> None:
    h, c = allocated()
    assert error_code(c.create_permission(peer)) == 403
    assert h.events(ev.PermissionDenied)[0].peer == peer


def public_only() -> Harness:
    return Harness(
        make_config(
            listeners=(
                ListenerConfig(
                    name="udp", protocol="TURN-UDP", address=RELAY_IP, routes=("public",)
                ),
            ),
            clusters=(ClusterConfig(name="public", endpoints=("0.0.0.0/0", "::/0")),),
        )
    )


def test_ipv4_mapped_loopback_is_judged_as_ipv4_and_denied() -> None:
    h, c = allocated(public_only())
    resp = c.create_permission(("::ffff:127.0.0.1", 5050))
    assert error_code(resp) == 403  # not 443: it is an IPv4 peer
    [event] = h.events(ev.PermissionDenied)
    assert event.peer == ("127.0.0.1", 5050)
    assert event.clusters == ("public",)
    assert h.allocation(c).permissions == {}
    assert error_code(c.channel_bind(0x4000, ("::ffff:127.0.0.1", 5050))) == 403


def test_ipv4_mapped_peer_is_allowed_as_its_ipv4_address() -> None:
    h, c = allocated()
    assert_success(c.create_permission(("::ffff:127.0.0.1", 5050)), CREATE_PERMISSION)
    assert_success(c.create_permission(("::ffff:93.184.216.34", 1)), CREATE_PERMISSION)
    assert set(h.allocation(c).permissions) == {"127.0.0.1", "93.184.216.34"}


def test_ipv6_peer_on_an_ipv4_relay_is_443() -> None:
    h, c = allocated()
    resp = c.create_permission(("2606:4700::1111", 53))
    assert error_code(resp) == 443
    assert h.allocation(c).permissions == {}


def test_ipv4_peer_on_an_ipv6_relay_is_443() -> None:
    _h, c = allocated(listener="udp6", addr=("2001:db8::7", 1))
    assert error_code(c.create_permission(PEER)) == 443
    assert_success(c.create_permission(("2606:4700::1111", 53)), CREATE_PERMISSION)


def test_permissions_over_the_cap_are_508() -> None:
    h = Harness(make_config(admin=AdminConfig(max_permissions_per_allocation=2)))
    h, c = allocated(h)
    assert_success(c.create_permission(PEER, PEER2), CREATE_PERMISSION)
    resp = c.create_permission(("1.1.1.1", 1))
    assert error_code(resp) == 508
    assert set(h.allocation(c).permissions) == {PEER[0], PEER2[0]}
    # refreshing existing ones is no growth
    assert_success(c.create_permission(PEER, PEER2, now=T0 + 100), CREATE_PERMISSION)
    # once one expires, there is room again
    assert_success(c.create_permission(PEER, now=T0 + 250), CREATE_PERMISSION)
    h.server.expire(T0 + 400)  # PEER2 (refreshed at T0+100) is gone, PEER (T0+250) is not
    assert set(h.allocation(c).permissions) == {PEER[0]}
    assert_success(c.create_permission(("1.1.1.1", 1), now=T0 + 400), CREATE_PERMISSION)


def test_permission_cap_counts_fresh_peers_of_one_request() -> None:
    h = Harness(make_config(admin=AdminConfig(max_permissions_per_allocation=2)))
    h, c = allocated(h)
    assert_success(c.create_permission(PEER), CREATE_PERMISSION)
    assert error_code(c.create_permission(PEER2, ("1.1.1.1", 1))) == 508
    assert set(h.allocation(c).permissions) == {PEER[0]}


def test_zero_permission_cap_means_unlimited() -> None:
    # config: "0 (unlimited) or a positive integer"
    h = Harness(make_config(admin=AdminConfig(max_permissions_per_allocation=0)))
    h, c = allocated(h)
    assert_success(c.create_permission(PEER, PEER2), CREATE_PERMISSION)
    assert len(h.allocation(c).permissions) == 2
