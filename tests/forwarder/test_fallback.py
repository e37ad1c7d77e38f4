"""Where the compiled forwarder cannot run, the server says so in one log line with the reason
and relays in Python; `STUNNER_DP_FORWARDER` chooses the mode when the Server is not told;
a mode that is none of auto/compiled/python is a clear error naming the flag and the env.

The "cannot load" case runs in a subprocess: the loader remembers why it failed for the life
of the process (stunner_dp.forwarder._load_error), which must not leak into other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers.hostile_kit import UdpTurn, code, open_peer, relayed
from helpers.stunnerd_proc import stunnerd_command

from forwarder.kit import CH, require_forwarder
from stunner_dp import stun
from stunner_dp.net.forwarder import FORWARDER_ENV
from stunner_dp.testing import make_config, start_turn_server

# One server in a fresh interpreter, the loader told it was built for another machine; a client
# relays one packet each way through it; prints a JSON line of what it saw.
_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    sys.path[:0] = [{tests!r}]
    import stunner_dp.forwarder
    stunner_dp.forwarder.BUILT_FOR = "aarch64"
    from helpers.hostile_kit import UdpTurn, code, open_peer, relayed
    from stunner_dp import stun
    from stunner_dp.testing import start_turn_server

    async def main():
        peer = await open_peer("127.0.0.1")
        async with start_turn_server(protocols=("TURN-UDP",), forwarder={mode!r}) as ts:
            async with UdpTurn(ts.address) as c:
                relay = relayed(await c.allocate())
                assert code(await c.bind({ch}, peer.address)) == 0
                c.send(stun.encode_channel_data({ch}, b"to-peer"))
                for _ in range(300):
                    if peer.got:
                        break
                    await asyncio.sleep(0.01)
                peer.sendto(b"to-client", relay)
                back = await c.received(0.5)
                turn = ts.server.turn
                [alloc] = list(turn.all_allocations())
                chan = alloc.bindings[{ch}]
                python_counted = [chan.out_packets, chan.in_packets]  # before any stats()
                fwd = ts.server.stats().forwarder
                print("RESULT " + json.dumps({{
                    "running": ts.server.forwarder is not None,
                    "peer_got": [d.decode() for d, _ in peer.got],
                    "client_got": [b.hex() for b in back],
                    "python_counted": python_counted,
                    "active": fwd.active,
                    "reason": stunner_dp.forwarder.forwarder_unavailable_reason(),
                }}))
        peer.transport.close()

    asyncio.run(main())
    """
)


def run_child(mode: str) -> tuple[dict[str, object], str]:
    tests = str(Path(__file__).resolve().parents[1])
    script = _CHILD.format(tests=tests, mode=mode, ch=CH)
    env = {k: v for k, v in os.environ.items() if k != FORWARDER_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT ")), out


@pytest.mark.parametrize("mode", ["compiled", "auto"])
def test_an_object_that_cannot_load_leaves_the_relay_to_python(mode: str) -> None:
    got, out = run_child(mode)
    machine = os.uname().machine
    reason = f"the shipped forwarder is built for aarch64, not {machine}"
    assert got["reason"] == reason
    # asked for by name: a warning; by default: an info line; once, with the reason, either way
    first = "compiled forwarder cannot run" if mode == "compiled" else "compiled forwarder not used"
    lines = [ln for ln in out.splitlines() if "compiled forwarder" in ln]
    assert lines == [ln for ln in lines if f"{first}: {reason}; relaying in Python" in ln], out
    assert len(lines) == 1, out
    assert ("warning" in lines[0]) == (mode == "compiled"), lines[0]
    # and Python relayed, both ways, counting as it went
    assert got["running"] is False and got["active"] == 0
    assert got["peer_got"] == ["to-peer"]
    assert got["client_got"] == [stun.encode_channel_data(CH, b"to-client").hex()]
    assert got["python_counted"] == [1, 1]


async def test_the_env_turns_it_off_and_the_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    require_forwarder()
    monkeypatch.setenv(FORWARDER_ENV, "python")
    peer = await open_peer("127.0.0.1")
    try:
        async with start_turn_server(protocols=("TURN-UDP",)) as ts:
            assert ts.server.forwarder is None
            assert ts.server.stats().forwarder.active == 0
            async with UdpTurn(ts.address) as c:  # Python relays
                relayed(await c.allocate())
                assert code(await c.bind(CH, peer.address)) == 0
                c.send(stun.encode_channel_data(CH, b"python"))
                assert (await c.ask(stun.METHOD_BINDING, auth=False)).cls == stun.CLASS_SUCCESS
                turn = ts.server.turn
                assert turn is not None
                [alloc] = list(turn.all_allocations())
                assert alloc.bindings[CH].out_packets == 1  # counted by Python as it relayed
        async with start_turn_server(protocols=("TURN-UDP",), forwarder="compiled") as ts:
            assert ts.server.forwarder is not None  # the argument beats the env
        monkeypatch.setenv(FORWARDER_ENV, " Compiled ")  # case and spaces forgiven
        async with start_turn_server(protocols=("TURN-UDP",)) as ts:
            assert ts.server.forwarder is not None
            assert ts.server.stats().forwarder.active == 1
        monkeypatch.delenv(FORWARDER_ENV)
        async with start_turn_server(protocols=("TURN-UDP",)) as ts:
            assert ts.server.forwarder is not None  # "auto": on where it loads
    finally:
        if peer.transport is not None:
            peer.transport.close()


async def test_a_bad_mode_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORWARDER_ENV, raising=False)
    with pytest.raises(ValueError, match=r"'fast' is not one of auto, compiled, python") as err:
        async with start_turn_server(protocols=("TURN-UDP",), forwarder="fast"):
            pass
    assert "--forwarder" in str(err.value) and FORWARDER_ENV in str(err.value)
    monkeypatch.setenv(FORWARDER_ENV, "kernel")
    with pytest.raises(ValueError, match=r"'kernel' is not one of") as err:
        async with start_turn_server(protocols=("TURN-UDP",)):
            pass
    assert FORWARDER_ENV in str(err.value)


@pytest.mark.parametrize("where", ["flag", "env"])
def test_stunnerd_refuses_a_bad_mode_naming_the_flag(where: str, tmp_path: Path) -> None:
    path = tmp_path / "stunnerd.yaml"
    path.write_text(yaml.safe_dump(make_config(port=1, protocols=("TURN-UDP",))))
    env = {k: v for k, v in os.environ.items() if k != FORWARDER_ENV}
    args = [*stunnerd_command(), "-c", str(path)]
    if where == "flag":
        args += ["--forwarder", "bogus"]
    else:
        env[FORWARDER_ENV] = "bogus"
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "--forwarder" in out and "bogus" in out, out
    if where == "env":  # argparse's own message for the flag; ours names both for the env
        assert FORWARDER_ENV in out, out
