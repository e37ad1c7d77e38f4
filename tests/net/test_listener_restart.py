"""A listener that `Server.apply` restarts (its socket rebuilt) takes its allocations with it,
as stunnerd's does: none may stay behind tied to the closed socket, holding a relay port."""

from __future__ import annotations

import copy
import socket

from turnclient import RawTurnClient, error_code

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
