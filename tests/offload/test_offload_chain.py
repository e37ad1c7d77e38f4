"""Several programs on one interface (``-u N`` workers, tests sharing lo): a packet one program
does not handle goes on to the next program of the tcx chain (TCX_NEXT), it is not ended there
(TC_ACT_OK would deliver it to user space before the program that holds its entry saw it)."""

from __future__ import annotations

from conftest import channeldata, recv, recv_or_none, require_offload, udp_socket

from stunner_dp.offload import OffloadEngine

CH = 0x4002


def test_a_packet_not_mine_reaches_the_next_program() -> None:
    require_offload()
    client, listener, relay, peer = (udp_socket("127.0.0.1") for _ in range(4))
    first = OffloadEngine.load(["lo"])  # attached first, holds nothing for this binding
    try:
        second = OffloadEngine.load(["lo"])
        try:

            def addr(s: object) -> tuple[str, int]:
                a = s.getsockname()  # type: ignore[attr-defined]
                return a[0], a[1]

            h = second.add_channel(addr(client), addr(listener), CH, addr(relay), addr(peer))
            client.sendto(channeldata(CH, b"via-second"), addr(listener))
            data, src = recv(peer)
            assert (data, src) == (b"via-second", addr(relay))
            assert recv_or_none(listener, 0.1) is None
            peer.sendto(b"back", addr(relay))
            data, src = recv(client)
            assert (data, src) == (channeldata(CH, b"back"), addr(listener))
            assert second.counters(h).fwd_packets == 1
            assert second.counters(h).rev_packets == 1
            assert first.pass_reasons()["no_entry"] >= 1
        finally:
            second.close()
    finally:
        first.close()
        for s in (client, listener, relay, peer):
            s.close()
