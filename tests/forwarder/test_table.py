"""The forwarder's channel table on its own (stunner_dp.forwarder.Forwarder, real sockets and
the real thread): it refuses what it cannot relay, fills up, frees and reuses its entries."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from helpers.gates import require_forwarder

from stunner_dp.forwarder import KIND_LISTENER, KIND_RELAY, Forwarder, ForwarderError

CLIENT = ("127.0.0.1", 40001)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """A listener socket and three relay sockets on loopback, closed afterwards."""
    socks = []
    for _ in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


@pytest.fixture
def small() -> Iterator[Forwarder]:
    require_forwarder()
    fwd = Forwarder(max_entries=2)
    yield fwd
    fwd.close()


def peer(n: int) -> tuple[str, int]:
    return ("127.0.0.1", 41000 + n)


def test_a_full_table_refuses_then_reuses_a_freed_entry(
    small: Forwarder, sockets: list[socket.socket]
) -> None:
    listener, *relays = sockets
    small.watch(listener, KIND_LISTENER, 1)
    for n, relay in enumerate(relays):
        small.watch(relay, KIND_RELAY, 2 + n)
    first = small.add(listener, CLIENT, 0x4000, relays[0], peer(0))
    second = small.add(listener, CLIENT, 0x4001, relays[1], peer(1))
    assert small.totals()[1] == 2
    with pytest.raises(ForwarderError, match="No space left"):
        small.add(listener, CLIENT, 0x4002, relays[2], peer(2))
    small.remove(first)
    assert small.counters(first) is None  # gone, and its id free
    third = small.add(listener, CLIENT, 0x4002, relays[2], peer(2))
    assert third == first  # the freed entry, not a new one
    assert small.counters(second) is not None and small.totals()[1] == 2


def test_it_refuses_what_it_could_not_relay(small: Forwarder, sockets: list[socket.socket]) -> None:
    listener, relay, unwatched, _ = sockets
    small.watch(listener, KIND_LISTENER, 1)
    small.watch(relay, KIND_RELAY, 2)
    with pytest.raises(ForwarderError, match="Bad file descriptor"):  # nobody reads that relay
        small.add(listener, CLIENT, 0x4000, unwatched, peer(0))
    with pytest.raises(ForwarderError, match="Invalid argument"):  # not a channel number
        small.add(listener, CLIENT, 0x3FFF, relay, peer(0))
    with pytest.raises(ValueError):  # an IPv6 peer on an IPv4 relay
        small.add(listener, CLIENT, 0x4000, relay, ("::1", 9))
    entry = small.add(listener, CLIENT, 0x4000, relay, peer(0))
    with pytest.raises(ForwarderError, match="File exists"):  # that client's channel is taken
        small.add(listener, CLIENT, 0x4000, relay, peer(1))
    with pytest.raises(ForwarderError, match="File exists"):  # that peer's relay is taken
        small.add(listener, CLIENT, 0x4001, relay, peer(0))
    small.unwatch(relay.fileno())  # unwatching a relay removes the entries through it
    assert small.counters(entry) is None and small.totals()[1] == 0


def test_a_socket_closed_without_unwatch_does_not_leave_its_entries_to_the_next(
    small: Forwarder, sockets: list[socket.socket]
) -> None:
    listener, relay, _, _ = sockets
    small.watch(listener, KIND_LISTENER, 1)
    small.watch(relay, KIND_RELAY, 2)
    entry = small.add(listener, CLIENT, 0x4000, relay, peer(0))
    number = relay.fileno()
    relay.close()  # the bug this guards against: no unwatch first
    reused = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert reused.fileno() == number  # the lowest free descriptor: the same number
        reused.bind(("127.0.0.1", 0))
        small.watch(reused, KIND_RELAY, 3)  # not "File exists": the old socket is gone
        assert small.counters(entry) is None  # and nothing relays through its entry
        with pytest.raises(ForwarderError, match="File exists"):  # a live one is refused
            small.watch(reused, KIND_RELAY, 4)
    finally:
        reused.close()
