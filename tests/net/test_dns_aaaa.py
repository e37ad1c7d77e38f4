"""STRICT_DNS with AAAA answers: a name that resolves to ::1 (through the resolver's getaddrinfo
seam: no system file is edited) lets an IPv6 peer in; the IPv6 relay's traffic shows in the
cluster metrics (`stunner_cluster_*`) and the allocation in /status."""

from __future__ import annotations

import socket
from typing import Any

from helpers.turnclient import RawTurnClient, error_code, udp_transport
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stunner_dp import stun
from stunner_dp.net.dns import StrictDnsResolver
from stunner_dp.observe.health import HealthState, status_document
from stunner_dp.observe.metrics import make_registry
from stunner_dp.testing import start_turn_server, udp_echo_peer

NAME = "peer6.stunner-dp.test"
ROUNDS = 5
TIMEOUT = 2.0


class Answers:
    """What getaddrinfo says for NAME: A and AAAA records alike, as AF_UNSPEC returns them."""

    def __init__(self) -> None:
        self.addresses: list[str] = []

    async def getaddrinfo(self, name: str) -> list[tuple[Any, ...]]:
        if name != NAME or not self.addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", (ip, 0, 0, 0))
            if ":" in ip
            else (socket.AF_INET, socket.SOCK_DGRAM, 17, "", (ip, 0))
            for ip in self.addresses
        ]


async def test_resolver_keeps_aaaa_answers() -> None:
    answers = Answers()
    answers.addresses = ["::1", "127.0.0.5", "fe80::1%lo"]
    resolver = StrictDnsResolver(getaddrinfo=answers.getaddrinfo)
    resolver.set_hosts([NAME])
    assert await resolver.resolve() is True
    assert resolver.resolved == {NAME: ("127.0.0.5", "::1", "fe80::1")}  # no zone in a rule


def _cluster_samples(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("stunner_cluster_") and s.labels.get("name") == "peers":
                out[(s.name, s.labels["direction"])] = s.value
    return out


async def test_strict_dns_aaaa_lets_an_ipv6_peer_in() -> None:
    clusters = [{"name": "peers", "type": "STRICT_DNS", "endpoints": [NAME]}]
    async with (
        start_turn_server(host="::1", protocols=("TURN-UDP",), clusters=clusters) as srv,
        udp_echo_peer("::1") as peer,
    ):
        answers = Answers()
        resolver = StrictDnsResolver(srv.server.set_dns_answers, getaddrinfo=answers.getaddrinfo)
        resolver.set_hosts([NAME])
        client = RawTurnClient(("::1", srv.port))
        async with client:
            await client.challenge()
            client.login(srv.username, srv.password)
            resp = await client.request(stun.METHOD_ALLOCATE, udp_transport())
            assert error_code(resp) == 0
            relayed = resp.get(stun.ATTR_XOR_RELAYED_ADDRESS)
            assert relayed is not None
            assert stun.decode_xor_address(relayed, resp.transaction_id)[0] == "::1"

            assert error_code(await client.create_permission(peer)) == 403  # not resolved yet
            answers.addresses = ["::1"]  # an AAAA answer
            assert await resolver.resolve() is True
            assert error_code(await client.create_permission(peer)) == 0
            assert error_code(await client.channel_bind(0x4001, peer)) == 0
            for i in range(ROUNDS):
                payload = f"aaaa{i:04d}".encode()
                client.send_channel_data(0x4001, payload)
                frame = await client.next_unsolicited(TIMEOUT)
                assert frame[4:] == payload, frame

            # metrics: the IPv6 relay's payload counts in its cluster
            samples = _cluster_samples(generate_latest(make_registry(srv.server.stats)).decode())
            for direction in ("rx", "tx"):
                assert samples[("stunner_cluster_packets_total", direction)] == ROUNDS
                assert samples[("stunner_cluster_bytes_total", direction)] == ROUNDS * 8
            # /status: the IPv6 listener running, its allocation counted, the name listed
            doc = status_document(
                srv.server.config,
                state=HealthState.READY,
                bound={"udp-listener": srv.port},
                failed={},
                allocation_count=srv.server.allocation_count,
            )
            (listener,) = doc["listeners"]
            assert (listener["address"], listener["state"]) == ("::1", "running")
            assert doc["allocationCount"] == 1
            assert doc["clusters"][0]["endpoints"] == [NAME]

            # the AAAA answer goes: the IPv6 peer is let in no more
            answers.addresses = ["127.0.0.5"]
            assert await resolver.resolve() is True
            assert error_code(await client.create_permission(peer)) == 403
