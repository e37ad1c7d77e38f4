"""Several programs on one interface (``-u N`` workers, tests sharing lo): a packet one program
does not handle goes on to the next program of the tcx chain (TCX_NEXT), it is not ended there
(TC_ACT_OK would deliver it to user space before the program that holds its entry saw it)."""

from __future__ import annotations

import socket

from conftest import channeldata, recv, recv_or_none, require_offload, udp_socket

from stunner_dp.offload import OffloadEngine

CH = 0x4002


def test_a_packet_not_mine_reaches_the_next_program() -> None:
    require_offload()
    sockets: list[socket.socket] = []
    try:
        for _ in range(4):
            sockets.append(udp_socket("127.0.0.1"))
        client, listener, relay, peer = sockets
        first = OffloadEngine.load(["lo"])  # attached first, holds nothing for this binding
        try:
            second = OffloadEngine.load(["lo"])
            try:
                _relay_through_second(first, second, client, listener, relay, peer)
            finally:
                second.close()
        finally:
            first.close()
    finally:
        for s in sockets:
            s.close()


def _addr(s: socket.socket) -> tuple[str, int]:
    a = s.getsockname()
    return a[0], a[1]


def _relay_through_second(
    first: OffloadEngine,
    second: OffloadEngine,
    client: socket.socket,
    listener: socket.socket,
    relay: socket.socket,
    peer: socket.socket,
) -> None:
    h = second.add_channel(_addr(client), _addr(listener), CH, _addr(relay), _addr(peer))
    client.sendto(channeldata(CH, b"via-second"), _addr(listener))
    data, src = recv(peer)
    assert (data, src) == (b"via-second", _addr(relay))
    assert recv_or_none(listener, 0.1) is None
    peer.sendto(b"back", _addr(relay))
    data, src = recv(client)
    assert (data, src) == (channeldata(CH, b"back"), _addr(listener))
    assert second.counters(h).fwd_packets == 1
    assert second.counters(h).rev_packets == 1
    assert first.pass_reasons()["no_entry"] >= 1
