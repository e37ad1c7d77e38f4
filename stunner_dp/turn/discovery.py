"""RFC 5780 NAT behaviour discovery: how a listener with a second address answers Binding.

Pure functions over the listener's four registered sockets (`DiscoveryLinks`): which one a
request came through, which one CHANGE-REQUEST picks for the answer, and what the answer says
(RESPONSE-ORIGIN, OTHER-ADDRESS). `TurnServer` encodes and returns it through that sink.
"""

from __future__ import annotations

from dataclasses import dataclass

from stunner_dp import stun
from stunner_dp.stun import Message
from stunner_dp.turn.types import Addr, DiscoveryLinks, Sink

# Where NAT discovery is on, a Binding request may carry CHANGE-REQUEST (7.2); everywhere else
# it is an unknown comprehension-required attribute and earns 420, as 7.2 asks of a server
# without an alternate address.
KNOWN_ATTRIBUTES: frozenset[int] = stun.KNOWN_ATTRIBUTES | {stun.ATTR_CHANGE_REQUEST}

_OTHER_IP, _OTHER_PORT = 0b10, 0b01


@dataclass(slots=True, frozen=True)
class BindingAnswer:
    sink: Sink  # the socket the answer leaves from
    attrs: list[tuple[int, bytes]]


def arrival(links: DiscoveryLinks, link: Sink) -> int | None:
    """The index of the socket a request came through; None when it is none of the four."""
    for index, point in enumerate(links):
        if point.sink is link:
            return index
    return None


def binding_answer(
    links: DiscoveryLinks, arrived: int, client: Addr, msg: Message
) -> BindingAnswer:
    """A Binding success answer: from the socket CHANGE-REQUEST asks for (relative to the one it
    came through), saying where it left from and where the other IP and port are (7.3).
    Raises StunError on a malformed CHANGE-REQUEST."""
    index = arrived
    raw = msg.get(stun.ATTR_CHANGE_REQUEST)
    if raw is not None:
        change_ip, change_port = stun.decode_change_request(raw)
        index ^= (_OTHER_IP if change_ip else 0) | (_OTHER_PORT if change_port else 0)
    origin = links[index]
    other = links[arrived ^ (_OTHER_IP | _OTHER_PORT)]
    tid = msg.transaction_id
    attrs = [
        (stun.ATTR_XOR_MAPPED_ADDRESS, stun.encode_xor_address(client[:2], tid)),
        # RFC 3489-era NAT tools compare it with XOR-MAPPED-ADDRESS to spot an ALG
        (stun.ATTR_MAPPED_ADDRESS, stun.encode_address(client[:2])),
        (stun.ATTR_RESPONSE_ORIGIN, stun.encode_address(origin.address[:2])),
        (stun.ATTR_OTHER_ADDRESS, stun.encode_address(other.address[:2])),
    ]
    return BindingAnswer(origin.sink, attrs)
