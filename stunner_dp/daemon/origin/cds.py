"""STUNner's config discovery service (CDS) as origin: the operator serves configs on :13478.

- one-shot (no `-w`): `GET /api/v1/configs/{ns}/{name}`, retried every second until a usable
  config arrives (no upper bound: a pod waiting for its Gateway is normal under Kubernetes;
  it stays NOT-READY meanwhile, and the log says why every 10 seconds).
- watch (`-w`): websocket `/api/v1/configs/{ns}/{name}?watch=true&node=NODE` with an
  `Origin: http://HOST` header. The server sends the current config at once and then every
  update, one whole JSON config per text message. The client pings every 5 s and drops a
  connection that answered no ping for 8 s; it reconnects every second, forever.

A message that is not a valid config is logged and skipped; a config without listeners is the
operator's "deleted" marker and is ignored too: the running config stays in both cases. Messages
are parsed in a child process with the config package's bounds (`isolated.py`), one at a time
and newest first: the connection keeps being read (pongs, newer configs) meanwhile, and a config
superseded before its turn is dropped. No message, however malformed, ends the watch: anything
unexpected is logged and the client reconnects.

Readiness: `/ready` stays 200 while the CDS server is away, as stunnerd's does. The dataplane
serves its last config, and a CDS outage (an operator restart, a network split) must not pull
every dataplane pod out of its Service at once. What it does show: `/status` has
`config_origin` with `connected`, `disconnected_for` (seconds), `last_error`, the messages
`skipped`; and once disconnected for STALE_AFTER seconds the log says so at error level, every
REPEAT_LOG_INTERVAL after that with the repeated-failure count.

Origin strings: `http://HOST:PORT` / `https://` (ws:// / wss:// for the watch), `ws://HOST:PORT`
and `wss://`, or a bare `:PORT` / `http://:PORT`, which mean 127.0.0.1 (as Go dials ":13478").
Any path in the origin is ignored: the config id decides the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp

from stunner_dp.config import ConfigError, StunnerConfig
from stunner_dp.config.limits import MAX_CONFIG_BYTES
from stunner_dp.observe.logs import get_logger

from . import ApplyConfig
from .isolated import load_text

__all__ = ["CdsOrigin", "CdsUrls", "cds_urls"]

PING_INTERVAL = 5.0
PONG_TIMEOUT = 8.0
RETRY_INTERVAL = 1.0
REPEAT_LOG_INTERVAL = 10.0  # a failure that repeats is logged again after this long
HTTP_TIMEOUT = 5.0
STALE_AFTER = 60.0  # disconnected this long: the running config may be stale, say so loudly

log = get_logger("cds")


@dataclass(frozen=True)
class CdsUrls:
    get: str  # one-shot
    watch: str  # websocket
    origin: str  # Origin header value


def cds_urls(origin: str, config_id: str, node: str = "") -> CdsUrls:
    """The URLs for `config_id` ("ns/name") on the CDS server named by `origin`."""
    ns, sep, name = config_id.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise ConfigError(
            "--id", config_id, "NAMESPACE/NAME (or set STUNNER_NAMESPACE and STUNNER_NAME)"
        )
    text = origin.strip()
    if text.startswith(":"):
        text = "http://" + text
    parts = urlsplit(text)
    secure = parts.scheme in ("https", "wss")
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ConfigError("--config", origin, "a CDS server as http://HOST:PORT or ws://HOST:PORT")
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("--config", origin, "the port must be a number in 1-65535") from None
    hostport = f"[{host}]" if ":" in host else host
    if port is not None:
        hostport += f":{port}"
    path = f"/api/v1/configs/{quote(ns, safe='')}/{quote(name, safe='')}"
    query = {"watch": "true"}
    if node:
        query["node"] = node
    http_scheme, ws_scheme = ("https", "wss") if secure else ("http", "ws")
    return CdsUrls(
        get=f"{http_scheme}://{hostport}{path}",
        watch=f"{ws_scheme}://{hostport}{path}?{urlencode(query)}",
        origin=f"http://{hostport}",
    )


class _RepeatLog:
    """Log a failure when it is new, and a repeat of it only every REPEAT_LOG_INTERVAL."""

    def __init__(self) -> None:
        self._last: tuple[str, float] | None = None
        self.count = 0

    def warn(self, message: str, error: str, *, loud: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        self.count += 1
        if (
            self._last is None
            or self._last[0] != error
            or now - self._last[1] >= REPEAT_LOG_INTERVAL
        ):
            self._last = (error, now)
            (log.error if loud else log.warning)(
                message, error=error, attempts=self.count, **fields
            )

    def reset(self) -> None:
        self._last = None
        self.count = 0


class CdsOrigin:
    def __init__(
        self,
        origin: str,
        config_id: str,
        apply: ApplyConfig,
        *,
        watch: bool = True,
        node: str = "",
        ping_interval: float = PING_INTERVAL,
        pong_timeout: float = PONG_TIMEOUT,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.urls = cds_urls(origin, config_id, node)
        self.config_id = config_id
        self.description = f"CDS {self.urls.watch if watch else self.urls.get}"
        self.apply = apply
        self.watch = watch
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.retry_interval = retry_interval
        self.connections = 0  # websocket connections made (tests, status)
        self.messages = 0  # config messages received
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._failures = _RepeatLog()
        self.skipped = 0  # messages that were not a usable config
        self.last_error = ""
        self._connected = False
        self._disconnected_at: float | None = time.monotonic()
        self._pending: str | None = None  # the newest message not yet handled
        self._wake = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None
        self._last: tuple[str, StunnerConfig] | None = None  # the last message that parsed

    def state(self) -> dict[str, Any]:
        """For /status: is the watch up, and why not."""
        since = self._disconnected_at
        return {
            "origin": self.description,
            "watch": self.watch,
            "connected": self._connected,
            "disconnected_for": None if since is None else round(time.monotonic() - since, 1),
            "connections": self.connections,
            "messages": self.messages,
            "skipped": self.skipped,
            "last_error": self.last_error or None,
        }

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=HTTP_TIMEOUT)
            )
        if self._task is None or self._task.done():
            job = self._watch_forever() if self.watch else self._fetch_until_done()
            self._task = asyncio.create_task(job, name="cds-client")

    def reload(self) -> None:
        """SIGHUP: a watch drops its connection (the reconnect brings the config again); a
        one-shot client fetches again."""
        if self.watch:
            ws = self._ws
            if ws is not None and not ws.closed:
                log.info("SIGHUP: reconnecting to the CDS server")
                asyncio.get_running_loop().create_task(ws.close())
        elif self._session is not None and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._fetch_until_done(), name="cds-client")

    async def stop(self) -> None:
        for task in (self._task, self._applier):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._applier = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one-shot -----------------------------------------------------------------------------

    async def _fetch_until_done(self) -> None:
        assert self._session is not None
        log.info("fetching the config from the CDS server", url=self.urls.get)
        while True:
            try:
                async with self._session.get(
                    self.urls.get, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
                ) as resp:
                    body = await resp.text()
                    if resp.status == 200:
                        if await self._handle(body):
                            self._failures.reset()
                            return
                    else:
                        self._failures.warn(
                            "CDS server did not give the config: retrying every "
                            f"{self.retry_interval:g} s",
                            f"HTTP {resp.status}: {_message(body)}",
                            url=self.urls.get,
                        )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._failures.warn(
                    f"CDS server unreachable: retrying every {self.retry_interval:g} s",
                    _describe(exc),
                    url=self.urls.get,
                )
            await asyncio.sleep(self.retry_interval)

    # -- watch --------------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        assert self._session is not None
        if self._applier is None or self._applier.done():
            self._applier = asyncio.create_task(self._apply_pending(), name="cds-apply")
        while True:
            try:
                await self._watch_once(self._session)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._connection_failed(_describe(exc))
            except Exception as exc:  # nothing a server sends may end the watch
                log.error("CDS watch failed: reconnecting", url=self.urls.watch, error=repr(exc))
                self._connection_failed(repr(exc))
            await asyncio.sleep(self.retry_interval)

    def _connection_failed(self, error: str) -> None:
        self.last_error = error
        since = self._disconnected_at
        if since is not None and time.monotonic() - since >= STALE_AFTER:
            self._failures.warn(
                f"CDS unreachable for {STALE_AFTER:g} s and more: the running config may be "
                "stale (rotated credentials, revoked peers are not applied); retrying every "
                f"{self.retry_interval:g} s",
                error,
                loud=True,
                url=self.urls.watch,
                disconnected_for=round(time.monotonic() - since),
            )
            return
        self._failures.warn(
            f"CDS connection failed: retrying every {self.retry_interval:g} s",
            error,
            url=self.urls.watch,
        )

    async def _watch_once(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(
            self.urls.watch,
            headers={"Origin": self.urls.origin},
            autoping=False,  # pings and pongs are ours: the pong timeout is 8 s, not 2.5
            timeout=aiohttp.ClientWSTimeout(ws_close=1.0),
            max_msg_size=MAX_CONFIG_BYTES + 1,  # bigger is refused by name, not a dropped link
        ) as ws:
            self._ws = ws
            self._connected = True
            self._disconnected_at = None
            self.connections += 1
            self._failures.reset()
            log.info("CDS connected", url=self.urls.watch)
            loop = asyncio.get_running_loop()
            self._last_pong = loop.time()
            keepalive = asyncio.create_task(self._keepalive(ws))
            reason = "closed by the server"
            try:
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self._queue(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        self._queue(bytes(msg.data).decode("utf-8", "replace"))
                    elif msg.type == aiohttp.WSMsgType.PING:
                        await ws.pong(msg.data)
                    elif msg.type == aiohttp.WSMsgType.PONG:
                        self._last_pong = loop.time()
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        reason = f"error: {msg.data}"
                        break
                    else:  # CLOSE, CLOSING, CLOSED
                        break
            finally:
                if keepalive.done() and not keepalive.cancelled() and keepalive.result():
                    reason = keepalive.result()
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
                self._ws = None
                self._connected = False
                self._disconnected_at = time.monotonic()
                log.info(
                    "CDS disconnected: reconnecting",
                    url=self.urls.watch,
                    reason=reason,
                    close_code=ws.close_code,
                    retry_in=self.retry_interval,
                )

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Ping every `ping_interval`; close the connection once no pong came for
        `pong_timeout`. Returns why it closed ("" when the connection closed first)."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.ping_interval
        while not ws.closed:
            now = loop.time()
            if now - self._last_pong >= self.pong_timeout:
                log.warning(
                    "CDS server answers no ping: dropping the connection",
                    url=self.urls.watch,
                    silent_for=round(now - self._last_pong, 1),
                )
                await ws.close()
                return f"no pong for {self.pong_timeout:g} s"
            if now >= next_ping:
                try:
                    await ws.ping()
                except (ConnectionError, RuntimeError, aiohttp.ClientError):
                    return ""
                next_ping = now + self.ping_interval
            wake = min(next_ping, self._last_pong + self.pong_timeout)
            await asyncio.sleep(max(0.0, wake - loop.time()) + 0.001)
        return ""

    # -- messages -----------------------------------------------------------------------------

    def _queue(self, text: str) -> None:
        """Hand a message to the applier; one still waiting is superseded (a CDS message is a
        whole config, so the newest is the only one that counts)."""
        self.messages += 1
        if self._pending is not None:
            self.skipped += 1
            log.info("CDS config superseded by a newer one before it was applied: dropped")
        self._pending = text
        self._wake.set()

    async def _apply_pending(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            text, self._pending = self._pending, None
            if text is None:
                continue
            try:
                await self._use(text)
            except Exception as exc:  # logged, and the next message is handled as usual
                self.skipped += 1
                self.last_error = repr(exc)
                log.error("CDS config could not be handled: skipped", error=repr(exc))

    async def _handle(self, text: str) -> bool:
        """One config from the server (the one-shot GET): True when it was applied."""
        self.messages += 1
        try:
            return await self._use(text)
        except Exception as exc:
            self.skipped += 1
            self.last_error = repr(exc)
            log.error("CDS config could not be handled: skipped", error=repr(exc))
            return False

    async def _use(self, text: str) -> bool:
        if not text.lstrip().startswith("{"):
            self._skip("CDS sent something that is not a JSON config object: skipped", text[:80])
            return False
        try:
            if self._last is not None and self._last[0] == text:
                config: StunnerConfig = self._last[1]  # a reconnect resends the same config
            else:
                config = await load_text(text, "the CDS message")
                self._last = (text, config)
        except ConfigError as exc:
            self._skip(
                "CDS config is not valid: skipped, the running config stays",
                str(exc),
                field=exc.field,
            )
            return False
        if not config.listeners:
            log.info(
                "CDS config has no listeners (deleted on the operator side): ignored",
                id=self.config_id,
            )
            return False
        return await self.apply(config)

    def _skip(self, message: str, error: str, **fields: Any) -> None:
        self.skipped += 1
        self.last_error = error
        log.warning(message, error=error, **fields)


def _message(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])
    return body[:200]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
