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
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

__all__ = ["Handler", "HttpEndpoints", "parse_http_endpoint"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Key = tuple[str, int]


def parse_http_endpoint(
    url: str, default_port: int, default_path: str = "/"
) -> tuple[str, int, str]:
    """`http://:8086` -> ("", 8086, "/"); `http://127.0.0.1:8080/metrics` -> ("127.0.0.1",
    8080, "/metrics"); `[::1]:9000` and `:9000` (no scheme) are accepted. An empty host means
    every interface. Raises ValueError for anything else."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", ""):
        raise ValueError(f"{url!r}: only http:// endpoints are served")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number in 0-65535") from None
    host = parts.hostname or ""
    path = parts.path or default_path
    if not path.startswith("/"):
        path = "/" + path
    return host, default_port if port is None else port, path


@dataclass
class _Site:
    runner: web.AppRunner
    routes: dict[str, Handler] = field(default_factory=dict)
    port: int = 0


class HttpEndpoints:
    """aiohttp servers keyed by (host, port), each serving the paths mounted on it."""

    def __init__(self) -> None:
        self._sites: dict[Key, _Site] = {}

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
            await site.runner.cleanup()

    def bound_port(self, host: str, port: int) -> int | None:
        """The port the server for (host, port) listens on (useful with port 0), or None."""
        site = self._sites.get((host, port))
        return site.port if site is not None else None

    def mounted(self) -> dict[Key, tuple[str, ...]]:
        return {key: tuple(site.routes) for key, site in self._sites.items()}

    async def close(self) -> None:
        sites, self._sites = list(self._sites.values()), {}
        for site in sites:
            await site.runner.cleanup()

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
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        tcp = web.TCPSite(runner, host or None, port, reuse_address=True)
        try:
            await tcp.start()
        except BaseException:
            await runner.cleanup()
            raise
        site = _Site(runner)
        site.port = int(runner.addresses[0][1]) if runner.addresses else port
        holder.append(site)
        return site
