"""The one TURN URI parser (RFC 7065, with stunnerd's `turn://USER:PASS@` credentials) that
`stunnerd URI` and `stunner-dp probe URI` share: each form, the defaults, and errors that name
what is wrong without echoing the password."""

from __future__ import annotations

import pickle

import pytest

from stunner_dp.config import ConfigError
from stunner_dp.config.uri import TurnUri, parse_turn_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # RFC 7065 forms and their defaults: turn: 3478 over UDP, turns: 5349 over TLS
        ("turn:example.org", TurnUri("turn", "example.org", 3478, "udp")),
        ("turn:example.org:3479", TurnUri("turn", "example.org", 3479, "udp")),
        ("turn:example.org?transport=udp", TurnUri("turn", "example.org", 3478, "udp")),
        ("turn:example.org?transport=tcp", TurnUri("turn", "example.org", 3478, "tcp")),
        ("turns:example.org", TurnUri("turns", "example.org", 5349, "tls")),
        ("turns:example.org:443?transport=tcp", TurnUri("turns", "example.org", 443, "tls")),
        ("turns:example.org?transport=udp", TurnUri("turns", "example.org", 5349, "dtls")),
        ("turn:192.0.2.7:3478?transport=udp", TurnUri("turn", "192.0.2.7", 3478, "udp")),
        ("turns:[2001:db8::7]:5349?transport=udp", TurnUri("turns", "2001:db8::7", 5349, "dtls")),
        ("turn:[::1]", TurnUri("turn", "::1", 3478, "udp")),
        # stunnerd's form: // and credentials
        (
            "turn://alice:secret@127.0.0.1:3479?transport=tcp",
            TurnUri("turn", "127.0.0.1", 3479, "tcp", "alice", "secret"),
        ),
        ("turn:u:p@127.0.0.1", TurnUri("turn", "127.0.0.1", 3478, "udp", "u", "p")),
        ("turn://u@h", TurnUri("turn", "h", 3478, "udp", "u", "")),
        ("turns://u:p@h?transport=udp", TurnUri("turns", "h", 5349, "dtls", "u", "p")),
        ("turn://u:p@[::1]:5000/", TurnUri("turn", "::1", 5000, "udp", "u", "p")),
        # an ephemeral username holds ':'; the password is after the last one
        (
            "turn://1700000000:alice:abc%3Ad=@turn.example.com:3479",
            TurnUri("turn", "turn.example.com", 3479, "udp", "1700000000:alice", "abc:d="),
        ),
        # a raw base64 password needs no escaping; a '@' in it is percent-encoded
        (
            "turn://1700000000:dave:a/b+c=@h",
            TurnUri("turn", "h", 3478, "udp", "1700000000:dave", "a/b+c="),
        ),
        ("turn://u:p%40ss@h", TurnUri("turn", "h", 3478, "udp", "u", "p@ss")),
        # the scheme, the host and the transport value are case-insensitive
        ("TURNS:Example.ORG?transport=UDP", TurnUri("turns", "example.org", 5349, "dtls")),
        # other parameters are ignored, an empty transport is the default
        ("turn:h?foo=1&transport=tcp", TurnUri("turn", "h", 3478, "tcp")),
        ("turns:h?transport=", TurnUri("turns", "h", 5349, "tls")),
    ],
)
def test_each_form(uri: str, expected: TurnUri) -> None:
    parsed = parse_turn_uri(uri)
    assert parsed == expected
    assert parsed.password == expected.password  # (not in the repr, so checked by name)


def test_listener_protocol_security_and_rfc_form() -> None:
    forms = {
        "turn:h?transport=udp": ("TURN-UDP", False),
        "turn:h?transport=tcp": ("TURN-TCP", False),
        "turns:h?transport=tcp": ("TURN-TLS", True),
        "turns:h?transport=udp": ("TURN-DTLS", True),
    }
    for uri, (protocol, secure) in forms.items():
        parsed = parse_turn_uri(uri)
        assert (parsed.listener_protocol, parsed.secure) == (protocol, secure)
    parsed = parse_turn_uri("turns://user:hunter2@[2001:db8::7]?transport=udp")
    assert str(parsed) == "turns:[2001:db8::7]:5349?transport=udp"
    assert parse_turn_uri(str(parsed)) == TurnUri("turns", "2001:db8::7", 5349, "dtls")
    assert "hunter2" not in repr(parsed) and "hunter2" not in str(parsed)


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("http://u:p@h", "'http' is neither turn nor turns"),
        ("stun:h", "'stun' is neither turn nor turns"),
        ("example.org", "'example.org' is neither turn nor turns"),
        ("turn://u:p@h?transport=sctp", "transport 'sctp' is neither udp nor tcp"),
        ("turns://u:p@h?transport=dccp", "transport 'dccp' is neither udp nor tcp"),
        ("turn://u:p@h?transport=tls", "transport 'tls' is neither udp nor tcp"),
        ("turn://u:p@", "no host"),
        ("turn:", "no host"),
        ("turn://u:p@:3478", "no host"),
        ("turn://u:p@[]:3478", "no host"),
        ("turn://u:p@h:99999", "the port '99999' is not 1-65535"),
        ("turn://u:p@h:0", "the port '0' is not 1-65535"),
        ("turn://u:p@h:34x", "the port '34x' is not 1-65535"),
        ("turn://u:p@[::1:3478", "has no closing ']'"),
        ("turn://u:p@[::1]3478", "'3478' after the IPv6 address is not :PORT"),
        ("turn://u:p@::1:3478", "an IPv6 address goes in brackets"),
    ],
)
def test_bad_input_names_what_is_wrong(uri: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_turn_uri(uri)
    message = str(caught.value)
    assert named in message, message
    assert message.startswith("uri: ") and "\n" not in message
    assert "turn[s]:" in message  # ... and the syntax
    assert ":p@" not in message  # the password is not echoed
    assert isinstance(caught.value, ValueError)  # what the probe catches
    # it crosses the worker pipe like every ConfigError
    assert str(pickle.loads(pickle.dumps(caught.value))) == message
