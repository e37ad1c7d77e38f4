"""Transport names: the enum members are the strings that config, contexts and labels use."""

from __future__ import annotations

from stunner_dp.config import ListenerConfig
from stunner_dp.turn.types import STREAM_TRANSPORTS, Transport


def test_members_are_their_strings() -> None:
    for member, text in zip(Transport, ("udp", "tcp", "tls", "dtls"), strict=True):
        assert member == text and hash(member) == hash(text)
        assert str(member) == f"{member}" == text
    for proto in ("TURN-UDP", "TURN-TCP", "TURN-TLS", "TURN-DTLS"):
        transport = ListenerConfig("l", proto).transport
        assert Transport(transport) == transport


def test_plain_strings_find_the_stream_transports() -> None:
    assert {t for t in ("udp", "tcp", "tls", "dtls") if t in STREAM_TRANSPORTS} == {"tcp", "tls"}
