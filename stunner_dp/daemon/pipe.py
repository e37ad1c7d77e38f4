"""The pipe between the supervisor and its workers: frames of a 4-byte big-endian length, then
a JSON object. Both ends import this module and nothing of each other.

supervisor -> worker
    ``init``      config (dict), nonce_secret (hex), resolved (STRICT_DNS names), draining,
                  alternate_server, bind_host, software, log_levels, log_format, sockets_fd,
                  sockets; first frame
    ``config``    id, config, resolved, sockets: apply it (the difference only), answer
                  ``applied``
    ``dns``       resolved: new STRICT_DNS answers
    ``draining``  value: stop or resume taking new allocations (300 with an alternate server)
    ``stats``     id: answer ``stats`` now
worker -> supervisor
    ``ready``     listeners (name -> port), failed (name -> reason), stats; or ``failed``, error
    ``stats``     stats, id when asked; also every STATS_INTERVAL seconds
    ``applied``   id, error ("" when applied), listeners, failed

A ``stats`` value is `Server.stats().to_dict()`, read back with `StatsSnapshot.from_dict()`
(stunner_dp.observe.stats): fields a newer worker adds are ignored, missing ones are zero.

The socket channel (fd ``sockets_fd`` in the worker, an AF_UNIX datagram socket pair) carries
the worker's listener sockets, which the supervisor binds and holds so that a worker's death
and restart never change a SO_REUSEPORT group. Before each ``init`` and ``config`` frame the
supervisor sends the sockets of every listener of that config, as SCM_RIGHTS in datagrams of
a JSON header ``{"gen", "names", "errors", "last"}``: ``names`` in the order of the fds,
``errors`` name -> [errno, reason] for a listener it could not bind. The frame's ``sockets``
is that ``gen``: the datagrams are queued before the frame is written, so the worker reads
them (without waiting) when it handles the frame.
"""

from __future__ import annotations

import array
import asyncio
import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

MAX_FRAME = 64 << 20
_LEN = struct.Struct("!I")
FDS_PER_DATAGRAM = 100  # below SCM_MAX_FD (253); names of up to 253 bytes fit MAX_HEADER
MAX_HEADER = 1 << 16
FD_SIZE = array.array("i").itemsize  # an fd in SCM_RIGHTS is a C int


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


@dataclass
class SocketBatch:
    """The listener sockets of one ``gen``: name -> fd (owned: close what is not adopted) and
    name -> (errno, reason) for those the supervisor could not bind."""

    gen: int
    fds: dict[str, int] = field(default_factory=dict)
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)
    complete: bool = False


def send_sockets(
    channel: socket.socket,
    gen: int,
    sockets: dict[str, socket.socket],
    errors: dict[str, OSError],
) -> None:
    """Queue `sockets` (shared, not given away: the sender keeps its own) for the worker."""
    names = list(sockets)
    chunks = [names[i : i + FDS_PER_DATAGRAM] for i in range(0, len(names), FDS_PER_DATAGRAM)]
    for n, chunk in enumerate(chunks or [[]]):
        header = {
            "gen": gen,
            "names": chunk,
            "errors": {k: [e.errno or 0, e.strerror or str(e)] for k, e in errors.items()}
            if n == 0
            else {},
            "last": n == len(chunks or [[]]) - 1,
        }
        socket.send_fds(
            channel, [json.dumps(header).encode()], [sockets[k].fileno() for k in chunk]
        )


def receive_sockets(channel: socket.socket, batches: dict[int, SocketBatch]) -> None:
    """Read every datagram queued on `channel` (without waiting) into `batches` by gen."""
    while True:
        try:  # (socket.recv_fds drops its flags argument: it would wait)
            data, ancdata, flags, _ = channel.recvmsg(
                MAX_HEADER, socket.CMSG_SPACE(FDS_PER_DATAGRAM * FD_SIZE), socket.MSG_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            return
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % FD_SIZE])
        if not data:
            for fd in fds:
                socket.close(fd)
            return  # the supervisor's end is closed
        try:
            header = json.loads(data)
            names = [str(n) for n in header["names"]]
            batch = batches.setdefault(int(header["gen"]), SocketBatch(int(header["gen"])))
        except (ValueError, KeyError, TypeError):
            names, batch = [], None
        if batch is None or len(names) != len(fds) or flags & socket.MSG_CTRUNC:
            for fd in fds:  # unreadable: the worker binds those listeners itself
                socket.close(fd)
            continue
        batch.fds.update(zip(names, fds, strict=True))
        for name, (errno, reason) in dict(header.get("errors") or {}).items():
            batch.errors[str(name)] = (int(errno), str(reason))
        batch.complete = bool(header.get("last"))
