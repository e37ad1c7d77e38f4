"""TURN Data indications (RFC 8656 section 11.4), shared by the relay and the state machine."""

from __future__ import annotations

import itertools
import secrets

from .attributes import Address, encode_xor_address
from .constants import ATTR_DATA, ATTR_XOR_PEER_ADDRESS, CLASS_INDICATION, METHOD_DATA
from .message import encode_message

_indication_prefix = secrets.token_bytes(4)
_indication_count = itertools.count()


def data_indication(peer: Address, data: bytes) -> bytes:
    """A Data indication carrying `data` from `peer` (XOR-PEER-ADDRESS, DATA)."""
    # Indications get no answer, so their transaction ids need only differ: a counter behind a
    # random prefix spares a getrandom() call per relayed packet.
    tid = _indication_prefix + (next(_indication_count) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    attrs = [
        (ATTR_XOR_PEER_ADDRESS, encode_xor_address(peer[:2], tid)),
        (ATTR_DATA, data),
    ]
    return encode_message(METHOD_DATA, CLASS_INDICATION, tid, attrs)
