"""Where configs come from: a file (watched by polling) or STUNner's config discovery service.

An origin hands every new config it gets to an `apply` callback (the daemon's), which returns
whether the config was taken. Origins never apply anything themselves and never raise for a
bad config: they log it (with the field) and wait for the next one.

    origin = make_origin("/etc/stunnerd/stunnerd.conf", daemon.apply, watch=True)
    origin = make_origin("http://stunner-config-discovery:13478", daemon.apply, watch=True,
                         config_id="stunner/udp-gateway", node="node-1")
    await origin.start(); origin.reload()  # SIGHUP; await origin.stop()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from stunner_dp.config import StunnerConfig

__all__ = ["DEFAULT_CDS_ORIGIN", "ApplyConfig", "Origin", "is_cds_origin", "make_origin"]

ApplyConfig = Callable[[StunnerConfig], Awaitable[bool]]

# stunnerd's default for STUNNER_CONFIG_ORIGIN: the operator's CDS port, on this host
DEFAULT_CDS_ORIGIN = ":13478"


class Origin(Protocol):
    description: str

    async def start(self) -> None:
        """Begin delivering configs (a one-shot origin delivers its one config, then idles)."""

    def reload(self) -> None:
        """Fetch the config again now (SIGHUP)."""

    async def stop(self) -> None: ...

    def state(self) -> dict[str, Any]:
        """What /status shows as `config_origin`: where configs come from, and why the last
        one was refused or the origin is unreachable."""


def is_cds_origin(origin: str) -> bool:
    """http(s)://, ws(s):// and a bare ":PORT" name a CDS server; anything else is a file."""
    return origin.startswith(("http://", "https://", "ws://", "wss://", ":"))


def make_origin(
    origin: str,
    apply: ApplyConfig,
    *,
    watch: bool,
    config_id: str = "",
    node: str = "",
    poll_interval: float = 1.0,
    loaded: bool = False,
) -> Origin:
    if is_cds_origin(origin):
        from .cds import CdsOrigin

        return CdsOrigin(origin, config_id, apply, watch=watch, node=node)
    from .file import FileOrigin

    return FileOrigin(origin, apply, watch=watch, interval=poll_interval, loaded=loaded)
