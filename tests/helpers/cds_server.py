"""A config discovery server for the tests, on aiohttp, speaking STUNner's CDS protocol:
`GET /api/v1/configs/{ns}/{name}` (404 until it has a config) and the websocket watch
(`?watch=true`), which sends the current config at once and every update after it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web

from stunner_dp.testing import free_port


class CdsServer:
    def __init__(self, *, answer_pings: bool = True, port: int = 0) -> None:
        self.config: dict[str, Any] | str | None = None  # a str is sent as it is (bad JSON)
        self.answer_pings = answer_pings
        self.port = port  # 0: a free one; a given one to come back where a stopped server was
        self.gets = 0
        self.connects = 0
        self.pings = 0
        self.headers: list[dict[str, str]] = []
        self.queries: list[dict[str, str]] = []
        self.ids: list[str] = []
        self.fail_gets = 0  # answer this many GETs with 404 even when there is a config
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CdsServer:
        app = web.Application()
        app.router.add_get("/api/v1/configs/{ns}/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        for _ in range(5):
            port = self.port or free_port(udp=False)
            site = web.TCPSite(self._runner, "127.0.0.1", port)
            try:
                await site.start()
            except OSError:
                continue
            self.port = port
            return self
        raise RuntimeError("no free port for the CDS server")

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> CdsServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _text(self) -> str | None:
        if self.config is None:
            return None
        return self.config if isinstance(self.config, str) else json.dumps(self.config)

    async def push(self, config: dict[str, Any] | str) -> None:
        """Make `config` current and send it to every watcher."""
        self.config = config
        text = self._text()
        assert text is not None
        for ws in list(self._sockets):
            await ws.send_str(text)

    async def drop(self) -> None:
        """Close every watch connection from the server side."""
        for ws in list(self._sockets):
            await ws.close()

    @property
    def watchers(self) -> int:
        return len(self._sockets)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ident = f"{request.match_info['ns']}/{request.match_info['name']}"
        self.ids.append(ident)
        self.headers.append(dict(request.headers))
        self.queries.append(dict(request.query))
        if request.query.get("watch") == "true":
            return await self._watch(request)
        self.gets += 1
        text = self._text()
        if text is None or self.fail_gets > 0:
            self.fail_gets = max(0, self.fail_gets - 1)
            body = {"code": 404, "message": f"Config not found for ID {ident}"}
            return web.json_response(body, status=404)
        return web.Response(text=text, content_type="application/json")

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.connects += 1
        self._sockets.add(ws)
        try:
            text = self._text()
            if text is not None:
                await ws.send_str(text)
            async for msg in ws:
                if msg.type == WSMsgType.PING:
                    self.pings += 1
                    if self.answer_pings:
                        await ws.pong(msg.data)
                elif msg.type == WSMsgType.CLOSE:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._sockets.discard(ws)
        return ws
