"""Long-term credentials (RFC 8489 9.2) and stateless nonces.

Two credential schemes, as stunnerd and coturn's `use-auth-secret` have them:

- static: one username and password; key = MD5("username:realm:password").
- ephemeral (the TURN REST API): username "<expiry>:<user>", password =
  base64(HMAC-SHA1(secret, username)); rejected once the expiry has passed.

Nonces carry their own issue time and an HMAC over it and over the client's transport address,
so any worker process holding the same secret can check any nonce without shared state, and a
request captured and replayed from another address (or transport) earns 438 Stale Nonce, as
coturn answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from enum import Enum

from stunner_dp.config import AuthConfig
from stunner_dp.turn.types import Addr

NONCE_LIFETIME = 600.0  # seconds; an older nonce earns 438 Stale Nonce
_NONCE_MAC_BYTES = 12
_GENUINE_NONCES_KEPT = 4096  # a bound on the cache of nonces already checked
# A Unix time in ASCII digits; 20 digits is past 2**64, so any longer "timestamp" is not one
# (and int() never sees a string long enough to be slow or refused).
_MAX_TIMESTAMP_DIGITS = 20


def long_term_key(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def ephemeral_password(secret: str, username: str) -> str:
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def is_timestamp(part: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and int() also
    takes Arabic-Indic or fullwidth digits; neither is a TURN REST API timestamp."""
    return 0 < len(part) <= _MAX_TIMESTAMP_DIGITS and part.isascii() and part.isdigit()


def ephemeral_expiry(username: str) -> int | None:
    """The expiry timestamp of a TURN REST API username: its first ':'-separated part made of
    ASCII digits. Never raises, whatever the text."""
    for part in username.split(":"):
        if is_timestamp(part):
            return int(part)
    return None


def quota_user(username: str, auth_type: str) -> str:
    """Whom a user quota counts against: for ephemeral usernames the user id, not the timestamp,
    so that asking for fresh credentials does not reset the count."""
    if auth_type != "ephemeral":
        return username
    parts = [p for p in username.split(":") if not is_timestamp(p)]
    return ":".join(parts) if parts else username


@dataclass(slots=True, frozen=True)
class KeyLookup:
    """The outcome of finding a user's key: the key, or why there is none. `check_key` is what
    the request's MESSAGE-INTEGRITY is checked with either way (the key, or a decoy nobody
    holds), so that an unknown user costs what a wrong password costs and timing does not tell
    which usernames exist."""

    key: bytes | None
    check_key: bytes
    reason: str = ""
    expired: bool = False  # an ephemeral username past its time: no key may stand in for it


class Credentials:
    """Maps a USERNAME to its long-term key under the configured scheme."""

    def __init__(self, auth: AuthConfig) -> None:
        self.type = auth.type
        self.realm = auth.realm
        self._auth = auth
        # A static key never changes: compute it once, not per request.
        self._static_key = (
            long_term_key(auth.username, auth.realm, auth.password)
            if auth.type == "static"
            else b""
        )

        # random per process: the MAC computed for an unknown user, never one that matches
        self._decoy_key = secrets.token_bytes(16)

    def lookup(self, username: str, now: float) -> KeyLookup:
        if self.type == "static":
            # compare_digest: as long for every wrong name, however much of it matches
            if not hmac.compare_digest(username.encode(), self._auth.username.encode()):
                return KeyLookup(None, self._decoy_key, "unknown username")
            return KeyLookup(self._static_key, self._static_key)
        # the key first, whatever the username says: every ephemeral failure costs the same
        password = ephemeral_password(self._auth.secret, username)
        key = long_term_key(username, self.realm, password)
        expiry = ephemeral_expiry(username)
        if expiry is None:
            return KeyLookup(None, self._decoy_key, "ephemeral username has no expiry timestamp")
        if expiry < now:
            return KeyLookup(None, self._decoy_key, "ephemeral username expired", expired=True)
        return KeyLookup(key, key)


class NonceState(Enum):
    """What `Nonces.check` found."""

    OK = "ok"
    STALE = "stale"  # genuine, but older than NONCE_LIFETIME
    INVALID = "invalid"  # not one of ours


def nonce_binding(transport: str, client: Addr) -> bytes:
    """What a nonce is bound to: the client's transport address (IP, port) and transport, as
    coturn binds its nonces to the session. A client behind a shared NAT has a port of its own,
    so a neighbour replaying its requests is refused too."""
    return f"{transport}|{client[0]}|{client[1]}".encode()


class Nonces:
    """Stateless nonces: base64url(issue time || HMAC(secret, issue time || binding)), 22
    characters, where the binding is `nonce_binding` of the client they were issued to.

    A small cache spares the HMAC of the common case without holding state a stranger can
    grow: only nonces whose MAC checked out, hence only ones we issued, are remembered (with
    their binding: a cached nonce is still good only for its own client)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._genuine: dict[tuple[str, bytes], int] = {}  # (nonce, binding) -> issue second

    def _mac(self, stamp: bytes, binding: bytes) -> bytes:
        return hmac.digest(self._secret, stamp + binding, "sha256")[:_NONCE_MAC_BYTES]

    def issue(self, now: float, binding: bytes) -> str:
        stamp = struct.pack("!I", int(now) & 0xFFFFFFFF)
        return base64.urlsafe_b64encode(stamp + self._mac(stamp, binding)).decode().rstrip("=")

    def check(self, nonce: str, now: float, binding: bytes) -> NonceState:
        """OK, STALE (ours, for this client, but too old) or INVALID (not ours, or issued to
        another client: both earn 438 with a fresh nonce)."""
        issued = self._genuine.get((nonce, binding))
        if issued is None:
            if len(nonce) != 22:
                return NonceState.INVALID
            try:
                raw = base64.urlsafe_b64decode(nonce + "==")
            except ValueError:
                return NonceState.INVALID
            stamp, mac = raw[:4], raw[4:]
            if len(mac) != _NONCE_MAC_BYTES or not hmac.compare_digest(
                mac, self._mac(stamp, binding)
            ):
                return NonceState.INVALID
            issued = struct.unpack("!I", stamp)[0]
            if len(self._genuine) >= _GENUINE_NONCES_KEPT:
                self._genuine.clear()
            self._genuine[(nonce, binding)] = issued
        age = (int(now) - issued) & 0xFFFFFFFF
        return NonceState.OK if age <= NONCE_LIFETIME else NonceState.STALE
