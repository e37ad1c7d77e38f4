"""Issue 13 against a real server on loopback: a signed Allocate replayed from another address
earns 438; TURN REST usernames that are not ASCII timestamps, NUL and ANSI escapes in usernames
and a flood of failed logins cost a 401 each and a bounded, escaped log, never a traceback."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from helpers.hostile_kit import UDP, UdpTurn, build, code
from helpers.stunnerd_proc import start_stunnerd, stop

from stunner_dp import stun
from stunner_dp.testing import ephemeral_credentials, start_turn_server
from stunner_dp.turn.auth import ephemeral_password, long_term_key

SECRET = "issue-13-secret"
FLOOD = 1500
BATCH = 50


async def _answer(turn: UdpTurn, data: bytes, tid: bytes, timeout: float = 2.0) -> stun.Message:
    """Send these exact bytes and wait for the answer to `tid`."""
    fut: asyncio.Future[stun.Message] = asyncio.get_running_loop().create_future()
    turn.proto.pending[tid] = fut
    turn.send(data)
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        turn.proto.pending.pop(tid, None)


async def test_a_signed_allocate_replayed_from_another_address_is_438() -> None:
    async with (
        start_turn_server(protocols=("TURN-UDP",)) as ts,
        UdpTurn(ts.address, ("127.0.0.1", 0)) as victim,
    ):
        await victim.login(ts.username, ts.password)
        tid = os.urandom(12)
        signed = build(
            stun.METHOD_ALLOCATE,
            UDP,
            key=victim.key,
            nonce=victim.nonce,
            realm=victim.realm,
            username=victim.username,
            tid=tid,
        )
        assert code(await _answer(victim, signed, tid)) == 0
        for local in (("127.0.0.2", 0), ("127.0.0.1", 0)):  # another IP, another port
            async with UdpTurn(ts.address, local) as thief:
                resp = await _answer(thief, signed, tid)
                assert code(resp) == 438, local
                assert resp.get(stun.ATTR_NONCE) not in (None, victim.nonce.encode())
        assert ts.server.turn.allocation_count == 1


async def test_another_realm_signed_with_this_realms_key_is_401() -> None:
    async with (
        start_turn_server(protocols=("TURN-UDP",)) as ts,
        UdpTurn(ts.address) as client,
    ):
        await client.login(ts.username, ts.password)
        resp = await client.ask(stun.METHOD_ALLOCATE, UDP, realm="another.realm")
        assert code(resp) == 401
        assert resp.get(stun.ATTR_REALM) == ts.realm.encode()
        assert ts.server.turn.allocation_count == 0


async def _flood(port: int) -> float:
    """Failed logins of every hostile kind from one socket: a username with NUL and ANSI
    escapes first, then FLOOD usernames with a non-ASCII "timestamp"; then a real client must
    still allocate. Returns how long the flood took."""
    server = ("127.0.0.1", port)
    async with UdpTurn(server) as guesser:
        await guesser.login()
        names = ["evil\x00\x1b[2J\x1b[31m\nforged line"] + [f"\u00b2:x{i}" for i in range(FLOOD)]
        started = time.monotonic()
        answers: list[bytes] = []
        for first in range(0, len(names), BATCH):  # paced: loopback drops what overflows
            batch = names[first : first + BATCH]
            for name in batch:
                key = long_term_key(name, guesser.realm, ephemeral_password(SECRET, name))
                guesser.send(
                    build(
                        stun.METHOD_ALLOCATE,
                        UDP,
                        key=key,
                        nonce=guesser.nonce,
                        realm=guesser.realm,
                        username=name,
                    )
                )
            for _ in range(25):  # bounded: until the batch has its answers, or 5 s
                answers += await guesser.received(0.2 if len(answers) < first + len(batch) else 0)
                if len(answers) >= first + len(batch):
                    break
        elapsed = time.monotonic() - started
        assert len(answers) == len(names)
        assert {code(stun.parse_message(a)) for a in answers} == {401}
    username, password = ephemeral_credentials(SECRET)
    async with UdpTurn(server, ("127.0.0.2", 0)) as client:
        assert code(await client.allocate(username, password)) == 0
    return elapsed


async def test_hostile_usernames_cost_a_401_and_a_bounded_escaped_log(tmp_path: Path) -> None:
    daemon = start_stunnerd(tmp_path, "hostile-auth", auth_type="ephemeral", secret=SECRET)
    try:
        elapsed = await _flood(daemon.port)
    finally:
        stop(daemon.proc)
    log = daemon.log.read_bytes()
    text = log.decode(errors="replace")
    assert b"Traceback" not in log, text[-3000:]
    assert b"\x00" not in log and b"\x1b" not in log
    [evil] = [line for line in text.splitlines() if "evil" in line]  # escaped, on one line
    assert "x00" in evil and "x1b[2J" in evil and "forged line" in evil
    failed = [line for line in text.splitlines() if "authentication failed" in line]
    # a sample: the burst (10) and one a second, not FLOOD + 1 lines
    assert 1 <= len(failed) <= 10 + elapsed + 2, (len(failed), elapsed)
