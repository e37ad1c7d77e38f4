"""A listener that `Server.apply` restarts (its socket rebuilt) takes its allocations with it,
as stunnerd's does: none may stay behind tied to the closed socket, holding a relay port."""

from __future__ import annotations

import copy
import socket

from helpers.turnclient import RawTurnClient, error_code

from stunner_dp import stun
from stunner_dp.config import parse_config
from stunner_dp.testing import start_turn_server


async def test_udp_listener_restart_ends_its_allocations() -> None:
    async with start_turn_server(protocols=("TURN-UDP",)) as ts:
        turn = ts.server.turn
        assert turn is not None
        async with RawTurnClient(ts.address) as client:
            relay = await client.allocate(ts.username, ts.password)
            assert turn.allocation_count == 1
            new = copy.deepcopy(ts.config)
            new["auth"]["realm"] = "another.realm"  # the realm restarts every listener
            await ts.server.apply(parse_config(new))
            assert ts.server.port("udp-listener") == ts.port
            assert turn.allocation_count == 0
            # its relay port is free again
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind(relay)
            finally:
                probe.close()
            # and the client learns that its allocation is gone
            resp = await client.request(stun.METHOD_REFRESH)
            assert error_code(resp) in (401, 437)


async def test_a_listener_that_could_not_start_is_tried_again_with_the_next_config() -> None:
    async with start_turn_server() as ts:
        # take the TCP listener down, then hold its port as another process would
        ts.server._stop_listener("tcp-listener")
        squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", ts.port))
        squatter.listen()
        try:
            await ts.server.apply(parse_config(copy.deepcopy(ts.config)))
            assert "tcp-listener" in ts.server.failed_listeners
        finally:
            squatter.close()
        # nothing changed in the config, yet the listener comes back once its port is free
        await ts.server.apply(parse_config(copy.deepcopy(ts.config)))
        assert "tcp-listener" not in ts.server.failed_listeners
        assert ts.server.port("tcp-listener") == ts.port
