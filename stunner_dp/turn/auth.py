"""Long-term credentials (RFC 8489 9.2) and stateless nonces.

Two credential schemes, as stunnerd and coturn's `use-auth-secret` have them:

- static: one username and password; key = MD5("username:realm:password"), or SHA-256 of the
  same for a client that picks PASSWORD-ALGORITHM SHA-256 (RFC 8489 18.5).
- ephemeral (the TURN REST API): username "<expiry>:<user>", password =
  base64(HMAC-SHA1(secret, username)) (HMAC-SHA256 with auth.credentials.rest_hmac: sha256);
  rejected once the expiry has passed. Every secret of `secret` and `previous_secrets` is
  accepted, so a rotation never fails a client holding a password made with the old one.

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

from stunner_dp import stun
from stunner_dp.config import AuthConfig
from stunner_dp.stun import PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256
from stunner_dp.turn.types import Addr

NONCE_LIFETIME = 600.0  # seconds; an older nonce earns 438 Stale Nonce
_NONCE_MAC_BYTES = 12
_COOKIE_CHARS = len(stun.NONCE_COOKIE) + 4  # the cookie and 24 feature bits in base64
_NONCE_CHARS = _COOKIE_CHARS + 22  # then base64url(4-byte time || 12-byte MAC), unpadded
_GENUINE_NONCES_KEPT = 4096  # a bound on the cache of nonces already checked
# A Unix time in ASCII digits; 20 digits is past 2**64, so any longer "timestamp" is not one
# (and int() never sees a string long enough to be slow or refused).
_MAX_TIMESTAMP_DIGITS = 20


# The PASSWORD-ALGORITHMS a challenge offers, in our order of preference (RFC 8489 14.11).
OFFERED_ALGORITHMS = (PASSWORD_ALGORITHM_SHA256, PASSWORD_ALGORITHM_MD5)


def long_term_key(
    username: str, realm: str, password: str, algorithm: int = PASSWORD_ALGORITHM_MD5
) -> bytes:
    """RFC 8489 9.2.2: MD5 or SHA-256 of "username:realm:password" (16 or 32 bytes)."""
    text = f"{username}:{realm}:{password}".encode()
    if algorithm == PASSWORD_ALGORITHM_SHA256:
        return hashlib.sha256(text).digest()
    return hashlib.md5(text).digest()


def userhash(username: str, realm: str) -> bytes:
    """USERHASH (RFC 8489 14.4): SHA-256 of "username:realm"."""
    return hashlib.sha256(f"{username}:{realm}".encode()).digest()


def ephemeral_password(secret: str, username: str, digest: str = "sha1") -> str:
    """The TURN REST API password: base64 of HMAC-SHA1 (or HMAC-SHA256) of the username."""
    mac = hmac.digest(secret.encode(), username.encode(), digest)
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
    """The outcome of finding a user's keys: one per accepted secret, or none and why.
    `check_keys` is what the request's integrity is checked with either way (the keys, or as
    many decoys nobody holds), so that an unknown user costs what a wrong password costs and
    timing does not tell which usernames exist."""

    keys: tuple[bytes, ...]
    check_keys: tuple[bytes, ...]
    reason: str = ""
    expired: bool = False  # an ephemeral username past its time: no key may stand in for it


class Credentials:
    """Maps a USERNAME to its long-term key under the configured scheme."""

    def __init__(self, auth: AuthConfig) -> None:
        self.type = auth.type
        self.realm = auth.realm
        self._auth = auth
        # the first secret issues (auth_service, probe, ice); all of them are accepted
        self.secrets = (auth.secret, *auth.previous_secrets) if auth.secret else ()
        # A static key never changes: compute it once per algorithm, not per request.
        self._static_keys = (
            {
                alg: long_term_key(auth.username, auth.realm, auth.password, alg)
                for alg in OFFERED_ALGORITHMS
            }
            if auth.type == "static"
            else {}
        )
        # the static user's answers, made once: KeyLookup is immutable
        self._static_user = auth.username.encode() if auth.type == "static" else b""
        self._static_found = {alg: KeyLookup((k,), (k,)) for alg, k in self._static_keys.items()}
        # USERHASH can name only a user we can list: the static one (RFC 8489 9.2.4)
        self._static_userhash = (
            userhash(auth.username, auth.realm) if auth.type == "static" else b""
        )
        # random per process: the MAC computed for an unknown user, never one that matches
        self._decoy_key = secrets.token_bytes(16)
        self._unknown_static = KeyLookup((), (self._decoy_key,), "unknown username")

    @property
    def supports_userhash(self) -> bool:
        return self.type == "static"

    def username_for_hash(self, value: bytes) -> str | None:
        """The username a USERHASH names, or None (unknown, or ephemeral credentials, whose
        usernames cannot be listed)."""
        if not self._static_userhash or not hmac.compare_digest(value, self._static_userhash):
            return None
        return self._auth.username

    def lookup(
        self, username: str, now: float, algorithm: int = PASSWORD_ALGORITHM_MD5
    ) -> KeyLookup:
        if self.type == "static":
            # compare_digest: as long for every wrong name, however much of it matches
            if not hmac.compare_digest(username.encode(), self._static_user):
                return self._unknown_static
            return self._static_found[algorithm]
        # the keys first, whatever the username says: every ephemeral failure costs the same
        digest = self._auth.rest_hmac
        keys = tuple(
            long_term_key(username, self.realm, ephemeral_password(s, username, digest), algorithm)
            for s in self.secrets
        )
        decoys = (self._decoy_key,) * len(keys)
        expiry = ephemeral_expiry(username)
        if expiry is None:
            return KeyLookup((), decoys, "ephemeral username has no expiry timestamp")
        if expiry < now:
            return KeyLookup((), decoys, "ephemeral username expired", expired=True)
        return KeyLookup(keys, keys)


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
    """Stateless nonces: the RFC 8489 nonce cookie with our security feature bits, then
    base64url(issue time || HMAC(secret, issue time || feature bits || binding)), 35
    characters in all, where the binding is `nonce_binding` of the client they were issued to.
    The MAC covers the feature bits, so a man in the middle who strips them (to bid an RFC 8489
    client down to MD5, 9.2.4) turns the nonce into one that is not ours: 438, a fresh nonce.

    A small cache spares the HMAC of the common case without holding state a stranger can
    grow: only nonces whose MAC checked out, hence only ones we issued, are remembered (with
    their binding: a cached nonce is still good only for its own client)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._genuine: dict[tuple[str, bytes], int] = {}  # (nonce, binding) -> issue second

    def _mac(self, stamp: bytes, cookie: str, binding: bytes) -> bytes:
        data = stamp + cookie.encode() + b"|" + binding
        return hmac.digest(self._secret, data, "sha256")[:_NONCE_MAC_BYTES]

    def issue(self, now: float, binding: bytes, features: int = 0) -> str:
        stamp = struct.pack("!I", int(now) & 0xFFFFFFFF)
        cookie = stun.encode_nonce_cookie(features)
        token = base64.urlsafe_b64encode(stamp + self._mac(stamp, cookie, binding))
        nonce = cookie + token.decode().rstrip("=")
        # genuine by construction: the request that comes back with it skips the MAC
        self._remember(nonce, binding, struct.unpack("!I", stamp)[0])
        return nonce

    def _remember(self, nonce: str, binding: bytes, issued: int) -> None:
        if len(self._genuine) >= _GENUINE_NONCES_KEPT:
            self._genuine.clear()
        self._genuine[(nonce, binding)] = issued

    def check(self, nonce: str, now: float, binding: bytes) -> NonceState:
        """OK, STALE (ours, for this client, but too old) or INVALID (not ours, or issued to
        another client: both earn 438 with a fresh nonce)."""
        issued = self._genuine.get((nonce, binding))
        if issued is None:
            if len(nonce) != _NONCE_CHARS or stun.nonce_features(nonce) is None:
                return NonceState.INVALID
            cookie, token = nonce[:_COOKIE_CHARS], nonce[_COOKIE_CHARS:]
            try:
                raw = base64.urlsafe_b64decode(token + "==")
            except ValueError:
                return NonceState.INVALID
            stamp, mac = raw[:4], raw[4:]
            if len(mac) != _NONCE_MAC_BYTES or not hmac.compare_digest(
                mac, self._mac(stamp, cookie, binding)
            ):
                return NonceState.INVALID
            issued = struct.unpack("!I", stamp)[0]
            self._remember(nonce, binding, issued)
        age = (int(now) - issued) & 0xFFFFFFFF
        return NonceState.OK if age <= NONCE_LIFETIME else NonceState.STALE
