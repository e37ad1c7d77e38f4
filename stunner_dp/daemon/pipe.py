"""The pipe between the supervisor and its workers: frames of a 4-byte big-endian length, then
a JSON object. Both ends import this module and nothing of each other.

supervisor -> worker
    ``init``      config (dict), nonce_secret (hex), resolved (STRICT_DNS names), draining,
                  alternate_server, bind_host, software, log_levels, log_format; first frame
    ``config``    id, config, resolved: apply it (the difference only), answer ``applied``
    ``dns``       resolved: new STRICT_DNS answers
    ``draining``  value: stop or resume taking new allocations (300 with an alternate server)
    ``stats``     id: answer ``stats`` now
worker -> supervisor
    ``ready``     listeners (name -> port), failed (name -> reason), stats; or ``failed``, error
    ``stats``     stats, id when asked; also every STATS_INTERVAL seconds
    ``applied``   id, error ("" when applied), listeners, failed

A ``stats`` value is `Server.stats().to_dict()`, read back with `StatsSnapshot.from_dict()`
(stunner_dp.observe.stats): fields a newer worker adds are ignored, missing ones are zero.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

MAX_FRAME = 64 << 20
_LEN = struct.Struct("!I")


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, None at end of stream."""
    try:
        head = await reader.readexactly(_LEN.size)
        (size,) = _LEN.unpack(head)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes")
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    frame = json.loads(body)
    if not isinstance(frame, dict):
        raise ValueError("a frame is a JSON object")
    return frame


def write_frame(writer: asyncio.StreamWriter, frame: dict[str, Any]) -> None:
    body = json.dumps(frame, separators=(",", ":")).encode()
    writer.write(_LEN.pack(len(body)) + body)
