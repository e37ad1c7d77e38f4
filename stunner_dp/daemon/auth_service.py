"""`stunner-dp auth-service`: STUNner's stunner-auth-service API, from the dataplane's config.

A web application asks it for TURN credentials and URIs instead of hard-coding them:

- ``GET /?service=turn&username=U&ttl=S`` answers the TURN REST API token
  ``{"username", "password", "ttl", "uris"}`` (draft-uberti-behave-turn-rest-00);
- ``GET /ice?service=turn&username=U&ttl=S&iceTransportPolicy=relay`` answers an
  RTCConfiguration ``{"iceServers": [{"urls", "username", "credential"}],
  "iceTransportPolicy"}`` to hand to ``new RTCPeerConnection(...)``.

Parameters as the real service takes them: ``service`` (``turn``; required on ``/``),
``username`` (the user id in an ephemeral username), ``ttl`` (seconds, default 86400),
``iceTransportPolicy`` (``all``, ``public``, ``relay``), ``namespace``/``gateway``/``listener``
(keep the listeners named ``NS/GATEWAY/LISTENER`` that match; gateway needs namespace,
listener needs both), ``public-ip`` (advertise this host instead of the listeners') and ``key``
(accepted, unused). A bad one is 400 with a line naming it. No config yet is 500 and no
listener left after the filters 404, as the real service answers.

Credentials follow ``auth``: ephemeral gives ``<now + ttl>:<user>`` and
base64(HMAC-SHA1(secret, username)), the dataplane's own check; static gives the static
username and password. ``auth.type: none`` (STUN only) gives ``stun:`` URIs without
credentials on ``/ice`` and 404 on ``/`` (there is no TURN token to give). URIs come from
`stunner_dp.client.ice.listener_uri`: each listener's public address and port, else its
address and port; ``turns:`` for TLS and DTLS.

The config comes from the dataplane's origin (a file, re-read with ``-w``, or the operator's
CDS server) through `stunner_dp.daemon.origin`, so a credential change reaches both at once.
Like the real service it has no authentication of its own: keep it inside the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from stunner_dp.client.ice import listener_uri
from stunner_dp.config import ConfigError, ListenerConfig, StunnerConfig
from stunner_dp.daemon.origin import is_cds_origin, make_origin
from stunner_dp.observe.logs import configure_logging, get_logger
from stunner_dp.turn.auth import ephemeral_password

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TTL",
    "AuthService",
    "BadParameter",
    "Params",
    "auth_service_main",
    "parse_params",
]

log = get_logger("stunner")

DEFAULT_PORT = 8088  # the real service's
DEFAULT_TTL = 86400
MAX_TTL = 10 * 365 * 86400  # an expiry past 2^31 would not be a timestamp anyone parses
MAX_USER_BYTES = 400  # the whole STUN USERNAME is at most 513 bytes (RFC 8489 14.3)
POLICIES = ("all", "public", "relay")
DEFAULT_CONFIG_PATH = "/etc/stunnerd/stunnerd.conf"
CONFIG_PATH_ENV = "STUNNERD_CONFIG_PATH"  # the real service's override of the path


class BadParameter(Exception):
    """A query parameter the API cannot take: answered 400 with its name."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"invalid parameter {name!r}: {problem}")
        self.name = name


@dataclass(frozen=True)
class Params:
    username: str = ""
    ttl: int = DEFAULT_TTL
    policy: str = "all"
    namespace: str = ""
    gateway: str = ""
    listener: str = ""
    public_ip: str = ""


def parse_params(query: Mapping[str, str], *, service_required: bool) -> Params:
    """The request's parameters, checked; BadParameter names the first bad one."""
    service = query.get("service")
    if service is None and service_required:
        raise BadParameter("service", 'required, must be "turn"')
    if service is not None and service != "turn":
        raise BadParameter("service", f'must be "turn", got {service!r}')
    ttl = DEFAULT_TTL
    if "ttl" in query:
        text = query["ttl"].strip()
        if not text.isdigit() or not 0 < int(text) <= MAX_TTL:
            raise BadParameter("ttl", f"seconds, an integer in 1-{MAX_TTL}, got {query['ttl']!r}")
        ttl = int(text)
    username = query.get("username", "")
    if len(username.encode()) > MAX_USER_BYTES:
        raise BadParameter("username", f"at most {MAX_USER_BYTES} bytes")
    if not username.isprintable():
        raise BadParameter("username", "control characters are not allowed")
    policy = query.get("iceTransportPolicy", "all")
    if policy not in POLICIES:
        raise BadParameter("iceTransportPolicy", f"one of {', '.join(POLICIES)}, got {policy!r}")
    namespace, gateway, listener = (query.get(k, "") for k in ("namespace", "gateway", "listener"))
    if gateway and not namespace:
        raise BadParameter("gateway", "needs namespace too")
    if listener and not (namespace and gateway):
        raise BadParameter("listener", "needs namespace and gateway too")
    public_ip = query.get("public-ip", "").strip()
    if "public-ip" in query and not _is_host(public_ip):
        raise BadParameter("public-ip", f"an IP address or a DNS name, got {query['public-ip']!r}")
    return Params(username, ttl, policy, namespace, gateway, listener, public_ip)


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        labels = text.rstrip(".").split(".")
        return 0 < len(text) <= 253 and all(
            0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
            for label in labels
        )


class NoListener(Exception):
    """No listener of the config is left to advertise: 404."""


def selected_listeners(config: StunnerConfig, params: Params) -> list[ListenerConfig]:
    """The listeners the filters keep. Operator-rendered names are NAMESPACE/GATEWAY/LISTENER;
    a listener named otherwise is kept only when no filter is given."""
    out = []
    for lis in config.listeners:
        parts = lis.name.split("/")
        if params.namespace:
            if len(parts) != 3 or parts[0] != params.namespace:
                continue
            if params.gateway and parts[1] != params.gateway:
                continue
            if params.listener and parts[2] != params.listener:
                continue
        if params.public_ip:
            lis = dataclasses.replace(lis, public_address=params.public_ip)
        out.append(lis)
    return out


def ice_server(config: StunnerConfig, params: Params, now: float) -> dict[str, Any]:
    """One RTCIceServer for the config: its URIs and the credentials for them."""
    listeners = selected_listeners(config, params)
    uris = [u for lis in listeners if (u := listener_uri(lis))]
    auth = config.auth
    if auth.type == "none":
        # STUN only: no credentials; browsers speak STUN over UDP only
        stun = [
            "stun:" + u.removeprefix("turn:").removesuffix("?transport=udp")
            for lis in listeners
            if lis.protocol == "TURN-UDP" and (u := listener_uri(lis))
        ]
        if not stun:
            raise NoListener("no TURN-UDP listener with a usable address")
        return {"urls": stun}
    if not uris:
        raise NoListener("no valid listener found")
    if auth.type == "ephemeral":
        expiry = int(now + params.ttl)
        username = f"{expiry}:{params.username}" if params.username else str(expiry)
        # the first secret issues; previous_secrets are only accepted
        credential = ephemeral_password(auth.secret, username, auth.rest_hmac)
    else:
        username, credential = auth.username, auth.password
    return {"urls": uris, "username": username, "credential": credential}


class AuthService:
    """The HTTP side: `apply` takes each config the origin delivers; `app` serves the API.
    `now` is the clock credentials are minted with (tests put it in the past)."""

    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self.config: StunnerConfig | None = None
        self.now = now
        self.requests = 0

    async def apply(self, config: StunnerConfig) -> bool:
        self.config = config
        log.info(
            "auth service config",
            name=config.admin.name,
            auth=config.auth.type,
            listeners=len(config.listeners),
        )
        return True

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._turn)
        app.router.add_get("/ice", self._ice)
        app.router.add_get("/live", self._live)
        return app

    def _answer(
        self, request: web.Request, *, service_required: bool
    ) -> tuple[Params, dict[str, Any]] | web.Response:
        self.requests += 1
        try:
            params = parse_params(request.query, service_required=service_required)
        except BadParameter as exc:
            return web.Response(status=400, text=f"{exc}\n")
        config = self.config
        if config is None:
            return web.Response(status=500, text="no STUNner configuration available\n")
        try:
            return params, ice_server(config, params, self.now())
        except NoListener as exc:
            return web.Response(status=404, text=f"could not generate credentials: {exc}\n")

    async def _turn(self, request: web.Request) -> web.Response:
        answer = self._answer(request, service_required=True)
        if isinstance(answer, web.Response):
            return answer
        params, server = answer
        if "username" not in server:
            text = "no TURN listener: auth.type none serves STUN only (use /ice)\n"
            return web.Response(status=404, text=text)
        token = {
            "username": server["username"],
            "password": server["credential"],
            "ttl": params.ttl,
            "uris": server["urls"],
        }
        return web.json_response(token)

    async def _ice(self, request: web.Request) -> web.Response:
        answer = self._answer(request, service_required=False)
        if isinstance(answer, web.Response):
            return answer
        params, server = answer
        return web.json_response({"iceServers": [server], "iceTransportPolicy": params.policy})

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({})


def auth_service_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stunner-dp auth-service",
        description="Serve TURN credentials and ICE server configs (STUNner's "
        "stunner-auth-service API) for the dataplane's config.",
    )
    p.add_argument(
        "-c",
        "--config",
        default="",
        help="config origin, as the dataplane's: PATH, file://PATH or a CDS server "
        f"http://HOST:PORT (default $STUNNER_CONFIG_ORIGIN, ${CONFIG_PATH_ENV}, "
        f"{DEFAULT_CONFIG_PATH})",
    )
    p.add_argument("-w", "--watch", action="store_true", help="follow config changes")
    p.add_argument(
        "-i",
        "--id",
        default="",
        help="the config id NS/NAME on a CDS server (default $STUNNER_NAMESPACE/$STUNNER_NAME)",
    )
    p.add_argument("-a", "--address", default="0.0.0.0", help="listen address (0.0.0.0)")
    p.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, help=f"({DEFAULT_PORT})")
    p.add_argument("-l", "--log", default="all:INFO", help="log levels, e.g. all:DEBUG")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    return p


def _origin(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, str]:
    origin = (
        args.config
        or env.get("STUNNER_CONFIG_ORIGIN", "")
        or env.get(CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH)
    )
    config_id = args.id
    if not config_id and env.get("STUNNER_NAMESPACE") and env.get("STUNNER_NAME"):
        config_id = f"{env['STUNNER_NAMESPACE']}/{env['STUNNER_NAME']}"
    return origin, config_id


async def serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    origin_name, config_id = _origin(args, env)
    service = AuthService()
    try:
        origin = make_origin(
            origin_name,
            service.apply,
            watch=args.watch or is_cds_origin(origin_name),
            config_id=config_id,
        )
    except ConfigError as exc:
        print(f"stunner-dp auth-service: {exc}", file=sys.stderr)
        return 2
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.address, args.port).start()
    except OSError as exc:
        await runner.cleanup()
        print(f"stunner-dp auth-service: cannot listen: {exc}", file=sys.stderr)
        return 1
    log.info(
        "auth service listening", address=args.address, port=args.port, origin=origin.description
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, origin.reload)
    try:
        await origin.start()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await origin.stop()
        await runner.cleanup()
    return 0


def auth_service_main(argv: list[str] | None = None) -> int:
    args = auth_service_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print("stunner-dp auth-service: --port must be 1-65535", file=sys.stderr)
        return 2
    try:
        configure_logging(args.log, args.log_format)
    except ValueError as exc:
        print(f"stunner-dp auth-service: --log: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(args, os.environ))
