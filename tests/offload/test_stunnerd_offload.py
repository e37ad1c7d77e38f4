"""A real stunnerd process with `admin.offload_engine: TC` on lo: without privileges it says
why in one log line and relays in user space; SIGKILLed, it leaves no program forwarding."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import require_offload
from helpers.hostile_kit import UdpTurn, code, open_peer, relayed
from helpers.stunnerd_proc import stop, stunnerd_command, wait_ready

from stunner_dp import stun
from stunner_dp.testing import free_port, make_config, relay_window

CH = 0x4000
OFFLOAD = {"offload_engine": "TC", "offload_interfaces": ["lo"]}
# no capability survives the exec, root or not: the offload cannot load
DROP_ALL = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"]


@contextmanager
def stunnerd(
    tmp: Path, peer_port: int | None, prefix: list[str]
) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    port = free_port()
    low, high = relay_window(100)
    admin = {
        "name": "offload",
        "loglevel": "all:INFO",
        "metrics_endpoint": "",
        "healthcheck_endpoint": "",
        **OFFLOAD,
    }
    config = make_config(
        port=port,
        min_relay_port=low,
        max_relay_port=high,
        protocols=("TURN-UDP",),
        admin=admin,
        endpoints=["127.0.0.1" if peer_port is None else f"127.0.0.1:<{peer_port}-{peer_port}>"],
    )
    path = tmp / "stunnerd.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp / "stunnerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*prefix, *stunnerd_command(), "-c", str(path)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        assert wait_ready(proc, port, tcp=False), log.read_text(errors="replace")
        yield port, log, proc
    finally:
        if proc.poll() is None:
            stop(proc)


async def relay_both_ways(port: int, n: int = 50) -> tuple[int, int]:
    peer = await open_peer("127.0.0.1")
    try:
        async with UdpTurn(("127.0.0.1", port)) as c:
            relay = relayed(await c.allocate())
            assert code(await c.bind(CH, peer.address)) == 0
            for i in range(n):
                c.send(stun.encode_channel_data(CH, b"x%d" % i))
            for _ in range(300):
                if len(peer.got) >= n:
                    break
                await asyncio.sleep(0.01)
            for i in range(n):
                peer.sendto(b"y%d" % i, relay)
            back = [g for g in await c.received(0.5) if g[:2] == CH.to_bytes(2, "big")]
            return len(peer.got), len(back)
    finally:
        if peer.transport is not None:
            peer.transport.close()


async def test_without_privileges_it_relays_in_user_space_and_says_why(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    with stunnerd(tmp_path, None, DROP_ALL) as (port, log, _):
        assert await relay_both_ways(port) == (50, 50)
        text = log.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if "kernel offload" in ln]
    assert len(lines) == 1, text
    assert "cannot load" in lines[0] and "not permitted" in lines[0], lines


async def test_a_sigkilled_stunnerd_leaves_nothing_forwarding(tmp_path: Path) -> None:
    require_offload()
    if os.geteuid() != 0:
        pytest.skip("needs root")
    peer = await open_peer("127.0.0.1")
    try:
        with stunnerd(tmp_path, peer.address[1], []) as (port, log, proc):
            async with UdpTurn(("127.0.0.1", port)) as c:
                relayed(await c.allocate())
                assert code(await c.bind(CH, peer.address)) == 0
                c.send(stun.encode_channel_data(CH, b"alive"))
                for _ in range(200):
                    if peer.got:
                        break
                    await asyncio.sleep(0.01)
                assert [d for d, _ in peer.got] == [b"alive"]
                assert "kernel offload on" in log.read_text(errors="replace")
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                peer.got.clear()
                # the same 5-tuple the entry was keyed on: a live program would relay it
                for _ in range(5):
                    c.send(stun.encode_channel_data(CH, b"after-kill"))
                await asyncio.sleep(0.3)
                assert peer.got == []
    finally:
        if peer.transport is not None:
            peer.transport.close()
