"""`stunner-dp ice --config FILE [--user U] [--ttl S] [--secret S]`: ICE server JSON.

Prints what STUNner's stunner-auth-service answers to ``GET /ice?service=turn``, for the
config in FILE::

    {"iceServers": [{"username": "1681490135:U", "credential": "...",
                     "urls": ["turn:34.118.88.91:3478?transport=udp", ...]}],
     "iceTransportPolicy": "all"}

- ephemeral auth (TURN REST API): username ``<now + ttl>:<user>`` (just ``<now + ttl>``
  without --user), credential base64(HMAC-SHA1(secret, username));
- static auth: the configured username and password (--user and --ttl do not apply);
- one URI per listener, at its public_address/public_port, else its address/port: TURN-UDP
  ``turn:H:P?transport=udp``, TURN-TCP ``turn:H:P?transport=tcp``, TURN-TLS
  ``turns:H:P?transport=tcp``, TURN-DTLS ``turns:H:P?transport=udp``. A listener with neither
  a public nor a specific address (0.0.0.0) is left out, with a warning on stderr.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from typing import Any

from stunner_dp.config import ConfigError, ListenerConfig, StunnerConfig, load_config_file
from stunner_dp.turn.auth import ephemeral_password

DEFAULT_TTL = 86400

SCHEMES = {
    "TURN-UDP": ("turn", "udp"),
    "TURN-TCP": ("turn", "tcp"),
    "TURN-TLS": ("turns", "tcp"),
    "TURN-DTLS": ("turns", "udp"),
}


def listener_uri(listener: ListenerConfig) -> str | None:
    """The ICE URI of a listener, None when it has no address a client could use."""
    host = listener.public_address or listener.address
    port = listener.public_port or listener.port
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return None
    except ValueError:
        if not host:
            return None  # a DNS name is fine; an empty one is not
    scheme, transport = SCHEMES.get(listener.protocol, ("turn", listener.transport))
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}:{host}:{port}?transport={transport}"


def ice_config(
    config: StunnerConfig,
    *,
    user: str = "",
    ttl: int = DEFAULT_TTL,
    secret: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The stunner-auth-service answer for `config`."""
    auth = config.auth
    if auth.type == "ephemeral":
        key = auth.secret if secret is None else secret
        if not key:
            raise ValueError("ephemeral auth needs a secret (auth.credentials.secret or --secret)")
        expiry = int((time.time() if now is None else now) + ttl)
        username = f"{expiry}:{user}" if user else str(expiry)
        credential = ephemeral_password(key, username, auth.rest_hmac)
    else:
        username, credential = auth.username, auth.password
    urls = [uri for lis in config.listeners if (uri := listener_uri(lis)) is not None]
    return {
        "iceServers": [{"username": username, "credential": credential, "urls": urls}],
        "iceTransportPolicy": "all",
    }


def ice_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stunner-dp ice",
        description="Print the ICE server configuration (as stunner-auth-service serves it) "
        "for a stunner-dp/STUNner config file.",
    )
    p.add_argument("--config", "-c", required=True, help="the config file (YAML or JSON)")
    p.add_argument("--user", "-u", default="", help="user id in ephemeral usernames")
    p.add_argument(
        "--ttl", type=int, default=DEFAULT_TTL, help="ephemeral credential lifetime, s (86400)"
    )
    p.add_argument("--secret", default=None, help="use this shared secret instead of the file's")
    return p


def ice_main(argv: list[str] | None = None) -> int:
    args = ice_parser().parse_args(argv)
    if args.ttl <= 0:
        print("stunner-dp ice: --ttl must be positive", file=sys.stderr)
        return 2
    try:
        config = load_config_file(args.config)
        doc = ice_config(config, user=args.user, ttl=args.ttl, secret=args.secret)
    except (ConfigError, ValueError) as exc:
        print(f"stunner-dp ice: {exc}", file=sys.stderr)
        return 2
    for lis in config.listeners:
        if listener_uri(lis) is None:
            print(
                f"stunner-dp ice: listener {lis.name!r} has no public_address and a wildcard "
                "address: left out",
                file=sys.stderr,
            )
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(ice_main())
