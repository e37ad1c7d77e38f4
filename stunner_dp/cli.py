"""The `stunnerd` command line (flags as STUNner's daemon has them) and `stunner-dp`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml

from stunner_dp import __version__
from stunner_dp.config import ConfigError, StunnerConfig, load_config_file, parse_config
from stunner_dp.config.uri import parse_turn_uri
from stunner_dp.daemon.origin import is_cds_origin
from stunner_dp.observe.logs import configure_logging, get_logger

log = get_logger("stunner")


def stunnerd_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stunnerd", description="stunner-dp: a TURN/STUN server, drop-in dataplane for STUNner"
    )
    p.add_argument(
        "uri", nargs="?", help="quick start: turn://USER:PASS@ADDR:PORT?transport=udp|tcp"
    )
    p.add_argument(
        "-c", "--config", help="config origin: PATH, file://PATH or http://HOST:PORT (CDS)"
    )
    p.add_argument(
        "-w", "--watch", action="store_true", help="watch the origin and reconcile changes"
    )
    p.add_argument(
        "-u",
        "--udp-thread-num",
        type=int,
        default=0,
        metavar="N",
        help="worker processes, each with its own SO_REUSEPORT sockets",
    )
    p.add_argument("-l", "--log", default="", help="log levels, e.g. all:INFO,turn:DEBUG")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("-i", "--id", default="", help="dataplane id NAMESPACE/NAME")
    p.add_argument("-d", "--dry-run", action="store_true", help="print the effective config, exit")
    p.add_argument("--force-ready-status", action="store_true", help="stay ready while draining")
    p.add_argument(
        "--alternate-server",
        default="",
        metavar="HOST:PORT",
        help="while draining, send new Allocates there (300 Try Alternate)",
    )
    p.add_argument(
        "--grace-period",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="longest drain after SIGTERM",
    )
    p.add_argument("-v", "--version", action="version", version=f"stunner-dp {__version__}")
    return p


TURNS_NEEDS_CERT = (
    "use a config file with listeners[].cert and .key (see config/examples/tls-dtls.json)"
)


def config_from_uri(uri: str) -> dict[str, Any]:
    """`turn://user:pass@1.2.3.4:3478?transport=udp`: static auth, one listener, public peers.

    A `turns:` URI makes a TURN-TLS (or, with transport=udp, TURN-DTLS) listener, which needs
    a certificate no URI carries: that is a ConfigError naming the fix."""
    parsed = parse_turn_uri(uri)
    protocol = parsed.listener_protocol  # TURN-UDP, TURN-TCP, TURN-TLS or TURN-DTLS
    if parsed.secure:
        problem = f"a turns: URI needs a certificate (for its {protocol} listener)"
        raise ConfigError("uri", "", TURNS_NEEDS_CERT, problem=problem)
    listener = {
        "name": f"default-listener-{parsed.transport}",
        "protocol": protocol,
        "address": parsed.host,
        "port": parsed.port,
        "routes": ["allow-any"],
    }
    return {
        "version": "v1",
        "admin": {"name": "stunnerd"},
        "auth": {
            "type": "static",
            "credentials": {"username": parsed.username, "password": parsed.password},
        },
        "listeners": [listener],
        "clusters": [{"name": "allow-any", "type": "STATIC", "endpoints": ["0.0.0.0/0", "::/0"]}],
    }


def load_initial_config(args: argparse.Namespace) -> StunnerConfig | None:
    """The config from -c or the URI; None when the origin is a CDS server (fetched later)."""
    if args.uri:
        return parse_config(config_from_uri(args.uri))
    origin = args.config or os.environ.get("STUNNER_CONFIG_ORIGIN", "")
    if not origin and args.watch:
        return None  # the default CDS origin, as stunnerd (see daemon.options_from_args)
    if not origin:
        raise ConfigError("--config", "", "a config file (-c PATH), a CDS URL or a turn:// URI")
    if is_cds_origin(origin):
        return None
    return load_config_file(origin)


def stunnerd_main(argv: list[str] | None = None) -> int:
    args = stunnerd_parser().parse_args(argv)
    try:
        configure_logging(args.log or "all:INFO", args.log_format)
    except ValueError as exc:
        print(f"stunnerd: --log: {exc}", file=sys.stderr)
        return 2
    try:
        config = load_initial_config(args)
    except ConfigError as exc:
        print(f"stunnerd: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        if config is None:
            print("stunnerd: --dry-run needs a config file or URI", file=sys.stderr)
            return 2
        yaml.safe_dump(config.to_dict(redact=False), sys.stdout, sort_keys=False)
        return 0
    from stunner_dp.daemon.stunnerd import run_daemon

    return run_daemon(args, config)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "probe":
        from stunner_dp.client.probe import probe_main

        return probe_main(argv[1:])
    if argv and argv[0] == "ice":
        from stunner_dp.client.ice import ice_main

        return ice_main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return stunnerd_main(argv)


if __name__ == "__main__":
    sys.exit(main())
