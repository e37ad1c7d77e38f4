"""Every limit over real sockets on 127.0.0.x, and that the server keeps serving the others at
each one: user quota (486), the global cap, permission and channel caps and relay port
exhaustion (508), the unauthenticated answer rate per IP, failed logins per user."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from helpers.hostile_kit import UDP, UdpTurn, build, code, open_peer, relayed

from stunner_dp import stun
from stunner_dp.testing import ephemeral_credentials, relay_window, start_turn_server
from stunner_dp.turn.auth import long_term_key
from stunner_dp.turn.ratelimit import UnauthLimiter

SECRET = "hostile-secret"


def admin(**limits: Any) -> dict[str, Any]:
    return {"name": "limits", "metrics_endpoint": "", "healthcheck_endpoint": "", **limits}


async def refresh_zero(c: UdpTurn) -> None:
    resp = await c.ask(stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, stun.encode_u32(0))])
    assert code(resp) == 0


async def binding_works(addr: tuple[str, int], local: str = "127.0.0.1") -> None:
    async with UdpTurn(addr, (local, 0)) as c:
        resp = await c.ask(stun.METHOD_BINDING, auth=False)
        assert resp.cls == stun.CLASS_SUCCESS


async def test_user_quota_486_and_other_users_still_served() -> None:
    async with start_turn_server(
        protocols=("TURN-UDP",), auth_type="ephemeral", secret=SECRET, admin=admin(user_quota=2)
    ) as ts:
        alice = ephemeral_credentials(SECRET, "alice")
        # a fresh timestamp counts against the same user
        alice_again = ephemeral_credentials(SECRET, "alice", ttl=7200)
        bob = ephemeral_credentials(SECRET, "bob")
        async with (
            UdpTurn(ts.address) as a1,
            UdpTurn(ts.address) as a2,
            UdpTurn(ts.address) as a3,
            UdpTurn(ts.address) as b1,
        ):
            assert code(await a1.allocate(*alice)) == 0
            assert code(await a2.allocate(*alice_again)) == 0
            assert code(await a3.allocate(*alice)) == 486
            assert code(await b1.allocate(*bob)) == 0
            await binding_works(ts.address)
            await refresh_zero(a1)
            assert code(await a3.ask(stun.METHOD_ALLOCATE, UDP)) == 0  # room again
            assert ts.server.allocation_count == 3


async def test_global_cap_508_existing_allocations_keep_working() -> None:
    cap = admin(max_allocations=2)
    async with (
        start_turn_server(protocols=("TURN-UDP",), admin=cap) as ts,
        UdpTurn(ts.address) as c1,
        UdpTurn(ts.address) as c2,
        UdpTurn(ts.address) as c3,
    ):
        assert code(await c1.allocate()) == 0
        assert code(await c2.allocate()) == 0
        refused = await c3.allocate()
        assert code(refused) == 508
        assert ts.server.allocation_count == 2
        lifetime = [(stun.ATTR_LIFETIME, stun.encode_u32(700))]
        assert code(await c1.ask(stun.METHOD_REFRESH, lifetime)) == 0
        assert code(await c2.permit(("127.0.0.1", 9))) == 0
        await binding_works(ts.address)
        await refresh_zero(c1)
        assert code(await c3.ask(stun.METHOD_ALLOCATE, UDP)) == 0


async def test_permission_cap_508_per_allocation_only() -> None:
    async with (
        start_turn_server(
            protocols=("TURN-UDP",), admin=admin(max_permissions_per_allocation=2)
        ) as ts,
        UdpTurn(ts.address) as c1,
        UdpTurn(ts.address) as c2,
    ):
        assert code(await c1.allocate()) == 0
        assert code(await c2.allocate()) == 0
        assert code(await c1.permit(("127.0.0.2", 9), ("127.0.0.3", 9))) == 0
        assert code(await c1.permit(("127.0.0.4", 9))) == 508
        assert code(await c1.bind(0x4000, ("127.0.0.5", 9))) == 508
        assert code(await c1.permit(("127.0.0.2", 10))) == 0  # a renewal is no new entry
        assert code(await c1.bind(0x4001, ("127.0.0.3", 9))) == 0  # on a permitted IP
        assert code(await c2.permit(("127.0.0.4", 9), ("127.0.0.5", 9))) == 0
        assert ts.server.turn is not None
        alloc = ts.server.turn.allocations["udp-listener"][c1.local_address]
        assert sorted(alloc.permissions) == ["127.0.0.2", "127.0.0.3"]


async def test_channel_cap_508_and_bound_channels_still_relay() -> None:
    peer = await open_peer()
    try:
        async with (
            start_turn_server(
                protocols=("TURN-UDP",), admin=admin(max_channels_per_allocation=2)
            ) as ts,
            UdpTurn(ts.address) as c1,
            UdpTurn(ts.address) as c2,
        ):
            assert code(await c1.allocate()) == 0
            assert code(await c2.allocate()) == 0
            assert code(await c1.bind(0x4000, peer.address)) == 0
            assert code(await c1.bind(0x4001, ("127.0.0.1", 9))) == 0
            assert code(await c1.bind(0x4002, ("127.0.0.1", 10))) == 508
            assert code(await c1.bind(0x4000, peer.address)) == 0  # refresh is fine
            assert code(await c2.bind(0x4002, peer.address)) == 0  # another allocation
            c1.send(stun.encode_channel_data(0x4000, b"still flowing"))
            for _ in range(50):
                if peer.got:
                    break
                await asyncio.sleep(0.02)
            assert [d for d, _ in peer.got] == [b"still flowing"]
    finally:
        assert peer.transport is not None
        peer.transport.close()


async def test_relay_port_exhaustion_508_then_recovers() -> None:
    low, high = relay_window(3)
    async with start_turn_server(
        protocols=("TURN-UDP",), min_relay_port=low, max_relay_port=high, admin=admin()
    ) as ts:
        clients = [UdpTurn(ts.address) for _ in range(4)]
        for c in clients:
            await c.__aenter__()
        try:
            results = [code(await c.allocate()) for c in clients]
            # another process may hold a port of the window: fewer successes, never more
            granted = [c for c, r in zip(clients, results, strict=True) if r == 0]
            assert 1 <= len(granted) <= 3 and results[len(granted) :] == [508] * (4 - len(granted))
            assert ts.server.relays is not None and ts.server.relays.exhausted >= 1
            await binding_works(ts.address)
            lifetime = [(stun.ATTR_LIFETIME, stun.encode_u32(700))]
            assert code(await granted[0].ask(stun.METHOD_REFRESH, lifetime)) == 0
            await refresh_zero(granted[0])
            assert code(await clients[3].ask(stun.METHOD_ALLOCATE, UDP)) == 0
        finally:
            for c in clients:
                await c.__aexit__()


async def test_unauthenticated_answers_rate_limited_per_ip() -> None:
    rate = 5
    async with start_turn_server(
        protocols=("TURN-UDP",), admin=admin(unauth_rate_per_ip=rate)
    ) as ts:
        turn = ts.server.turn
        assert turn is not None
        burst = int(UnauthLimiter.BURST * rate)
        sent = burst + 50
        async with UdpTurn(ts.address, ("127.0.0.1", 0)) as flood:
            t0 = time.monotonic()
            for _ in range(sent):
                flood.send(build(stun.METHOD_BINDING))
            got = await flood.received(0.3)
            elapsed = time.monotonic() - t0
        answered = len(got)
        # the burst plus what refilled while we sent and listened
        assert burst <= answered <= burst + rate * elapsed + 1, (answered, elapsed)
        assert turn.rate_limited == sent - answered
        # another source address is served at once, and can log in and allocate
        async with UdpTurn(ts.address, ("127.0.0.2", 0)) as other:
            assert code(await other.allocate()) == 0
        # signed requests with a wrong key earn 401s: those count against the bucket too
        async with UdpTurn(ts.address, ("127.0.0.3", 0)) as guesser:
            await guesser.login(password="wrong")
            limited = turn.rate_limited
            for _ in range(burst + 30):
                guesser.send(
                    build(
                        stun.METHOD_ALLOCATE,
                        UDP,
                        key=guesser.key,
                        nonce=guesser.nonce,
                        realm=guesser.realm,
                        username=guesser.username,
                    )
                )
            await guesser.received(0.3)
            assert turn.rate_limited > limited


async def test_failed_logins_lock_out_the_guesser_and_nobody_else() -> None:
    limit = 3
    async with start_turn_server(
        protocols=("TURN-UDP",),
        auth_type="ephemeral",
        secret=SECRET,
        admin=admin(auth_failures_per_user=limit),
    ) as ts:
        turn = ts.server.turn
        assert turn is not None
        alice = ephemeral_credentials(SECRET, "alice")
        bob = ephemeral_credentials(SECRET, "bob")
        async with UdpTurn(ts.address, ("127.0.0.9", 0)) as attacker:
            await attacker.login(alice[0], "guess")
            for _ in range(limit):
                assert code(await attacker.ask(stun.METHOD_ALLOCATE, UDP)) == 401
            assert turn.auth_failures == limit
            # locked: even the right password is not looked at from the guesser's address
            attacker.key = long_term_key(alice[0], attacker.realm, alice[1])
            assert code(await attacker.ask(stun.METHOD_ALLOCATE, UDP)) == 401
            assert turn.auth_locked == 1 and turn.auth_failures == limit
        async with UdpTurn(ts.address, ("127.0.0.10", 0)) as newcomer:
            assert code(await newcomer.allocate(*alice)) == 0  # alice from elsewhere: served
        async with UdpTurn(ts.address, ("127.0.0.11", 0)) as other_user:
            assert code(await other_user.allocate(*bob)) == 0
        await binding_works(ts.address)


async def test_relayed_address_is_in_the_window() -> None:
    low, high = relay_window(10)
    async with (
        start_turn_server(protocols=("TURN-UDP",), min_relay_port=low, max_relay_port=high) as ts,
        UdpTurn(ts.address) as c,
    ):
        resp = await c.allocate()
        assert low <= relayed(resp)[1] <= high
