"""Timers run by `expire(now)` with a fake clock, and live reconfiguration via `update_config`."""

from __future__ import annotations

import dataclasses

from helpers.turn_harness import (
    CLIENT,
    LOCAL_PEER,
    PEER,
    PEER2,
    RELAY_IP,
    T0,
    USER,
    Harness,
    allocated,
    assert_success,
    error_code,
    make_config,
)

from stunner_dp import stun
from stunner_dp.config import ClusterConfig, ListenerConfig
from stunner_dp.turn import events as ev

CREATE_PERMISSION = stun.METHOD_CREATE_PERMISSION
CHANNEL_BIND = stun.METHOD_CHANNEL_BIND


# -- permissions ----------------------------------------------------------------------------------


def test_permission_expires_after_300_seconds() -> None:
    h, c = allocated()
    assert_success(c.create_permission(PEER, now=T0), CREATE_PERMISSION)
    alloc = h.allocation(c)
    h.server.expire(T0 + 299)
    assert PEER[0] in alloc.permissions
    assert len(h.server.handle_peer_data(alloc, PEER, b"x")) == 1
    h.server.expire(T0 + 300)
    assert alloc.permissions == {}
    assert h.server.handle_peer_data(alloc, PEER, b"dropped") == []
    assert c.send_indication(PEER, b"dropped") == []
    assert h.has_allocation(c)  # the allocation lives on


def test_expired_permission_takes_the_channel_off_the_hot_path_until_renewed() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, PEER, now=T0), CHANNEL_BIND)
    alloc = h.allocation(c)
    chan = alloc.bindings[0x4000]
    h.server.expire(T0 + 300)  # the permission dies, the channel (600 s) does not
    assert alloc.permissions == {}
    assert 0x4000 in alloc.bindings
    assert alloc.channels == {} and alloc.peer_channels == {}
    assert c.channel_data(0x4000, b"dropped") == []
    assert h.server.handle_peer_data(alloc, PEER, b"dropped") == []
    assert chan.out_packets == chan.in_packets == 0

    # renewing the permission brings the channel back
    assert_success(c.create_permission(PEER, now=T0 + 310), CREATE_PERMISSION)
    assert alloc.channels == {0x4000: chan} and alloc.peer_channels == {PEER: chan}
    assert c.channel_data(0x4000, b"back") == [(alloc.relay, PEER, b"back")]
    [(_, _, frame)] = h.server.handle_peer_data(alloc, PEER, b"back")
    assert stun.parse_channel_data(frame) == (0x4000, b"back")


def test_channel_expires_after_600_seconds() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, PEER, now=T0), CHANNEL_BIND)
    alloc = h.allocation(c)
    # keep the permission alive, not the channel
    assert_success(c.create_permission(PEER, now=T0 + 250), CREATE_PERMISSION)
    assert_success(c.create_permission(PEER, now=T0 + 500), CREATE_PERMISSION)
    assert_success(c.refresh(now=T0 + 500), stun.METHOD_REFRESH)
    h.server.expire(T0 + 599)
    assert 0x4000 in alloc.channels
    h.server.expire(T0 + 600)
    assert alloc.bindings == {} and alloc.channels == {} and alloc.peer_channels == {}
    assert PEER[0] in alloc.permissions
    assert c.channel_data(0x4000, b"x") == []
    # peer data now comes as a Data indication
    [(_, _, raw)] = h.server.handle_peer_data(alloc, PEER, b"x")
    msg = stun.parse_message(raw)
    assert (msg.method, msg.cls) == (stun.METHOD_DATA, stun.CLASS_INDICATION)
    # the number is held five minutes for its old peer (a nonce younger than 10 minutes)
    c.fetch_nonce(T0 + 601)
    assert error_code(c.channel_bind(0x4000, PEER2, now=T0 + 601)) == 400
    assert_success(c.channel_bind(0x4000, PEER, now=T0 + 601), CHANNEL_BIND)


def test_channel_rebind_keeps_it_alive_past_600_seconds() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, PEER, now=T0), CHANNEL_BIND)
    assert_success(c.channel_bind(0x4000, PEER, now=T0 + 290), CHANNEL_BIND)
    assert_success(c.channel_bind(0x4000, PEER, now=T0 + 580), CHANNEL_BIND)
    assert_success(c.refresh(now=T0 + 580), stun.METHOD_REFRESH)
    h.server.expire(T0 + 860)
    alloc = h.allocation(c)
    assert 0x4000 in alloc.channels
    h.server.expire(T0 + 880)  # the permission (refreshed at 580) is gone
    assert alloc.channels == {} and 0x4000 in alloc.bindings


def test_allocation_expires_after_its_lifetime() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, PEER, now=T0), CHANNEL_BIND)
    alloc = h.allocation(c)
    relay = h.relays.by_port(31001)
    h.server.expire(T0 + 599.9)
    assert h.has_allocation(c) and not relay.closed
    h.server.expire(T0 + 600)
    assert not h.has_allocation(c)
    assert relay.close_count == 1 and relay.attached is None
    assert h.relays.open_ports == set()
    assert h.server.user_allocations[USER] == 0
    [deleted] = h.events(ev.AllocationDeleted)
    assert (deleted.allocation, deleted.reason) == (alloc, "expired")
    # nothing flows, nothing answers for it
    assert c.channel_data(0x4000, b"x") == []
    c.fetch_nonce(T0 + 601)
    assert error_code(c.refresh(now=T0 + 601)) == 437
    # expiring again is harmless
    h.server.expire(T0 + 10_000)
    assert relay.close_count == 1 and len(h.events(ev.AllocationDeleted)) == 1


def test_refreshed_allocation_outlives_its_first_lifetime() -> None:
    h, c = allocated()
    assert_success(c.refresh(3600, now=T0 + 590), stun.METHOD_REFRESH)
    h.server.expire(T0 + 600)
    assert h.has_allocation(c)
    h.server.expire(T0 + 590 + 3600)
    assert not h.has_allocation(c)


def test_expire_handles_many_allocations_independently() -> None:
    h = Harness()
    clients = [h.client(("192.0.2.50", p)) for p in range(1, 6)]
    for i, c in enumerate(clients):
        assert_success(c.allocate(now=T0 + i * 100), stun.METHOD_ALLOCATE)
    h.server.expire(T0 + 800)  # the ones made at T0, +100 and +200 are due
    assert [h.has_allocation(c) for c in clients] == [False, False, False, True, True]
    assert len(h.relays.open_ports) == 2


# -- update_config -------------------------------------------------------------------------------


def test_removing_a_cluster_revokes_its_permissions_and_channels() -> None:
    h, c = allocated()
    assert_success(c.create_permission(PEER, LOCAL_PEER), CREATE_PERMISSION)
    assert_success(c.channel_bind(0x4000, LOCAL_PEER), CHANNEL_BIND)
    assert_success(c.channel_bind(0x4001, PEER), CHANNEL_BIND)
    alloc = h.allocation(c)
    new = dataclasses.replace(
        h.config, clusters=tuple(cl for cl in h.config.clusters if cl.name != "local")
    )
    h.server.update_config(new)
    assert set(alloc.permissions) == {PEER[0]}
    assert list(alloc.bindings) == [0x4001]
    assert list(alloc.channels) == [0x4001] and list(alloc.peer_channels) == [PEER]
    assert h.server.handle_peer_data(alloc, LOCAL_PEER, b"x") == []
    assert c.channel_data(0x4000, b"x") == []
    assert c.send_indication(LOCAL_PEER, b"x") == []
    assert h.has_allocation(c)
    # and new permissions to it are refused
    assert error_code(c.create_permission(LOCAL_PEER, now=T0 + 1)) == 403


def test_unrouting_a_cluster_from_the_listener_revokes_too() -> None:
    h, c = allocated()
    assert_success(c.create_permission(PEER, LOCAL_PEER), CREATE_PERMISSION)
    listeners = tuple(
        dataclasses.replace(lis, routes=("local",)) if lis.name == "udp" else lis
        for lis in h.config.listeners
    )
    h.server.update_config(dataclasses.replace(h.config, listeners=listeners))
    assert set(h.allocation(c).permissions) == {LOCAL_PEER[0]}


def test_narrowing_a_port_range_drops_channels_outside_it() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4000, ("127.0.0.1", 5001), now=T0), CHANNEL_BIND)
    assert_success(c.channel_bind(0x4001, ("127.0.0.1", 5090), now=T0), CHANNEL_BIND)
    clusters = (
        ClusterConfig(name="public", endpoints=("0.0.0.0/0",)),
        ClusterConfig(name="local", endpoints=("127.0.0.1:<5000-5010>",)),
    )
    h.server.update_config(dataclasses.replace(h.config, clusters=clusters))
    alloc = h.allocation(c)
    assert list(alloc.bindings) == [0x4000]
    assert 5090 not in alloc.permissions["127.0.0.1"].ports
    assert h.server.handle_peer_data(alloc, ("127.0.0.1", 5090), b"x") == []


def test_removing_a_listener_deletes_its_allocations() -> None:
    h, c = allocated()
    other = h.client(("192.0.2.60", 1), listener="tcp")
    assert_success(other.allocate(), stun.METHOD_ALLOCATE)
    h.server.events.clear()
    alloc = h.allocation(c)
    relay = alloc.relay
    listeners = tuple(lis for lis in h.config.listeners if lis.name != "udp")
    h.server.update_config(dataclasses.replace(h.config, listeners=listeners))
    assert "udp" not in h.server.allocations
    assert h.has_allocation(other)
    assert relay.closed and relay.attached is None  # type: ignore[attr-defined]
    assert h.server.user_allocations[USER] == 1
    [deleted] = h.events(ev.AllocationDeleted)
    assert (deleted.allocation, deleted.reason) == (alloc, "listener removed")


def test_allocate_on_a_removed_listener_fails() -> None:
    h = Harness()
    c = h.client()
    c.fetch_nonce()
    listeners = tuple(lis for lis in h.config.listeners if lis.name != "udp")
    h.server.update_config(dataclasses.replace(h.config, listeners=listeners))
    resp = c.allocate()
    assert error_code(resp) == 500
    assert h.relays.calls == []


def test_rotated_credentials_keep_existing_allocations_alive() -> None:
    h, c = allocated()
    auth = dataclasses.replace(h.config.auth, password="rotated")
    h.server.update_config(dataclasses.replace(h.config, auth=auth))
    # the allocation's own credentials still sign its requests (RFC 8656 7.3)...
    assert_success(c.refresh(now=T0 + 1), stun.METHOD_REFRESH)
    # ...but they make no new allocation, and the new ones do
    stranger = h.client(("192.0.2.99", 40000))
    assert error_code(stranger.allocate(now=T0 + 2)) == 401
    stranger.password = "rotated"
    assert_success(stranger.allocate(now=T0 + 3), stun.METHOD_ALLOCATE)
    c.password = "rotated"
    assert_success(c.refresh(now=T0 + 4), stun.METHOD_REFRESH)


def test_new_listener_gets_allocations() -> None:
    h = Harness()
    extra = ListenerConfig(
        name="udp2", protocol="TURN-UDP", address=RELAY_IP, port=3479, routes=("public",)
    )
    h.server.update_config(dataclasses.replace(h.config, listeners=(*h.config.listeners, extra)))
    c = h.client(CLIENT, listener="udp2")
    assert_success(c.allocate(), stun.METHOD_ALLOCATE)
    assert h.relays.calls[-1].listener == "udp2"
    assert error_code(c.create_permission(LOCAL_PEER)) == 403  # not routed to "local"


def test_config_builder_sanity() -> None:
    # the fixtures the other tests rely on
    cfg = make_config()
    assert [lis.name for lis in cfg.listeners] == ["udp", "tcp", "udp6"]
    h = Harness(cfg)
    assert h.server.access.ports_for("udp", LOCAL_PEER[0]) is not None
    assert h.server.access.ports_for("udp", "10.0.0.1") is None


def test_an_expired_channel_is_held_five_minutes_before_re_pairing() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4001, PEER, now=T0 + 300), CHANNEL_BIND)
    assert_success(c.refresh(3600, now=T0 + 300), stun.METHOD_REFRESH)
    h.server.expire(T0 + 901)
    assert 0x4001 not in h.allocation(c).bindings
    c.fetch_nonce(T0 + 1000)
    # neither the number nor the peer may pair otherwise during the hold...
    assert error_code(c.channel_bind(0x4001, PEER2, now=T0 + 1000)) == 400
    assert error_code(c.channel_bind(0x4002, PEER, now=T0 + 1000)) == 400
    # ...but others are free, and the old pair may bind again
    assert_success(c.channel_bind(0x4003, PEER2, now=T0 + 1000), CHANNEL_BIND)
    assert_success(c.channel_bind(0x4001, PEER, now=T0 + 1001), CHANNEL_BIND)


def test_the_hold_ends_after_five_minutes() -> None:
    h, c = allocated()
    assert_success(c.channel_bind(0x4001, PEER, now=T0 + 300), CHANNEL_BIND)
    assert_success(c.refresh(3600, now=T0 + 300), stun.METHOD_REFRESH)
    h.server.expire(T0 + 901)
    h.server.expire(T0 + 1202)
    assert h.allocation(c).held == {}
    c.fetch_nonce(T0 + 1202)
    assert_success(c.channel_bind(0x4001, PEER2, now=T0 + 1202), CHANNEL_BIND)
