"""The state machine tells the relay handle, synchronously, every channel that may carry media
now and every one that may not any more (`channel_bound` / `channel_unbound`): the kernel fast
path installs and removes its entries there. Each path where a channel or its permission stops
being usable is checked here, and after every step what the relay was told equals the hot-path
dicts (`Allocation.channels`)."""

from __future__ import annotations

import dataclasses

from helpers.turn_harness import (
    PEER,
    T0,
    Client,
    FakeRelay,
    Harness,
    allocated,
    assert_success,
)

from stunner_dp import stun
from stunner_dp.config import ClusterConfig
from stunner_dp.turn.access import PeerAccess
from stunner_dp.turn.allocation import CHANNEL_LIFETIME, PERMISSION_LIFETIME, Allocation, Channel

CHANNEL_BIND = stun.METHOD_CHANNEL_BIND
CREATE_PERMISSION = stun.METHOD_CREATE_PERMISSION
LOCAL = ("127.0.0.1", 5050)


def relay_of(alloc: Allocation) -> FakeRelay:
    relay = alloc.relay
    assert isinstance(relay, FakeRelay)
    return relay


def mirrors(alloc: Allocation) -> bool:
    """What an offload would relay is exactly what the Python hot path would."""
    return relay_of(alloc).offloaded == {(c.number, c.peer): c for c in alloc.channels.values()}


def bound(
    h: Harness, c: Client, number: int = 0x4000, peer: tuple[str, int] = PEER, now: float = T0
) -> Allocation:
    assert_success(c.channel_bind(number, peer, now=now), CHANNEL_BIND)
    alloc = h.allocation(c)
    assert mirrors(alloc)
    return alloc


def test_channel_bind_installs_before_its_answer_and_a_refresh_does_not_repeat_it() -> None:
    h, c = allocated()
    alloc = h.allocation(c)
    relay = relay_of(alloc)
    assert relay.offload_calls == []
    answer = c.channel_bind(0x4000, PEER)  # returns the success: the entry exists already
    assert_success(answer, CHANNEL_BIND)
    assert relay.offload_calls == [("bound", 0x4000, PEER)]
    bound(h, c, now=T0 + 100)  # a refresh of the binding
    assert_success(c.create_permission(PEER, now=T0 + 100), CREATE_PERMISSION)
    assert relay.offload_calls == [("bound", 0x4000, PEER)]
    assert mirrors(alloc)


def test_permission_expiry_removes_at_300s_and_a_new_permission_reinstalls() -> None:
    h, c = allocated()
    alloc = bound(h, c)
    relay = relay_of(alloc)
    h.server.expire(T0 + PERMISSION_LIFETIME - 1)
    assert (0x4000, PEER) in relay.offloaded
    h.server.expire(T0 + PERMISSION_LIFETIME)
    assert relay.offloaded == {} and mirrors(alloc)
    assert 0x4000 in alloc.bindings  # the binding lives on, without a permission
    assert_success(c.create_permission(PEER, now=T0 + 310), CREATE_PERMISSION)
    assert list(relay.offloaded) == [(0x4000, PEER)] and mirrors(alloc)


def test_channel_expiry_removes_at_600s_not_at_the_end_of_its_hold() -> None:
    h, c = allocated()
    assert_success(c.refresh(3600), stun.METHOD_REFRESH)  # the allocation outlives the channel
    alloc = bound(h, c)
    relay = relay_of(alloc)
    for t in (250, 500):  # keep the permission alive past the channel's lifetime
        c.fetch_nonce(now=T0 + t)
        assert_success(c.create_permission(PEER, now=T0 + t), CREATE_PERMISSION)
        h.server.expire(T0 + t)
    h.server.expire(T0 + CHANNEL_LIFETIME - 1)
    assert (0x4000, PEER) in relay.offloaded
    h.server.expire(T0 + CHANNEL_LIFETIME)
    assert relay.offloaded == {} and mirrors(alloc)
    assert 0x4000 in alloc.held  # the number stays held 5 minutes; the entry does not
    assert relay.offload_calls[-1] == ("unbound", 0x4000, PEER)


def test_a_config_that_revokes_the_peer_removes_it() -> None:
    h, c = allocated()
    alloc = bound(h, c, 0x4000, LOCAL)
    bound(h, c, 0x4001, PEER)
    relay = relay_of(alloc)
    clusters = tuple(cl for cl in h.config.clusters if cl.name != "local")
    h.server.update_config(dataclasses.replace(h.config, clusters=clusters))
    assert list(relay.offloaded) == [(0x4001, PEER)] and mirrors(alloc)


def test_narrowing_the_peer_ports_removes_the_channel_but_keeps_the_permission() -> None:
    h, c = allocated()
    alloc = bound(h, c, 0x4000, ("127.0.0.1", 5090))
    clusters = (
        ClusterConfig(name="public", endpoints=("0.0.0.0/0",)),
        ClusterConfig(name="local", endpoints=("127.0.0.1:<5000-5010>",)),
    )
    h.server.update_config(dataclasses.replace(h.config, clusters=clusters))
    assert "127.0.0.1" in alloc.permissions
    assert relay_of(alloc).offloaded == {} and mirrors(alloc)


def test_new_dns_answers_that_drop_the_peer_remove_it() -> None:
    # a STRICT_DNS cluster: the rules follow its answers (Server.set_dns_answers -> revalidate)
    base = Harness().config
    clusters = (ClusterConfig(name="dns", type="STRICT_DNS", endpoints=("media.example",)),)
    listeners = tuple(dataclasses.replace(lis, routes=("dns",)) for lis in base.listeners)
    config = dataclasses.replace(base, clusters=clusters, listeners=listeners)
    h = Harness(config)
    h.server.access = PeerAccess.from_config(config, {"media.example": [PEER[0]]})
    h, c = allocated(h)
    alloc = bound(h, c)
    h.server.access = PeerAccess.from_config(config, {"media.example": ["203.0.113.9"]})
    h.server.revalidate()
    assert relay_of(alloc).offloaded == {} and mirrors(alloc)


def test_deleting_the_allocation_removes_every_channel_first() -> None:
    h, c = allocated()
    alloc = bound(h, c, 0x4000, PEER)
    bound(h, c, 0x4001, LOCAL)
    relay = relay_of(alloc)
    assert_success(c.refresh(0), stun.METHOD_REFRESH)
    assert relay.offloaded == {} and relay.closed
    assert sorted(relay.offload_calls[-2:]) == [
        ("unbound", 0x4000, PEER),
        ("unbound", 0x4001, LOCAL),
    ]


def test_allocation_expiry_listener_removal_and_shutdown_remove_too() -> None:
    h, c = allocated()
    alloc = bound(h, c)
    h.server.expire(alloc.expires)
    assert not h.has_allocation(c) and relay_of(alloc).offloaded == {}

    h, c = allocated()
    alloc = bound(h, c)
    listeners = tuple(lis for lis in h.config.listeners if lis.name != "udp")
    h.server.update_config(dataclasses.replace(h.config, listeners=listeners))
    assert relay_of(alloc).offloaded == {}

    h, c = allocated()
    alloc = bound(h, c)
    h.server.close()
    assert relay_of(alloc).offloaded == {}


def test_counts_folded_in_at_removal_are_kept_in_the_totals() -> None:
    """What the kernel relayed is folded into the channel in `channel_unbound`: it happens
    before the channel's counts are retired, so none are lost."""
    h, c = allocated()
    assert_success(c.refresh(3600), stun.METHOD_REFRESH)
    alloc = bound(h, c)
    relay = relay_of(alloc)
    plain = relay.channel_unbound

    def fold_then_unbind(channel: Channel) -> None:
        channel.out_packets += 7
        channel.out_bytes += 700
        plain(channel)

    relay.channel_unbound = fold_then_unbind  # type: ignore[method-assign]
    h.server.expire(T0 + CHANNEL_LIFETIME + 1)  # permission, then channel: both gone
    assert alloc.totals()[:2] == (7, 700)
    c.fetch_nonce(now=T0 + CHANNEL_LIFETIME + 2)
    assert_success(c.refresh(0, now=T0 + CHANNEL_LIFETIME + 2), stun.METHOD_REFRESH)
    retired = [t for (lis, _, framed), t in h.server.retired.items() if framed]
    assert sum(t.out_packets for t in retired) == 7
