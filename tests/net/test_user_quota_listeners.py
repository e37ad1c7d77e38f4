"""admin.user_quota counts a user's allocations over every listener: one user on a UDP and a
TCP listener gets 486 at the quota on either, another user is served, and a closed TCP
connection gives its allocation back."""

from __future__ import annotations

import asyncio

from stunner_dp.client.turn import TurnClient, error_code
from stunner_dp.testing import ephemeral_credentials, start_turn_server

SECRET = "quota-secret"


async def allocate(addr: tuple[str, int], transport: str, user: str) -> tuple[int, TurnClient]:
    c = TurnClient(addr, transport=transport)
    await c.connect()
    resp = await c.allocate(*ephemeral_credentials(SECRET, user))
    return error_code(resp)[0], c


async def test_quota_counts_over_udp_and_tcp_listeners() -> None:
    admin = {"name": "quota", "metrics_endpoint": "", "healthcheck_endpoint": "", "user_quota": 2}
    async with start_turn_server(
        protocols=("TURN-UDP", "TURN-TCP"), auth_type="ephemeral", secret=SECRET, admin=admin
    ) as ts:
        clients: list[TurnClient] = []
        try:
            for transport, want in [("udp", 0), ("tcp", 0), ("udp", 486), ("tcp", 486)]:
                code, c = await allocate(ts.address, transport, "alice")
                clients.append(c)
                assert code == want, (transport, code)
            code, c = await allocate(ts.address, "tcp", "bob")
            clients.append(c)
            assert code == 0
            clients[1].close()  # alice's TCP allocation ends with its connection
            for _ in range(50):
                if ts.server.allocation_count == 2:
                    break
                await asyncio.sleep(0.05)
            code, c = await allocate(ts.address, "udp", "alice")
            clients.append(c)
            assert code == 0
        finally:
            for c in clients:
                c.close()
