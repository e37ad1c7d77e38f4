"""The daemon: run the server until a signal says stop."""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop

from stunner_dp.config import StunnerConfig
from stunner_dp.net.runtime import Server
from stunner_dp.observe.logs import get_logger

log = get_logger("stunner")


async def serve(args: argparse.Namespace, config: StunnerConfig) -> int:
    server = Server(config, software="")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except RuntimeError as exc:
        log.error(str(exc))
        return 1
    log.info(
        "stunner-dp ready",
        name=config.admin.name,
        listeners={n: lst.port for n, lst in server.listeners.items()},
    )
    await stop.wait()
    log.info("stopping")
    await server.stop()
    return 0


def run_daemon(args: argparse.Namespace, config: StunnerConfig | None) -> int:
    if config is None:
        log.error("config discovery (CDS) is not supported yet")
        return 2
    return uvloop.run(serve(args, config))
