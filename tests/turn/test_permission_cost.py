"""Installing permissions costs O(1) each: a CreatePermission with n peers is O(n), not a pass
over every permission per peer (O(n^2)), and the timer still expires each one on time."""

from __future__ import annotations

from helpers.turn_harness import PEER, T0, Harness, assert_success

from stunner_dp import stun
from stunner_dp.turn.allocation import PERMISSION_LIFETIME, Permission


class CountingPermissions(dict[str, Permission]):
    """The allocation's permission table, counting passes over it."""

    passes = 0

    def values(self):  # type: ignore[no-untyped-def, override]
        self.passes += 1
        return super().values()

    def items(self):  # type: ignore[no-untyped-def, override]
        self.passes += 1
        return super().items()

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.passes += 1
        return super().__iter__()


def test_creating_permissions_makes_no_pass_over_the_permissions() -> None:
    h = Harness()
    c = h.client()
    assert_success(c.allocate(now=T0), stun.METHOD_ALLOCATE)
    assert_success(c.channel_bind(0x4000, PEER, now=T0), stun.METHOD_CHANNEL_BIND)
    alloc = h.allocation(c)
    table = CountingPermissions(alloc.permissions)
    alloc.permissions = table
    peers = [(f"93.184.{i // 200}.{i % 200 + 1}", 7000) for i in range(60)]
    for start in range(0, len(peers), 20):  # three requests of 20 peers
        assert_success(
            c.create_permission(*peers[start : start + 20], now=T0 + 1),
            stun.METHOD_CREATE_PERMISSION,
        )
    assert set(table) >= {ip for ip, _ in peers}
    table.passes = 0
    # renewing all of them, and the channel's own peer, is still no pass over the table
    assert_success(c.create_permission(*peers[:20], now=T0 + 2), stun.METHOD_CREATE_PERMISSION)
    assert_success(c.channel_bind(0x4000, PEER, now=T0 + 2), stun.METHOD_CHANNEL_BIND)
    assert table.passes == 0
    assert alloc.channels[0x4000].peer == PEER  # the channel stayed live throughout


def test_permissions_still_expire_on_time() -> None:
    h = Harness()
    c = h.client()
    assert_success(c.allocate(now=T0), stun.METHOD_ALLOCATE)
    alloc = h.allocation(c)
    early, late = ("93.184.1.1", 7000), ("93.184.1.2", 7000)
    assert_success(c.create_permission(early, late, now=T0), stun.METHOD_CREATE_PERMISSION)
    # the renewal leaves the timer's mark early; the sweep then finds nothing due and sets it
    assert_success(c.create_permission(late, now=T0 + 100), stun.METHOD_CREATE_PERMISSION)
    h.server.expire(T0 + PERMISSION_LIFETIME)
    assert set(alloc.permissions) == {late[0]}
    assert alloc.soonest == T0 + 100 + PERMISSION_LIFETIME
    h.server.expire(T0 + 100 + PERMISSION_LIFETIME)
    assert alloc.permissions == {}
