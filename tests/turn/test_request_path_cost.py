"""The request path does its per-request work once, not per request (no timing: counts)."""

from __future__ import annotations

from stunner_dp import stun
from stunner_dp.turn.access import OwnAddresses, PortSet
from stunner_dp.turn.auth import Nonces, NonceState, nonce_binding


class CountingNonces(Nonces):
    def __init__(self, secret: bytes) -> None:
        super().__init__(secret)
        self.macs = 0

    def _mac(self, stamp: bytes, cookie: str, binding: bytes) -> bytes:
        self.macs += 1
        return super()._mac(stamp, cookie, binding)


def test_an_issued_nonce_is_checked_without_a_second_mac() -> None:
    nonces = CountingNonces(b"s" * 16)
    mine = nonce_binding("udp", ("192.0.2.1", 4000))
    nonce = nonces.issue(1000.0, mine, stun.SECURITY_FEATURE_PASSWORD_ALGORITHMS)
    assert nonces.macs == 1
    assert nonces.check(nonce, 1001.0, mine) is NonceState.OK
    assert nonces.macs == 1  # was 2: the first request back paid the MAC again
    # still bound to its client: another address is refused, after a MAC of its own
    other = nonce_binding("udp", ("192.0.2.1", 4001))
    assert nonces.check(nonce, 1001.0, other) is NonceState.INVALID
    assert nonces.check(nonce, 1000.0 + 601, mine) is NonceState.STALE


def test_permission_ports_less_our_own_are_built_once_per_rule_set() -> None:
    own = OwnAddresses(["198.18.0.1"], PortSet.range(20000, 29999))
    allowed = PortSet.ANY
    first = own.peer_ports("127.0.0.1", allowed)
    assert 20000 not in first and 19999 in first and 30000 in first
    assert own.peer_ports("127.0.0.2", allowed) is first  # was a new PortSet each time
    assert own.peer_ports("10.0.0.1", allowed) is allowed  # not ours: untouched


def test_own_addresses_keys_fold_forms_of_one_address() -> None:
    own = OwnAddresses(["198.18.0.1", "2001:db8::1"])
    assert own.is_local("::ffff:198.18.0.1") and own.is_local("2001:DB8:0::1")
    assert own.is_local("127.9.9.9") and own.is_local("0.0.0.0") and own.is_local("::")
    assert own.is_local("::1") and own.is_local("::ffff:127.0.0.1")
    assert not own.is_local("198.18.0.2") and not own.is_local("::2")
    assert not own.is_local("not an address") and not own.add_ip("not an address")
    assert not own.add_ip("::ffff:198.18.0.1")  # the same address, not a new one
