"""A reload with a big config keeps the event loop serving (issue 13 item 7): the peer rules of
tens of thousands of endpoints are built a few ms at a time, then swapped in at once, and the
verdicts are those of the rules built in one go."""

from __future__ import annotations

import asyncio

from stunner_dp.config import parse_config
from stunner_dp.net.runtime import Server
from stunner_dp.testing import free_port, make_config
from stunner_dp.turn.access import PeerAccess

ENDPOINTS = 20_000  # ~2 s of indexing in one piece before, on this machine


def big_config(port: int) -> dict[str, object]:
    clusters = [
        {
            "name": f"c{i}",
            "type": "STATIC",
            "endpoints": [f"fd00:{i:x}::{j:x}/128:<5000-6000>" for j in range(1000)],
        }
        for i in range(ENDPOINTS // 1000)
    ]
    config = make_config(port=port, protocols=("TURN-UDP",), endpoints=["203.0.113.0/24"])
    config["clusters"] = [*config["clusters"], *clusters]  # type: ignore[misc]
    config["listeners"][0]["routes"] = ["peers", *(c["name"] for c in clusters)]  # type: ignore[index]
    return config


async def test_applying_a_big_config_lets_the_loop_serve_meanwhile() -> None:
    port = free_port()
    small = parse_config(make_config(port=port, protocols=("TURN-UDP",)))
    big = parse_config(big_config(port))
    async with Server(small) as srv:
        turns = 0
        stop = asyncio.Event()

        async def other_work() -> None:  # stands for the relaying the loop does
            nonlocal turns
            while not stop.is_set():
                turns += 1
                await asyncio.sleep(0)

        worker = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        before = turns
        await srv.apply(big)
        served = turns - before
        stop.set()
        await worker
        assert served >= 10, served  # the build yielded to the loop again and again
        turn = srv.turn
        assert turn is not None
        whole = PeerAccess.from_config(big)
        for peer in ("fd00:3::7", "fd00:13::3e7", "fd00:14::1", "203.0.113.9", "198.51.100.1"):
            got = turn.access.ports_for("udp-listener", peer)
            assert got == whole.ports_for("udp-listener", peer), peer
            assert turn.access.cluster_for("udp-listener", peer) == whole.cluster_for(
                "udp-listener", peer
            )
        assert turn.access.cluster_for("udp-listener", "fd00:13::3e7") == "c19"
