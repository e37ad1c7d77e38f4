"""A worker process of the multi-core daemon: `python -m stunner_dp.daemon.worker --fd N`.

The supervisor (stunner_dp.daemon.supervisor) starts it with one end of a socket pair on fd N
and talks to it in frames (stunner_dp.daemon.pipe).

Every listener socket is bound with SO_REUSEPORT, so all workers share the listener ports and
the kernel spreads clients over them by 5-tuple; all share one nonce secret, so a nonce from
one worker is good at any other. The worker exits when the socket pair closes (the supervisor
stopped or died). SIGINT is ignored (a terminal's Ctrl-C is the supervisor's business);
SIGTERM sent to a worker itself drains it: it exits once its last allocation is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from typing import Any

import uvloop

from stunner_dp.config import ListenerConfig, parse_config
from stunner_dp.daemon.ledger import SharedLimits
from stunner_dp.daemon.pipe import SocketBatch, read_frame, receive_sockets, write_frame
from stunner_dp.net.runtime import Server
from stunner_dp.net.sockets import socket_kind
from stunner_dp.observe.logs import configure_logging, get_logger

STATS_INTERVAL = 1.0

log = get_logger("stunner")


def _listener_state(server: Server) -> dict[str, Any]:
    return {
        "listeners": {name: lst.port for name, lst in server.listeners.items()},
        "failed": dict(server.failed_listeners),
    }


class AdoptedSockets:
    """The listener sockets the supervisor holds for this worker's slot (the socket channel of
    stunner_dp.daemon.pipe). A listener adopts its own instead of binding a new socket, so a
    restart of this worker leaves every SO_REUSEPORT group, and the other workers' clients,
    as they were. `provide` is the `Server`'s socket provider."""

    def __init__(self, fd: Any) -> None:
        self._channel = socket.socket(fileno=fd) if isinstance(fd, int) else None
        self._batches: dict[int, SocketBatch] = {}
        self._current: SocketBatch | None = None

    def select(self, gen: Any) -> None:
        """Offer the sockets sent with frame `gen` (none: listeners bind their own)."""
        self.release()
        if self._channel is None or not isinstance(gen, int):
            return
        receive_sockets(self._channel, self._batches)
        for old in [g for g in self._batches if g < gen]:
            self._close(self._batches.pop(old))
        self._current = self._batches.pop(gen, None)

    def provide(self, listener: ListenerConfig) -> socket.socket | None:
        batch = self._current
        if batch is None:
            return None
        if listener.name in batch.errors:  # the supervisor could not bind it: say why
            errno, reason = batch.errors[listener.name]
            raise OSError(errno, reason)
        fd = batch.fds.pop(listener.name, None)
        if fd is None:
            return None
        sock = socket.socket(fileno=fd)
        wanted = socket.SOCK_DGRAM if socket_kind(listener) == "udp" else socket.SOCK_STREAM
        if sock.type != wanted:  # not what this listener serves on: bind one
            sock.close()
            return None
        sock.setblocking(False)
        return sock

    def release(self) -> None:
        """Close what the listeners did not adopt (the supervisor keeps its own)."""
        if self._current is not None:
            self._close(self._current)
            self._current = None

    @staticmethod
    def _close(batch: SocketBatch) -> None:
        for fd in batch.fds.values():
            socket.close(fd)
        batch.fds.clear()


class Worker:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.server: Server | None = None
        self.self_draining = False
        self.sockets = AdoptedSockets(None)

    def send(self, frame: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            write_frame(self.writer, frame)

    async def run(self) -> int:
        init = await read_frame(self.reader)
        if init is None or init.get("type") != "init":
            return 2
        with contextlib.suppress(ValueError):
            configure_logging(init.get("log_levels") or "all:INFO", init.get("log_format", "text"))
        config = parse_config(init["config"])
        alternate = init.get("alternate_server")
        limits_fd = init.get("limits_fd")
        self.sockets = AdoptedSockets(init.get("sockets_fd"))
        self.sockets.select(init.get("sockets"))
        server = Server(
            config,
            nonce_secret=bytes.fromhex(init["nonce_secret"]),
            software=init.get("software", ""),
            alternate_server=(alternate[0], int(alternate[1])) if alternate else None,
            reuse_port=True,
            bind_host=init.get("bind_host"),
            limits=None if limits_fd is None else SharedLimits.attach(limits_fd, init["index"]),
            socket_provider=self.sockets.provide,
        )
        server.set_draining(bool(init.get("draining")))
        server.set_dns_answers(init.get("resolved") or {})
        try:
            await server.start()
        except (RuntimeError, OSError) as exc:
            await server.stop()
            self.send({"type": "failed", "error": str(exc)})
            await self.writer.drain()
            return 1
        finally:
            self.sockets.release()
        self.server = server
        self.send({"type": "ready", **_listener_state(server), "stats": server.stats().to_dict()})
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        reporter = loop.create_task(self._report_forever())
        try:
            while (frame := await read_frame(self.reader)) is not None:
                await self.handle(frame)
        finally:
            reporter.cancel()
            await server.stop()
        return 0

    async def handle(self, frame: dict[str, Any]) -> None:
        server = self.server
        assert server is not None
        kind = frame.get("type")
        if kind == "stats":
            self.send({"type": "stats", "id": frame.get("id"), "stats": server.stats().to_dict()})
        elif kind == "config":
            error = ""
            try:
                config = parse_config(frame["config"])
                self.sockets.select(frame.get("sockets"))
                await server.apply(config, frame.get("resolved") or {})
            except Exception as exc:  # the supervisor rolls back; keep running
                error = repr(exc)
            finally:
                self.sockets.release()
            self.send(
                {
                    "type": "applied",
                    "id": frame.get("id"),
                    "error": error,
                    **_listener_state(server),
                }
            )
        elif kind == "dns":
            server.set_dns_answers(frame.get("resolved") or {})
        elif kind == "draining":
            server.set_draining(bool(frame.get("value")) or self.self_draining)

    async def _report_forever(self) -> None:
        server = self.server
        assert server is not None
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            self.send({"type": "stats", "stats": server.stats().to_dict()})
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
            if self.self_draining and server.allocation_count == 0:
                log.info("worker drained: exiting")
                self.writer.close()  # the supervisor sees the stream end, then the exit
                self.reader.feed_eof()

    def _on_sigterm(self) -> None:
        server = self.server
        if server is None:
            return
        log.info("worker got SIGTERM: draining", allocations=server.allocation_count)
        self.self_draining = True
        server.set_draining(True)


async def worker_main(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        return await Worker(reader, writer).run()
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stunner_dp.daemon.worker")
    p.add_argument("--fd", type=int, required=True, help="the socket to the supervisor")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return uvloop.run(worker_main(args.fd))


if __name__ == "__main__":
    sys.exit(main())
