"""TURN URIs (RFC 7065), read by `stunnerd URI` (the quick start) and `stunner-dp probe URI`.

    turn:HOST[:PORT][?transport=udp|tcp]      TURN over UDP (default) or TCP, port 3478
    turns:HOST[:PORT][?transport=udp|tcp]     TURN over DTLS (udp) or TLS (tcp, default), 5349

Credentials ride along as stunnerd takes them, `turn://USER:PASS@HOST:PORT?transport=udp`
(the `//` is optional). The username may hold ':' (ephemeral `<expiry>:<user>`): the password
is after the last one. A base64 password may be given as it is ('/', '+' and '=' need no
escaping); percent-encode a ':', '@' or '?' in a password. IPv6 hosts go in brackets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from .errors import ConfigError

__all__ = ["DEFAULT_PORTS", "SYNTAX", "TurnUri", "parse_turn_uri"]

Scheme = Literal["turn", "turns"]
Transport = Literal["udp", "tcp", "tls", "dtls"]

DEFAULT_PORTS: dict[Scheme, int] = {"turn": 3478, "turns": 5349}
SYNTAX = "turn[s]:[//USER:PASS@]HOST[:PORT][?transport=udp|tcp] (RFC 7065)"
# (scheme, the URI's transport parameter) -> what runs on the wire
_TRANSPORTS: dict[tuple[Scheme, str], Transport] = {
    ("turn", "udp"): "udp",
    ("turn", "tcp"): "tcp",
    ("turns", "udp"): "dtls",
    ("turns", "tcp"): "tls",
}
_DEFAULT_TRANSPORT: dict[Scheme, str] = {"turn": "udp", "turns": "tcp"}


@dataclass(frozen=True, slots=True)
class TurnUri:
    """A parsed TURN URI. `transport` is what runs on the wire: udp or tcp for `turn:`, dtls
    (transport=udp) or tls (transport=tcp) for `turns:`."""

    scheme: Scheme
    host: str  # brackets of an IPv6 address stripped
    port: int
    transport: Transport
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def secure(self) -> bool:
        """TLS or DTLS (a `turns:` URI)."""
        return self.scheme == "turns"

    @property
    def listener_protocol(self) -> str:
        """The protocol of a listener serving it: TURN-UDP, TURN-TCP, TURN-TLS, TURN-DTLS."""
        return f"TURN-{self.transport.upper()}"

    def __str__(self) -> str:
        """The RFC 7065 form, without credentials: `turns:[2001:db8::7]:5349?transport=udp`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        wire = "udp" if self.transport in ("udp", "dtls") else "tcp"
        return f"{self.scheme}:{host}:{self.port}?transport={wire}"


def _bad(problem: str) -> ConfigError:
    # The URI itself is left out of the message: it may carry a password.
    return ConfigError("uri", "", SYNTAX, problem=problem)


def parse_turn_uri(uri: str) -> TurnUri:
    """Parse `uri`; raises ConfigError (a ValueError) naming what is wrong."""
    scheme_text, sep, rest = uri.strip().partition(":")
    scheme = scheme_text.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        shown = scheme_text if sep else uri.strip()
        raise _bad(f"the scheme {shown!r} is neither turn nor turns")
    known: Scheme = "turns" if scheme == "turns" else "turn"
    rest = rest.removeprefix("//")
    authority, _, query = rest.partition("?")
    userinfo, _, hostport = authority.rpartition("@")
    user, _, password = userinfo.rpartition(":") if ":" in userinfo else (userinfo, "", "")
    host, port = _host_port(hostport.rstrip("/"), DEFAULT_PORTS[known])
    wire = _transport_param(query) or _DEFAULT_TRANSPORT[known]
    if wire not in ("udp", "tcp"):
        raise _bad(f"transport {wire!r} is neither udp nor tcp")
    return TurnUri(known, host, port, _TRANSPORTS[known, wire], unquote(user), unquote(password))


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket:
            raise _bad(f"the IPv6 address {text!r} has no closing ']'")
        if after and not after.startswith(":"):
            raise _bad(f"{after!r} after the IPv6 address is not :PORT")
        port_text = after[1:] if after else ""
    elif text.count(":") > 1:
        raise _bad(f"{text!r}: an IPv6 address goes in brackets, [ADDRESS]:PORT")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _bad("no host")
    if not port_text:
        return host.lower(), default_port
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _bad(f"the port {port_text!r} is not 1-65535")
    return host.lower(), int(port_text)


def _transport_param(query: str) -> str:
    """The value of the first non-empty `transport=` in the query; other parameters are
    ignored."""
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key.strip().lower() == "transport" and value.strip():
            return unquote(value).strip().lower()
    return ""
