"""The raw test client (`turnclient.RawTurnClient`) over one TCP connection.

Frames are cut as RFC 8656 12.5 says (STUN by its length, ChannelData padded to 4 bytes) and
handed to the same receiver as UDP datagrams, so a test drives both transports alike.
`send_raw` writes the bytes as given: a test chooses the padding and where a frame is split.
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from helpers.turnclient import RawTurnClient, _Proto
from stunner_dp import stun


class _Frames(asyncio.Protocol):
    def __init__(self, receiver: _Proto) -> None:
        self.receiver = receiver
        self.buffer = bytearray()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for _ in range(10_000):  # bounded: a frame per turn
            size = stun.stream_frame_length(self.buffer)
            if size is None or len(self.buffer) < size:
                return
            frame = bytes(self.buffer[:size])
            del self.buffer[:size]
            self.receiver.datagram_received(frame, ("", 0))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class StreamTurnClient(RawTurnClient):
    """One TCP connection to a TURN-TCP listener (TCP_NODELAY: each write leaves at once)."""

    def __init__(self, server: tuple[str, int]) -> None:
        super().__init__(server)
        self.stream: asyncio.Transport | None = None
        self.frames = _Frames(self.proto)

    async def __aenter__(self) -> StreamTurnClient:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: self.frames, *self.server)
        self.stream = cast(asyncio.Transport, transport)
        sock = self.stream.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def abort(self) -> None:
        """Close with a reset, as a crashed client's kernel would."""
        if self.stream is not None:
            self.stream.abort()

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.stream is not None
        host, port = self.stream.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def send_raw(self, data: bytes) -> None:
        assert self.stream is not None
        self.stream.write(data)
