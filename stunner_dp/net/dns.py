"""STRICT_DNS clusters: resolve their endpoint names at start and every few seconds.

Resolution uses `loop.getaddrinfo` (the resolver runs in the loop's thread pool), so the packet
path never waits on DNS. The answers feed `PeerAccess.from_config(config, resolved)`; whoever owns
the TURN server installs a new PeerAccess when `on_change` says the answers changed.

A name that stops resolving keeps its last addresses for one more interval (a DNS hiccup must
not cut calls), then it is dropped, each step with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from stunner_dp.observe.logs import get_logger

__all__ = ["DEFAULT_INTERVAL", "GetAddrInfo", "Resolved", "StrictDnsResolver", "interval_from_env"]

DEFAULT_INTERVAL = 5.0
INTERVAL_ENV = "STUNNER_DP_DNS_INTERVAL"  # seconds; a stunner-dp extension (tests use it)

Resolved = dict[str, tuple[str, ...]]
# name -> getaddrinfo's answer (A and AAAA: no family asked); the loop's by default, a test's own
GetAddrInfo = Callable[[str], Awaitable[list[tuple[Any, ...]]]]

log = get_logger("net")


def interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    """The re-resolution interval: $STUNNER_DP_DNS_INTERVAL seconds, default 5."""
    text = (os.environ if environ is None else environ).get(INTERVAL_ENV, "")
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        log.warning(f"{INTERVAL_ENV} is not a number, using the default", value=text)
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


class StrictDnsResolver:
    """Keeps `resolved` (name -> sorted addresses) current for the names given to `set_hosts`.

    `on_change(resolved)` is called (synchronously, in the loop) after a round that changed
    any answer. A round never raises: failures are logged and handled as described above.
    """

    def __init__(
        self,
        on_change: Callable[[Resolved], None] | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        getaddrinfo: GetAddrInfo | None = None,
    ) -> None:
        self.on_change = on_change
        self.interval = interval
        self._getaddrinfo = getaddrinfo
        self.resolved: Resolved = {}
        self._hosts: tuple[str, ...] = ()
        self._misses: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def hosts(self) -> tuple[str, ...]:
        return self._hosts

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """Watch these names from now on; answers of names no longer watched are forgotten."""
        self._hosts = tuple(dict.fromkeys(hosts))
        keep = set(self._hosts)
        for name in [n for n in self.resolved if n not in keep]:
            del self.resolved[name]
        for name in [n for n in self._misses if n not in keep]:
            del self._misses[name]

    def unresolved(self) -> tuple[str, ...]:
        """Watched names without an answer yet."""
        return tuple(n for n in self._hosts if n not in self.resolved)

    async def resolve(self, names: Iterable[str] | None = None, *, notify: bool = True) -> bool:
        """One round over `names` (default: all watched). True when an answer changed."""
        targets = tuple(self._hosts if names is None else names)
        if not targets:
            return False
        answers = await asyncio.gather(*(self._lookup(n) for n in targets))
        changed = False
        for name, answer in zip(targets, answers, strict=True):
            changed |= self._record(name, answer)
        if changed and notify and self.on_change is not None:
            self.on_change(dict(self.resolved))
        return changed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="strict-dns")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.resolve()
            except Exception as exc:  # a bug here must not stop future rounds
                log.error("STRICT_DNS resolution round failed", error=repr(exc))

    async def _lookup(self, name: str) -> tuple[str, ...] | str:
        """The sorted addresses of `name`, or the reason it did not resolve."""
        if self._getaddrinfo is not None:
            lookup = self._getaddrinfo(name)
        else:  # AF_UNSPEC: IPv4 and IPv6 answers alike
            lookup = asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_DGRAM)
        try:
            infos = await asyncio.wait_for(lookup, timeout=self.interval)
        except TimeoutError:
            return "timed out"
        except (OSError, UnicodeError) as exc:
            return getattr(exc, "strerror", None) or str(exc)
        addrs = {str(info[4][0]).split("%", 1)[0] for info in infos}
        return tuple(sorted(addrs)) if addrs else "no addresses"

    def _record(self, name: str, answer: tuple[str, ...] | str) -> bool:
        if name not in self._hosts:  # unwatched while resolving
            return False
        before = self.resolved.get(name)
        if isinstance(answer, tuple):
            if self._misses.pop(name, 0):
                log.info("STRICT_DNS name resolves again", name=name, addresses=list(answer))
            if before == answer:
                return False
            self.resolved[name] = answer
            log.info(
                "STRICT_DNS answers changed",
                name=name,
                addresses=list(answer),
                previous=list(before or ()),
            )
            return True
        misses = self._misses.get(name, 0) + 1
        self._misses[name] = misses
        if before is None:
            if misses == 1:
                log.warning("STRICT_DNS name does not resolve", name=name, error=answer)
            return False
        if misses == 1:
            log.warning(
                "STRICT_DNS name does not resolve: keeping its last addresses one more interval",
                name=name,
                error=answer,
                addresses=list(before),
            )
            return False
        del self.resolved[name]
        log.warning(
            "STRICT_DNS name still does not resolve: its addresses are dropped",
            name=name,
            error=answer,
            dropped=list(before),
        )
        return True
