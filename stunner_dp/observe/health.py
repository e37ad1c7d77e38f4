"""Health and status endpoints, as stunnerd serves them (default `http://:8086`).

- `GET /live`   -> 200 `{}`
- `GET /ready`  -> 200 `{"status":200,"message":"READY"}` or 503
                   `{"status":503,"message":"stunnerd not ready"}`
- `GET /status` -> the running state as JSON, with no password, secret or TLS key in it.

What is ready and what the status says comes from a `StatusSource` (the daemon, or a supervisor
of worker processes); this module only serves it, on the shared `HttpEndpoints`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web

from stunner_dp import __version__
from stunner_dp.config import StunnerConfig
from stunner_dp.config.http_endpoint import DEFAULT_HEALTH_PORT, parse_http_endpoint
from stunner_dp.observe.http import HttpEndpoints
from stunner_dp.observe.logs import get_logger

__all__ = [
    "DEFAULT_HEALTH_PORT",
    "HealthServer",
    "HealthState",
    "StatusSource",
    "status_document",
]

PATHS = ("/live", "/ready", "/status")


class HealthState(StrEnum):
    """The daemon's state, as /status reports it."""

    NOT_READY = "NOT-READY"  # until the first good config
    READY = "READY"
    TERMINATING = "TERMINATING"  # draining, on the way out


log = get_logger("stunner")


class StatusSource(Protocol):
    def is_ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...


def status_document(
    config: StunnerConfig | None,
    *,
    state: HealthState,
    bound: Mapping[str, int],
    failed: Mapping[str, str],
    allocation_count: int,
) -> dict[str, Any]:
    """The /status body. `bound` maps running listeners to their port, `failed` the ones that
    could not start to the reason."""
    doc: dict[str, Any] = {"version": __version__, "status": state}
    if config is None:
        doc.update(admin={}, auth={}, listeners=[], clusters=[], allocationCount=0)
        return doc
    redacted = config.to_dict(redact=True)
    listeners = []
    for lis in redacted["listeners"]:
        name = lis["name"]
        lis.pop("key", None)  # redacted anyway; nobody needs to see the placeholder
        lis.pop("cert", None)  # public, but long: a flag says it is there
        own = config.listener(name)
        lis["tls"] = bool(own is not None and own.cert)
        if name in bound:
            lis["state"] = "running"
            lis["bound_port"] = bound[name]
        elif name in failed:
            lis["state"] = "failed"
            lis["error"] = failed[name]
        else:
            lis["state"] = "stopped"
        listeners.append(lis)
    doc.update(
        admin=redacted["admin"],
        auth=_auth(redacted["auth"]),
        listeners=listeners,
        clusters=redacted["clusters"],
        allocationCount=allocation_count,
    )
    return doc


def _auth(auth: dict[str, Any]) -> dict[str, Any]:
    """Type and realm (and the static username, which is no secret); never password/secret."""
    out = {"type": auth["type"], "realm": auth["realm"]}
    username = auth.get("credentials", {}).get("username")
    if username and auth["type"] == "static":
        out["username"] = username
    return out


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


class HealthServer:
    """Mounts /live, /ready and /status on the endpoint URL given to `configure`."""

    def __init__(self, endpoints: HttpEndpoints, source: StatusSource) -> None:
        self.endpoints = endpoints
        self.source = source
        self.url: str | None = None  # the endpoint asked for ("" off, None never configured)
        self._key: tuple[str, int] | None = None  # where it is mounted now

    @property
    def port(self) -> int | None:
        if self._key is None:
            return None
        return self.endpoints.bound_port(*self._key)

    async def configure(self, url: str) -> None:
        """Serve at `url` ("" disables); a bad URL or a busy port is logged, never raised, and
        the daemon runs on without a health endpoint."""
        if url == self.url and (self._key is not None or not url):
            return
        self.url = url
        await self._unmount()
        if not url:
            log.info("health check endpoint disabled")
            return
        try:
            host, port, _ = parse_http_endpoint(url, DEFAULT_HEALTH_PORT)
        except ValueError as exc:
            log.error("admin.healthcheck_endpoint is not valid: no health endpoint", error=str(exc))
            return
        try:
            for path, handler in zip(PATHS, (self._live, self._ready, self._status), strict=True):
                await self.endpoints.mount(host, port, path, handler)
        except OSError as exc:
            log.error(
                "health check endpoint could not start",
                endpoint=url,
                error=exc.strerror or str(exc),
            )
            self._key = (host, port)
            await self._unmount()
            return
        self._key = (host, port)
        log.info("health check endpoint started", endpoint=url, port=self.port)

    async def close(self) -> None:
        await self._unmount()
        self.url = None

    async def _unmount(self) -> None:
        if self._key is not None:
            for path in PATHS:
                await self.endpoints.unmount(*self._key, path)
            self._key = None

    async def _live(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {})

    async def _ready(self, request: web.Request) -> web.StreamResponse:
        if self.source.is_ready():
            return _json(200, {"status": 200, "message": HealthState.READY})
        return _json(503, {"status": 503, "message": "stunnerd not ready"})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return _json(200, self.source.status())
