"""Long-term credentials (RFC 8489 9.2) and stateless nonces.

Two credential schemes, as stunnerd and coturn's `use-auth-secret` have them:

- static: one username and password; key = MD5("username:realm:password").
- ephemeral (the TURN REST API): username "<expiry>:<user>", password =
  base64(HMAC-SHA1(secret, username)); rejected once the expiry has passed.

Nonces carry their own issue time and an HMAC over it, so any worker process holding the same
secret can check any nonce without shared state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import Enum

from stunner_dp.config import AuthConfig

NONCE_LIFETIME = 600.0  # seconds; an older nonce earns 438 Stale Nonce
_NONCE_MAC_BYTES = 12
_GENUINE_NONCES_KEPT = 4096  # ~ one issued a second: an hour's worth, and a bound


def long_term_key(username: str, realm: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def ephemeral_password(secret: str, username: str) -> str:
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def ephemeral_expiry(username: str) -> int | None:
    """The expiry timestamp of a TURN REST API username: its first ':'-separated integer part."""
    for part in username.split(":"):
        if part.isdigit():
            return int(part)
    return None


def quota_user(username: str, auth_type: str) -> str:
    """Whom a user quota counts against: for ephemeral usernames the user id, not the timestamp,
    so that asking for fresh credentials does not reset the count."""
    if auth_type != "ephemeral":
        return username
    parts = [p for p in username.split(":") if not p.isdigit()]
    return ":".join(parts) if parts else username


@dataclass(slots=True, frozen=True)
class KeyLookup:
    """The outcome of finding a user's key: the key, or why there is none."""

    key: bytes | None
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

    def lookup(self, username: str, now: float) -> KeyLookup:
        if self.type == "static":
            if username != self._auth.username:
                return KeyLookup(None, "unknown username")
            return KeyLookup(self._static_key)
        expiry = ephemeral_expiry(username)
        if expiry is None:
            return KeyLookup(None, "ephemeral username has no expiry timestamp")
        if expiry < now:
            return KeyLookup(None, "ephemeral username expired", expired=True)
        password = ephemeral_password(self._auth.secret, username)
        return KeyLookup(long_term_key(username, self.realm, password))


class NonceState(Enum):
    """What `Nonces.check` found."""

    OK = "ok"
    STALE = "stale"  # genuine, but older than NONCE_LIFETIME
    INVALID = "invalid"  # not one of ours


class Nonces:
    """Stateless nonces: base64url(issue time || HMAC(secret, issue time)), 22 characters.

    Two small caches spare the HMACs of the common case without holding state a stranger can
    grow: one nonce per second is issued (the same for every client that second), and only
    nonces whose MAC checked out, hence only ones we issued, are remembered."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._issued: tuple[int, str] = (-1, "")
        self._genuine: dict[str, int] = {}  # nonce -> issue second

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.digest(self._secret, stamp, "sha256")[:_NONCE_MAC_BYTES]

    def issue(self, now: float) -> str:
        second = int(now) & 0xFFFFFFFF
        if self._issued[0] != second:
            stamp = struct.pack("!I", second)
            nonce = base64.urlsafe_b64encode(stamp + self._mac(stamp)).decode().rstrip("=")
            self._issued = (second, nonce)
        return self._issued[1]

    def check(self, nonce: str, now: float) -> NonceState:
        issued = self._genuine.get(nonce)
        if issued is None:
            if len(nonce) != 22:
                return NonceState.INVALID
            try:
                raw = base64.urlsafe_b64decode(nonce + "==")
            except ValueError:
                return NonceState.INVALID
            stamp, mac = raw[:4], raw[4:]
            if len(mac) != _NONCE_MAC_BYTES or not hmac.compare_digest(mac, self._mac(stamp)):
                return NonceState.INVALID
            issued = struct.unpack("!I", stamp)[0]
            if len(self._genuine) >= _GENUINE_NONCES_KEPT:
                self._genuine.clear()
            self._genuine[nonce] = issued
        age = (int(now) - issued) & 0xFFFFFFFF
        return NonceState.OK if age <= NONCE_LIFETIME else NonceState.STALE
