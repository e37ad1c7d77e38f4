"""A config applied while a dead worker is being restarted reaches that worker too: the
restarted worker must not keep serving the config it was started with."""

from __future__ import annotations

import asyncio
import os
import signal

from stunner_dp.config import parse_config
from stunner_dp.daemon.supervisor import Supervisor
from stunner_dp.testing import free_port, make_config


async def _until(cond: object, what: str, seconds: float = 20.0) -> None:
    assert callable(cond)
    for _ in range(int(seconds / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_config_applied_during_a_worker_restart_reaches_it() -> None:
    first = make_config(port=free_port(), protocols=("TURN-UDP",))
    sup = Supervisor(2, bind_host="127.0.0.1")
    await sup.start(parse_config(first))
    try:
        slot = sup.slots[0]
        os.kill(slot.pid, signal.SIGKILL)
        # the slot is being restarted: a new process is up but not ready yet
        await _until(lambda: slot.restarting and slot.ready is not None, "restart begins")
        second = make_config(
            port=free_port(),
            protocols=("TURN-UDP",),
            min_relay_port=first["listeners"][0]["min_relay_port"],
            max_relay_port=first["listeners"][0]["max_relay_port"],
        )
        second["listeners"][0]["name"] = "udp-second"
        await sup.apply(parse_config(second))
        await _until(lambda: not slot.restarting and slot.alive, "restart done")
        await _until(lambda: "udp-second" in slot.listeners, "new config in the restarted worker")
        assert "udp-listener" not in slot.listeners
        assert all(list(s.listeners) == ["udp-second"] for s in sup.slots)
    finally:
        await sup.stop()
