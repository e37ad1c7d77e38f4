"""Requests on an existing allocation signed with a wrong key: 401, and the allocation as it was.

For each method that acts on an allocation (Refresh, CreatePermission, ChannelBind), over UDP
and TCP: the client holds an allocation with a permission and a channel, then sends the
request with its own username and nonce but a key made from another password. The answer is
401 without MESSAGE-INTEGRITY; lifetime, permissions and channels are unchanged, media still
flows, the peer the request named still reaches nothing, and the right key still works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import pytest
from helpers.hostile_kit import PeerSocket, open_peer
from helpers.stream_turnclient import StreamTurnClient
from helpers.turnclient import Attr, RawTurnClient, error_code, peer_attr

from stunner_dp import stun
from stunner_dp.testing import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    TurnServerHandle,
    start_turn_server,
)
from stunner_dp.turn.auth import long_term_key

CH, NEW_CH = 0x4000, 0x4001


def refresh(_: tuple[str, int]) -> tuple[int, list[Attr]]:
    return stun.METHOD_REFRESH, [(stun.ATTR_LIFETIME, stun.encode_u32(0))]  # would delete it


def create_permission(peer: tuple[str, int]) -> tuple[int, list[Attr]]:
    return stun.METHOD_CREATE_PERMISSION, [peer_attr(peer)]


def channel_bind(peer: tuple[str, int]) -> tuple[int, list[Attr]]:
    number = (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(NEW_CH))
    return stun.METHOD_CHANNEL_BIND, [number, peer_attr(peer)]


METHODS: dict[str, Callable[[tuple[str, int]], tuple[int, list[Attr]]]] = {
    "Refresh": refresh,
    "CreatePermission": create_permission,
    "ChannelBind": channel_bind,
}


def state(ts: TurnServerHandle) -> Any:
    """What a request on the allocation could change: lifetime, permissions, channels."""
    turn = ts.server.turn
    assert turn is not None
    [alloc] = list(turn.all_allocations())
    return (
        alloc.relay_addr,
        alloc.expires,
        {ip: (repr(p.ports), p.expires) for ip, p in alloc.permissions.items()},
        {n: (c.peer, c.expires) for n, c in alloc.bindings.items()},
        sorted(alloc.channels),
    )


async def unsolicited(c: RawTurnClient, canary: bytes) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(100):
        with suppress(TimeoutError):
            got.append(await c.next_unsolicited(3.0))
        if got and canary in got[-1]:
            return got
    raise AssertionError(f"the canary never arrived: {got}")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("method", list(METHODS))
async def test_wrong_key_on_an_existing_allocation_is_401_and_changes_nothing(
    method: str, transport: str
) -> None:
    good: PeerSocket = await open_peer("127.0.0.1")
    newcomer: PeerSocket = await open_peer("127.0.0.2")
    try:
        async with start_turn_server(endpoints=["127.0.0.1", "127.0.0.2"]) as ts:
            c = StreamTurnClient(ts.address) if transport == "tcp" else RawTurnClient(ts.address)
            async with c:
                relay = await c.allocate(DEFAULT_USERNAME, DEFAULT_PASSWORD)
                assert error_code(await c.channel_bind(CH, good.address)) == 0
                before = state(ts)
                failures = ts.server.stats().server.auth_failures

                wrong = long_term_key(DEFAULT_USERNAME, c.realm, DEFAULT_PASSWORD + "-not")
                number, attrs = METHODS[method](newcomer.address)
                answer = await c.request(number, attrs, key=wrong)
                assert answer.method == number and error_code(answer) == 401
                assert not answer.has(stun.ATTR_MESSAGE_INTEGRITY)
                assert state(ts) == before
                assert ts.server.allocation_count == 1
                assert ts.server.stats().server.auth_failures == failures + 1

                # the allocation works as before: media both ways on its channel, and nothing
                # from the peer the request named
                c.send_raw(stun.encode_channel_data(CH, b"still", pad=transport == "tcp"))
                for _ in range(300):
                    if any(d == b"still" for d, _ in good.got):
                        break
                    await asyncio.sleep(0.01)
                assert [d for d, _ in good.got] == [b"still"]
                newcomer.sendto(b"newcomer", relay)
                good.sendto(b"canary", relay)
                got = await unsolicited(c, b"canary")
                assert not any(b"newcomer" in g for g in got), got
                c.send_raw(
                    stun.encode_channel_data(NEW_CH, b"on the new channel", pad=transport == "tcp")
                )
                # the right key still works on the same nonce (no lockout for its owner)
                again = await c.request(*METHODS[method](newcomer.address))
                assert error_code(again) == 0 and again.check_integrity(c.key)
                assert newcomer.got == []
    finally:
        for p in (good, newcomer):
            if p.transport is not None:
                p.transport.close()
