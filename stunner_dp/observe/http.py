"""The small HTTP servers of the daemon (health, status, metrics), shared by (host, port).

`admin.healthcheck_endpoint` and `admin.metrics_endpoint` may name the same host:port
(e.g. both `http://:8080`): one aiohttp server then answers every path mounted on it. Paths are
mounted and unmounted while the servers run, so a reconfiguration can move an endpoint: the first
path mounted on a (host, port) starts its server, the last one unmounted stops it.

    endpoints = HttpEndpoints()
    host, port, path = parse_http_endpoint("http://:8080/metrics", 8080, "/metrics")
    await endpoints.mount(host, port, path, handler)   # OSError when the port cannot be bound
    ...
    await endpoints.close()

An empty host means every interface (IPv4 and IPv6). Port 0 binds a free port (give a host
then: the wildcard would bind one port per family); `bound_port(host, port)` tells which.

These ports face whoever reaches the pod, so each server bounds what a client can hold: a
request must arrive whole within REQUEST_TIMEOUT of the connection (or of the last answer on
a kept-alive one), connections are capped per source IP and in total (past a cap one is closed
at accept), and a malformed request is one debug line, not a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from stunner_dp.config.http_endpoint import parse_http_endpoint

__all__ = ["Handler", "HttpEndpoints", "parse_http_endpoint"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Key = tuple[str, int]

REQUEST_TIMEOUT = 5.0  # seconds for a whole request line and headers, and between requests
MAX_CONNECTIONS = 64  # per server (host:port)
MAX_CONNECTIONS_PER_IP = 16  # ... from one source IP: a probe or a scraper needs one or two


class _RequestLog(logging.Logger):
    """aiohttp's server log, with a request it could not parse as one debug line: anyone can
    send junk to the port, and a traceback per request would flood the log."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.debug("malformed HTTP request: %s", str(exc_info).replace("\n", " ")[:200])
            return
        super().exception(msg, *args, exc_info=exc_info, **kw)

    def isEnabledFor(self, level: int) -> bool:
        # unregistered, so logging never clears this logger's level cache (setLevel, a reload,
        # caplog): ask aiohttp's logger each time
        parent = self.parent
        return parent.isEnabledFor(level) if parent is not None else super().isEnabledFor(level)


# not registered with logging: it takes its level and handlers from aiohttp's own logger
# through `parent`, and its lines carry aiohttp's name
_REQUEST_LOG = _RequestLog("aiohttp.server")
_REQUEST_LOG.parent = logging.getLogger("aiohttp.server")


class _Caps:
    """Connections of one server, counted per source IP and in total."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.cap, self.cap_per_ip = total, per_ip
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self.refused = 0

    def admit(self, ip: str) -> bool:
        held = self.per_ip.get(ip, 0)
        if self.total >= self.cap or held >= self.cap_per_ip:
            self.refused += 1
            return False
        self.total += 1
        self.per_ip[ip] = held + 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        held = self.per_ip.get(ip, 1) - 1
        if held > 0:
            self.per_ip[ip] = held
        else:
            self.per_ip.pop(ip, None)


class _Admission(asyncio.Protocol):
    """In front of aiohttp's protocol: a connection past a cap is closed before aiohttp sees
    it; the others are passed through unchanged."""

    def __init__(self, inner: asyncio.Protocol, caps: _Caps) -> None:
        self.inner, self.caps = inner, caps
        self.ip: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        if not self.caps.admit(ip):
            cast(asyncio.Transport, transport).abort()
            return
        self.ip = ip
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.ip is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.ip is not None else None

    def pause_writing(self) -> None:
        if self.ip is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.ip is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ip is not None:
            self.caps.release(self.ip)
            self.ip = None
            self.inner.connection_lost(exc)


@dataclass
class _Site:
    runner: web.AppRunner
    server: asyncio.Server | None = None
    caps: _Caps | None = None
    routes: dict[str, Handler] = field(default_factory=dict)
    port: int = 0

    async def cleanup(self) -> None:
        if self.server is not None:
            self.server.close()
        await self.runner.cleanup()


class HttpEndpoints:
    """aiohttp servers keyed by (host, port), each serving the paths mounted on it."""

    def __init__(
        self,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_ip: int = MAX_CONNECTIONS_PER_IP,
    ) -> None:
        self._sites: dict[Key, _Site] = {}
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip

    async def mount(self, host: str, port: int, path: str, handler: Handler) -> None:
        """Serve `handler` (any method) at `path` on host:port, starting that server if this is
        its first path. Mounting a path again replaces its handler. OSError when binding fails
        (nothing is left mounted then)."""
        key = (host, port)
        site = self._sites.get(key)
        if site is None:
            site = await self._start(host, port)
            self._sites[key] = site
        site.routes[path] = handler

    async def unmount(self, host: str, port: int, path: str) -> None:
        key = (host, port)
        site = self._sites.get(key)
        if site is None:
            return
        site.routes.pop(path, None)
        if not site.routes:
            del self._sites[key]
            await site.cleanup()

    def bound_port(self, host: str, port: int) -> int | None:
        """The port the server for (host, port) listens on (useful with port 0), or None."""
        site = self._sites.get((host, port))
        return site.port if site is not None else None

    def mounted(self) -> dict[Key, tuple[str, ...]]:
        return {key: tuple(site.routes) for key, site in self._sites.items()}

    async def close(self) -> None:
        sites, self._sites = list(self._sites.values()), {}
        for site in sites:
            await site.cleanup()

    async def _start(self, host: str, port: int) -> _Site:
        app = web.Application()
        holder: list[_Site] = []

        async def dispatch(request: web.Request) -> web.StreamResponse:
            handler = holder[0].routes.get(request.path)
            if handler is None:
                return web.Response(
                    status=404,
                    text=json.dumps({"status": 404, "message": f"no such path: {request.path}"}),
                    content_type="application/json",
                )
            return await handler(request)

        app.router.add_route("*", "/{tail:.*}", dispatch)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # aiohttp closes a connection that has not sent a whole request by then (its
            # keep-alive timer starts at accept, and is not reset by partial data)
            keepalive_timeout=self.request_timeout,
            lingering_time=1.0,
            logger=_REQUEST_LOG,
        )
        await runner.setup()
        factory = runner.server
        assert factory is not None
        caps = _Caps(self.max_connections, self.max_connections_per_ip)
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: _Admission(factory(), caps), host or None, port, reuse_address=True
            )
        except BaseException:
            await runner.cleanup()
            raise
        site = _Site(runner, server, caps)
        site.port = int(server.sockets[0].getsockname()[1]) if server.sockets else port
        holder.append(site)
        return site
