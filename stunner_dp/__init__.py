"""stunner-dp: a TURN/STUN server for WebRTC, a drop-in dataplane for STUNner.

from stunner_dp import Server
async with Server(config) as server:    # a dict or a StunnerConfig, in a running loop
    port = server.port("udp-listener")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Server", "__version__"]

if TYPE_CHECKING:
    from stunner_dp.net.runtime import Server


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the codec (stunner_dp.stun) does not pull in asyncio and the
    # network shell.
    if name == "Server":
        from stunner_dp.net.runtime import Server

        return Server
    raise AttributeError(f"module 'stunner_dp' has no attribute {name!r}")
