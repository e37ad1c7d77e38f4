"""The `stunnerd` command line (flags as STUNner's daemon has them) and `stunner-dp`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from stunner_dp import __version__
from stunner_dp.config import ConfigError, StunnerConfig, load_config_file, parse_config
from stunner_dp.config.uri import parse_turn_uri
from stunner_dp.daemon.origin import is_cds_origin
from stunner_dp.observe.logs import configure_logging, get_logger

log = get_logger("stunner")


def stunnerd_parser() -> argparse.ArgumentParser:
    """stunnerd's flags, every one of them (cmd/stunnerd/main.go and the Kubernetes and CDS
    discovery flags it adds), plus stunner-dp's own (--alternate-server, --grace-period,
    --version). `parse_args` takes pflag's spellings too (`--watch=false`, `-u=16`)."""
    p = PflagParser(
        prog="stunnerd", description="stunner-dp: a TURN/STUN server, drop-in dataplane for STUNner"
    )
    p.add_argument(
        "uri", nargs="?", help="quick start: turn://USER:PASS@ADDR:PORT?transport=udp|tcp"
    )
    p.add_argument(
        "-c",
        "--config",
        help="config origin: PATH, file://PATH, http://HOST:PORT (CDS) or k8s "
        "(with --cds-server-address)",
    )
    p.add_bool("-w", "--watch", help="watch the origin and reconcile changes")
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
    p.add_bool("-d", "--dry-run", help="print the effective config, exit")
    p.add_bool("--force-ready-status", help="stay ready while draining")
    p.add_bool("-v", "--verbose", help="verbose logging, the same as -l all:DEBUG")
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
    p.add_argument(
        "--forwarder",
        choices=("auto", "compiled", "python"),
        default="",
        help="UDP media path in user space: the compiled forwarder thread where it loads "
        "(auto, the default; also $STUNNER_DP_FORWARDER), or Python only",
    )
    p.add_argument("--version", action="version", version=f"stunner-dp {__version__}")
    _add_discovery_flags(p)
    return p


class PflagParser(argparse.ArgumentParser):
    """argparse that reads a command line as Go's pflag does: a boolean flag takes an optional
    `=true`/`=false`, and a short flag its value after `=` (`-u=16`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bools: dict[str, str] = {}  # option string -> dest

    def add_bool(self, *flags: str, help: str) -> None:
        action = self.add_argument(*flags, action="store_true", help=help)
        for flag in flags:
            self._bools[flag] = action.dest

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        falsified: list[str] = []
        out: list[str] = []
        for i, arg in enumerate(argv):
            if arg == "--":
                out += argv[i:]
                break
            flag, eq, value = arg.partition("=")
            if eq and flag in self._bools:
                if value.lower() not in _PFLAG_BOOLS:
                    self.error(f"{flag}: {value!r} is not a boolean (true or false)")
                if _PFLAG_BOOLS[value.lower()]:
                    out.append(flag)
                else:
                    falsified.append(self._bools[flag])
                continue
            if eq and len(flag) == 2 and flag[0] == "-" and flag[1] != "-":
                out.append(flag + value)  # -u=16 is -u16
                continue
            out.append(arg)
        ns, rest = super().parse_known_args(out, namespace)
        for name in falsified:
            setattr(ns, name, False)
        return ns, rest


# strconv.ParseBool's spellings, which pflag takes
_PFLAG_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def _add_discovery_flags(p: PflagParser) -> None:
    """stunnerd's `-c k8s` flags. kubectl's config flags (genericclioptions.ConfigFlags) are
    accepted and unused: stunner-dp does not talk to the Kubernetes API. The CDS flags name
    the CDS server directly, which is how `-c k8s` works here."""
    k8s = p.add_argument_group(
        "Kubernetes discovery (-c k8s)",
        "accepted as stunnerd has them; only --cds-server-address/--cds-server-port are used",
    )
    for flag in _K8S_STRING_FLAGS:
        k8s.add_argument(flag, default="", help=argparse.SUPPRESS)
    k8s.add_argument("-n", "--namespace", default="", help=argparse.SUPPRESS)
    k8s.add_argument("-s", "--server", default="", help=argparse.SUPPRESS)
    for flag in ("--as-group", "--as-user-extra"):
        k8s.add_argument(flag, action="append", default=None, help=argparse.SUPPRESS)
    for flag in ("--insecure-skip-tls-verify", "--disable-compression"):
        p.add_bool(flag, help=argparse.SUPPRESS)
    k8s.add_argument(
        "--cds-server-address",
        default=os.environ.get(CDS_ADDR_ENV, ""),
        metavar="HOST",
        help=f"the CDS server for -c k8s (env {CDS_ADDR_ENV})",
    )
    k8s.add_argument(
        "--cds-server-namespace",
        default=os.environ.get(CDS_NAMESPACE_ENV, ""),
        help="accepted, unused (it narrows a Kubernetes API search)",
    )
    k8s.add_argument(
        "--cds-server-port",
        type=int,
        default=_env_port(CDS_PORT_ENV, DEFAULT_CDS_PORT),
        metavar="PORT",
        help=f"the CDS server's port for -c k8s (env {CDS_PORT_ENV}, default {DEFAULT_CDS_PORT})",
    )


_K8S_STRING_FLAGS = (
    "--kubeconfig",
    "--cache-dir",
    "--client-certificate",
    "--client-key",
    "--token",
    "--as",
    "--as-uid",
    "--username",
    "--password",
    "--cluster",
    "--user",
    "--context",
    "--tls-server-name",
    "--certificate-authority",
    "--request-timeout",
)
CDS_ADDR_ENV, CDS_NAMESPACE_ENV, CDS_PORT_ENV = (
    "CDS_SERVER_ADDR",
    "CDS_SERVER_NAMESPACE",
    "CDS_SERVER_PORT",
)
DEFAULT_CDS_PORT = 13478
K8S_ORIGIN = "k8s"
K8S_NEEDS_ADDRESS = (
    "-c k8s: stunner-dp does not search the Kubernetes API for the CDS server; "
    "set STUNNER_CONFIG_ORIGIN=http://<cds-service>:13478 (the operator sets it in every "
    "dataplane pod) or add --cds-server-address HOST"
)


def _env_port(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else default


class DiscoveryRefused(Exception):
    """`-c k8s` with nothing that names the CDS server."""


def resolve_config_origin(args: argparse.Namespace) -> None:
    """`-c k8s` (or STUNNER_CONFIG_ORIGIN=k8s) becomes the CDS URL the discovery flags name, as
    stunnerd's DiscoverK8sCDSServer does with an explicit address; `-v` becomes -l all:DEBUG
    unless -l is given."""
    if args.verbose and not args.log:
        args.log = "all:DEBUG"
    origin = args.config or os.environ.get("STUNNER_CONFIG_ORIGIN", "")
    if args.uri or origin != K8S_ORIGIN:
        return
    host = args.cds_server_address.strip()
    if not host:
        raise DiscoveryRefused(K8S_NEEDS_ADDRESS)
    args.config = "http://" + join_host_port(host, args.cds_server_port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def stunnerd_main(argv: list[str] | None = None, prog: str = "stunnerd") -> int:
    parser = stunnerd_parser()
    parser.prog = prog  # `stunner-dp run --help` names itself
    args = parser.parse_args(argv)
    try:
        resolve_config_origin(args)
    except DiscoveryRefused as exc:
        print(f"stunnerd: {exc}", file=sys.stderr)
        return 1  # stunnerd exits 1 when it cannot find the CDS server
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
        for note in config.notes:
            print(f"stunnerd: warning: {note}", file=sys.stderr)
        yaml.safe_dump(config.to_dict(redact=False), sys.stdout, sort_keys=False)
        return 0
    from stunner_dp.daemon.stunnerd import run_daemon

    return run_daemon(args, config)


# `stunner-dp COMMAND`: (name, what it does); the daemon is the default command
COMMANDS = (
    ("run", "the TURN/STUN daemon, the same as `stunnerd` (the default: stunnerd's flags)"),
    ("probe", "check a TURN server step by step: Binding, Allocate, ..., a relayed round trip"),
    ("ice", "print the ICE server configuration for a config file, as stunner-auth-service"),
    ("auth-service", "serve stunner-auth-service's HTTP API (TURN credentials, iceServers)"),
)


def main_help() -> str:
    lines = [
        "usage: stunner-dp [run] [stunnerd flags] [turn://USER:PASS@ADDR:PORT]",
        "       stunner-dp probe turn://USER:PASS@HOST:PORT [--peer HOST:PORT]",
        "       stunner-dp ice -c CONFIG [--user U] [--ttl S]",
        "       stunner-dp auth-service -c ORIGIN [-w] [--port 8088]",
        "",
        "stunner-dp: a TURN/STUN server, drop-in dataplane for STUNner",
        "",
        "commands:",
        *(f"  {name:<14}{about}" for name, about in COMMANDS),
        "",
        "`stunner-dp COMMAND --help` shows a command's flags; with no command (or a flag first)",
        "stunner-dp is the daemon: `stunner-dp -c stunnerd.yaml` = `stunnerd -c stunnerd.yaml`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command in ("-h", "--help", "help"):
        sys.stdout.write(main_help())
        return 0
    if command == "probe":
        from stunner_dp.client.probe import probe_main

        return probe_main(argv[1:])
    if command == "ice":
        from stunner_dp.client.ice import ice_main

        return ice_main(argv[1:])
    if command == "auth-service":
        from stunner_dp.daemon.auth_service import auth_service_main

        return auth_service_main(argv[1:])
    if command == "run":
        return stunnerd_main(argv[1:], prog="stunner-dp run")
    if command and not command.startswith("-") and ":" not in command:
        # neither a flag nor a turn: URI: a mistyped command, not the daemon's URI argument
        names = ", ".join(name for name, _ in COMMANDS)
        print(f"stunner-dp: unknown command {command!r} (commands: {names})", file=sys.stderr)
        return 2
    return stunnerd_main(argv, prog="stunner-dp")


if __name__ == "__main__":
    sys.exit(main())
