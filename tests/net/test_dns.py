"""STRICT_DNS clusters, with names the tests write into /etc/hosts (no outside DNS)."""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun as aiostun
from helpers.ops import (
    Stunnerd,
    base_config,
    error_code,
    listener,
    ports,
    turn_client,
    until,
    wait_http,
    window,
    write_config,
)

from stunner_dp.net.dns import Resolved, StrictDnsResolver, interval_from_env
from stunner_dp.testing import udp_echo_peer

HOSTS = Path("/etc/hosts")
LOCK = Path("/tmp/stunner-dp-test-etc-hosts.lock")
MARK = "# stunner-dp test"


class EtcHosts:
    """Adds and removes this test's lines in /etc/hosts (in place, under a lock file: glibc
    reads the file again on every lookup)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    @staticmethod
    def unique_name() -> str:
        return f"sdp-{uuid.uuid4().hex[:12]}.test"

    def _edit(self, drop: set[str], add: list[str]) -> None:
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lines = HOSTS.read_text().splitlines()
            kept = [
                line
                for line in lines
                if not (MARK in line and set(line.split("#")[0].split()[1:]) & drop)
            ]
            with open(HOSTS, "w") as f:  # in place: /etc/hosts may be a bind mount
                f.write("\n".join([*kept, *add]) + "\n")

    def add(self, ip: str, name: str) -> None:
        self.names.add(name)
        self._edit(set(), [f"{ip} {name} {MARK}"])

    def remove(self, name: str) -> None:
        self._edit({name}, [])

    def cleanup(self) -> None:
        if self.names:
            self._edit(self.names, [])


@pytest.fixture
def etc_hosts() -> Iterator[EtcHosts]:
    if not os.access(HOSTS, os.W_OK):
        pytest.skip("/etc/hosts is not writable here")
    hosts = EtcHosts()
    try:
        yield hosts
    finally:
        hosts.cleanup()


def test_interval_from_env() -> None:
    assert interval_from_env({}) == 5.0
    assert interval_from_env({"STUNNER_DP_DNS_INTERVAL": "0.25"}) == 0.25
    assert interval_from_env({"STUNNER_DP_DNS_INTERVAL": "soon"}) == 5.0
    assert interval_from_env({"STUNNER_DP_DNS_INTERVAL": "-1"}) == 5.0


async def test_a_name_that_stops_resolving_is_kept_one_round_then_dropped(
    etc_hosts: EtcHosts,
) -> None:
    changes: list[Resolved] = []
    resolver = StrictDnsResolver(changes.append, interval=0.1)
    name, never = EtcHosts.unique_name(), EtcHosts.unique_name()
    etc_hosts.add("127.0.0.5", name)
    resolver.set_hosts([name, never])
    assert await resolver.resolve() is True
    assert resolver.resolved == {name: ("127.0.0.5",)}
    assert resolver.unresolved() == (never,)
    assert await resolver.resolve() is False  # same answers: no change
    assert len(changes) == 1

    etc_hosts.remove(name)
    etc_hosts.add("127.0.0.6", name)
    assert await resolver.resolve() is True
    assert resolver.resolved == {name: ("127.0.0.6",)}

    etc_hosts.remove(name)
    assert await resolver.resolve() is False  # one more interval with the last answer
    assert resolver.resolved == {name: ("127.0.0.6",)}
    assert await resolver.resolve() is True  # then dropped
    assert resolver.resolved == {}
    assert changes[-1] == {}

    etc_hosts.add("127.0.0.7", name)
    assert await resolver.resolve() is True
    assert resolver.resolved == {name: ("127.0.0.7",)}
    resolver.set_hosts([never])  # no longer watched: forgotten
    assert resolver.resolved == {}


async def test_stunnerd_follows_strict_dns_answers(tmp_path: Path, etc_hosts: EtcHosts) -> None:
    port, health = ports(2)
    base = f"http://127.0.0.1:{health}"
    present, later = EtcHosts.unique_name(), EtcHosts.unique_name()
    etc_hosts.add("127.0.0.1", present)
    win = window()

    def config(*extra: str) -> dict[str, object]:
        clusters = [{"name": "dns", "type": "STRICT_DNS", "endpoints": [present, later]}]
        clusters += [{"name": n, "type": "STATIC", "endpoints": ["127.0.0.9"]} for n in extra]
        return base_config(
            health_port=health,
            listeners=[listener("udp", port, ["dns", *extra], win)],
            clusters=clusters,
            username="user-a",
            password="pass",
        )

    path = tmp_path / "stunnerd.yaml"
    write_config(path, config())
    daemon = Stunnerd(
        ["-c", str(path), "-w"], tmp_path / "stunnerd.log", {"STUNNER_DP_DNS_INTERVAL": "0.3"}
    )
    server = ("127.0.0.1", port)
    try:
        await wait_http(base + "/ready", lambda s, b: s == 200, what="ready")
        async with (
            udp_echo_peer("127.0.0.1") as echo,
            udp_echo_peer("127.0.0.3") as echo3,
            turn_client(server, "user-a", "pass") as client,
        ):
            assert await client.round_trips(echo, 5) == 5  # the name resolves to the peer
            with pytest.raises(aiostun.TransactionFailed) as denied:
                await client.bind(echo3)
            assert error_code(denied.value) == 403

            etc_hosts.add("127.0.0.3", later)  # a name that appears later is picked up
            await daemon.wait_log("STRICT_DNS answers changed", count=2)
            assert await client.round_trips(echo3, 5) == 5

            # a reconfiguration keeps the answers (no re-resolution gap)
            write_config(path, config("extra"))
            await daemon.wait_log("config applied")
            async with turn_client(server, "user-a", "pass") as fresh:
                assert await fresh.round_trips(echo, 5) == 5
                await fresh.delete()

            etc_hosts.remove(present)
            await daemon.wait_log("STRICT_DNS name does not resolve: keeping")
            await daemon.wait_log("its addresses are dropped")
            with pytest.raises(aiostun.TransactionFailed) as denied:
                await client.bind(echo)
            assert error_code(denied.value) == 403
            assert await client.round_trips(echo3, 5) == 5  # the other name still counts
            await client.delete()
        log = daemon.log()
        assert log.index("keeping its last addresses") < log.index("its addresses are dropped")
    finally:
        daemon.stop()


async def test_until_is_bounded() -> None:
    with pytest.raises(AssertionError):
        await until(lambda: False, 0.1, "never")
