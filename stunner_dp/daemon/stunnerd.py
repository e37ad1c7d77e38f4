"""The daemon: a dataplane, where its configs come from, health/status, signals and drain.

Pieces, each replaceable:

- `Dataplane`: what runs the TURN server. `LocalDataplane` is one in-process `Server` plus the
  STRICT_DNS resolver; a supervisor of worker processes can implement the same protocol.
- an origin (`stunner_dp.daemon.origin`): a file, watched with `-w`, or the CDS client.
- `Daemon`: takes each config from the origin (`apply`), keeps the state the health endpoint
  reports (NOT-READY until the first good config, READY, TERMINATING once draining), serves
  /live, /ready and /status on `admin.healthcheck_endpoint`, drains on SIGTERM.

Hooks: `daemon.http` is the shared `HttpEndpoints` (mount /metrics there to share a port with
the health endpoint); every coroutine in `daemon.on_config` is awaited with (old, new) after a
config was applied (old is None the first time), and every one in `daemon.on_stop` when the
daemon stops.

Signals (`Daemon.run`): SIGTERM drains (a second one exits at once), SIGINT exits at once,
SIGHUP re-reads the config from the origin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import uvloop

from stunner_dp.config import ConfigError, StunnerConfig, diff_configs
from stunner_dp.config.model import DEFAULT_HEALTHCHECK_ENDPOINT
from stunner_dp.daemon.origin import DEFAULT_CDS_ORIGIN, Origin, make_origin
from stunner_dp.net.dns import DEFAULT_INTERVAL, Resolved, StrictDnsResolver, interval_from_env
from stunner_dp.net.forwarder import FORWARDER_ENV, forwarder_mode
from stunner_dp.net.runtime import Server
from stunner_dp.observe.health import HealthServer, HealthState, status_document
from stunner_dp.observe.http import HttpEndpoints
from stunner_dp.observe.logs import configure_logging, get_logger
from stunner_dp.observe.metrics import attach_metrics
from stunner_dp.observe.stats import StatsSnapshot
from stunner_dp.turn.access import strict_dns_hosts
from stunner_dp.turn.types import Addr

__all__ = [
    "BOOT_HEALTH_ENV",
    "Daemon",
    "DaemonOptions",
    "Dataplane",
    "LocalDataplane",
    "options_from_args",
    "run_daemon",
]

# where /live and /ready answer before the first config names admin.healthcheck_endpoint
# (a stunner-dp extension; stunnerd always starts on the default http://:8086)
BOOT_HEALTH_ENV = "STUNNER_DP_HEALTHCHECK_ENDPOINT"

log = get_logger("stunner")

ConfigHook = Callable[[StunnerConfig | None, StunnerConfig], Awaitable[None]]
StopHook = Callable[[], Awaitable[None]]


class Dataplane(Protocol):
    """What the daemon drives: the TURN server(s)."""

    @property
    def running(self) -> bool: ...

    @property
    def allocation_count(self) -> int: ...

    async def start(self, config: StunnerConfig) -> None:
        """Start serving `config`; RuntimeError when nothing could start (then not running)."""

    async def apply(self, config: StunnerConfig) -> None:
        """Reconcile the running server(s) to `config` (the difference only)."""

    def set_draining(self, draining: bool) -> None: ...

    def listener_state(self) -> tuple[dict[str, int], dict[str, str]]:
        """(running listener -> bound port, failed listener -> reason)."""

    def stats(self) -> StatsSnapshot: ...

    async def wait_idle(self) -> None:
        """Return once no allocation is left."""

    async def stop(self) -> None: ...


class LocalDataplane:
    """One `Server` in this process, with STRICT_DNS names kept resolved."""

    def __init__(
        self,
        *,
        alternate_server: Addr | None = None,
        dns_interval: float = DEFAULT_INTERVAL,
        software: str = "",
        reuse_port: bool = False,
        bind_host: str | None = None,
    ) -> None:
        self.server: Server | None = None
        self.dns = StrictDnsResolver(self._dns_changed, interval=dns_interval)
        self._alternate = alternate_server
        self._software = software
        self._reuse_port = reuse_port
        self._bind_host = bind_host
        self._draining = False

    @property
    def running(self) -> bool:
        return self.server is not None

    @property
    def allocation_count(self) -> int:
        return self.server.allocation_count if self.server is not None else 0

    async def start(self, config: StunnerConfig) -> None:
        self.dns.set_hosts(strict_dns_hosts(config))
        await self.dns.resolve(notify=False)
        server = Server(
            config,
            software=self._software,
            alternate_server=self._alternate,
            reuse_port=self._reuse_port,
            bind_host=self._bind_host,
        )
        server.set_dns_answers(self.dns.resolved)
        try:
            await server.start()
        except BaseException:
            await server.stop()
            raise
        self.server = server
        server.set_draining(self._draining)  # it may have changed while the server started
        self.dns.start()

    async def apply(self, config: StunnerConfig) -> None:
        assert self.server is not None
        self.dns.set_hosts(strict_dns_hosts(config))
        fresh = self.dns.unresolved()
        if fresh:  # new names: resolve before the rules that need them are installed
            await self.dns.resolve(fresh, notify=False)
        await self.server.apply(config, self.dns.resolved)

    def _dns_changed(self, resolved: Resolved) -> None:
        if self.server is not None:
            self.server.set_dns_answers(resolved)

    def set_draining(self, draining: bool) -> None:
        self._draining = draining
        if self.server is not None:
            self.server.set_draining(draining)

    def listener_state(self) -> tuple[dict[str, int], dict[str, str]]:
        if self.server is None:
            return {}, {}
        bound = {name: lst.port for name, lst in self.server.listeners.items()}
        return bound, dict(self.server.failed_listeners)

    def stats(self) -> StatsSnapshot:
        if self.server is None:
            return StatsSnapshot()
        return self.server.stats()

    async def wait_idle(self) -> None:
        while self.server is not None and self.server.allocation_count > 0:
            idle = self.server.idle
            if idle.is_set():  # not yet cleared by the event pass: look again shortly
                await asyncio.sleep(0.05)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), timeout=1.0)

    async def stop(self) -> None:
        await self.dns.stop()
        server, self.server = self.server, None
        if server is not None:
            await server.stop()


@dataclass
class DaemonOptions:
    origin: str = ""  # a file (PATH, file://PATH) or a CDS server; "" none (config given)
    watch: bool = False
    config_id: str = ""  # NAMESPACE/NAME, for CDS
    node: str = ""  # STUNNER_NODENAME, for CDS
    force_ready: bool = False  # /ready stays 200 while draining
    alternate_server: Addr | None = None  # 300 Try Alternate for new Allocates while draining
    grace_period: float = 3600.0
    boot_health_endpoint: str = DEFAULT_HEALTHCHECK_ENDPOINT
    dns_interval: float = DEFAULT_INTERVAL
    file_poll_interval: float = 1.0
    log_levels: str = ""  # -l; "" follows admin.loglevel of the config
    log_format: str = "text"


class DaemonStartError(RuntimeError):
    pass


class Daemon:
    def __init__(
        self,
        options: DaemonOptions,
        *,
        config: StunnerConfig | None = None,
        dataplane: Dataplane | None = None,
    ) -> None:
        self.options = options
        self.initial_config = config
        self.config: StunnerConfig | None = None  # the running config
        self.state = HealthState.NOT_READY
        self.dataplane: Dataplane = dataplane or LocalDataplane(
            alternate_server=options.alternate_server, dns_interval=options.dns_interval
        )
        self.http = HttpEndpoints()
        self.health = HealthServer(self.http, self)
        self.origin: Origin | None = None
        self.on_config: list[ConfigHook] = []
        self.on_stop: list[StopHook] = []
        self.configs_applied = 0
        self.configs_rejected = 0
        self._lock = asyncio.Lock()
        self._drain_task: asyncio.Task[None] | None = None
        self._done: asyncio.Future[int] | None = None

    # -- status (StatusSource) ----------------------------------------------------------------

    def is_ready(self) -> bool:
        if self.state == HealthState.READY:
            return True
        draining = self.state == HealthState.TERMINATING
        return draining and self.options.force_ready and self.config is not None

    def status(self) -> dict[str, Any]:
        bound, failed = self.dataplane.listener_state()
        doc = status_document(
            self.config,
            state=self.state,
            bound=bound,
            failed=failed,
            allocation_count=self.dataplane.allocation_count,
        )
        if self.origin is not None:  # is the origin connected, why was its last config refused
            doc["config_origin"] = self.origin.state()
        return doc

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Health endpoint, the initial config (if given), then the origin. DaemonStartError
        when the initial config cannot run and nothing would bring another one (no -w)."""
        first = self.initial_config
        await self.health.configure(
            first.admin.healthcheck_endpoint
            if first is not None
            else self.options.boot_health_endpoint
        )
        if first is not None and not await self.apply(first) and not self.options.watch:
            raise DaemonStartError("the config could not start")
        if self.options.origin:
            self.origin = self._make_origin(loaded=first is not None)
            await self.origin.start()
            log.info("config origin", origin=self.origin.description, watch=self.options.watch)

    def _make_origin(self, *, loaded: bool) -> Origin:
        opts = self.options
        return make_origin(
            opts.origin,
            self.apply,
            watch=opts.watch,
            config_id=opts.config_id,
            node=opts.node,
            poll_interval=opts.file_poll_interval,
            loaded=loaded,
        )

    async def stop(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
            self._drain_task = None
        if self.origin is not None:
            await self.origin.stop()
            self.origin = None
        for hook in self.on_stop:
            try:
                await hook()
            except Exception as exc:
                log.error("stop hook failed", error=repr(exc))
        await self.dataplane.stop()
        await self.health.close()
        await self.http.close()

    # -- configs ------------------------------------------------------------------------------

    async def apply(self, config: StunnerConfig) -> bool:
        """Make `config` the running one. False (logged) when it could not be used; the
        running config then stays (a failed reconcile is rolled back)."""
        async with self._lock:
            old = self.config
            if old is not None and config == old:
                log.info("config unchanged: nothing to do")
                return True
            if not self.dataplane.running:
                try:
                    await self.dataplane.start(config)
                except (RuntimeError, OSError) as exc:
                    self.configs_rejected += 1
                    log.error("config could not start", error=str(exc))
                    return False
            else:
                assert old is not None
                try:
                    await self.dataplane.apply(config)
                except Exception as exc:
                    self.configs_rejected += 1
                    log.error("config could not be applied: rolling back", error=repr(exc))
                    try:
                        await self.dataplane.apply(old)
                    except Exception as again:
                        log.error("rollback failed", error=repr(again))
                    return False
            self.config = config
            self.configs_applied += 1
            if self.state == HealthState.NOT_READY:
                self.state = HealthState.READY
            self._log_applied(old, config)
            await self._after(old, config)
            return True

    def _log_applied(self, old: StunnerConfig | None, new: StunnerConfig) -> None:
        bound, failed = self.dataplane.listener_state()
        if old is None or old.notes != new.notes:
            for note in new.notes:  # fields accepted that do nothing here (config/inert.py)
                log.warning(note)
        if old is None:
            log.info(
                "stunner-dp ready",
                name=new.admin.name,
                listeners=bound,
                failed_listeners=failed or None,
                auth=new.auth.type,
                realm=new.auth.realm,
            )
            return
        diff = diff_configs(old, new)
        log.info(
            "config applied",
            listeners_started=list(diff.listeners_to_start),
            listeners_stopped=list(diff.listeners_to_stop),
            listeners_restarted=list(diff.listeners_to_restart),
            listeners_changed=list(diff.listeners_changed_live),
            auth_changed=diff.auth_changed,
            clusters_changed=diff.clusters_changed,
            admin_changed=diff.admin_changed,
            failed_listeners=failed or None,
        )

    async def _after(self, old: StunnerConfig | None, new: StunnerConfig) -> None:
        await self.health.configure(new.admin.healthcheck_endpoint)
        if not self.options.log_levels and (
            old is None or old.admin.loglevel != new.admin.loglevel
        ):
            try:
                configure_logging(new.admin.loglevel or "all:INFO", self.options.log_format)
            except ValueError as exc:
                log.warning("admin.loglevel is not valid: log levels unchanged", error=str(exc))
        for hook in self.on_config:
            try:
                await hook(old, new)
            except Exception as exc:
                log.error("config hook failed", error=repr(exc))

    # -- drain --------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Stop being ready; new Allocates go to the alternate server when there is one."""
        if self.state == HealthState.TERMINATING:
            return
        self.state = HealthState.TERMINATING
        self.dataplane.set_draining(True)
        log.info(
            "draining: waiting for the last allocation to end",
            allocations=self.dataplane.allocation_count,
            grace_period=self.options.grace_period,
            alternate_server=_show_addr(self.options.alternate_server),
            ready=self.is_ready(),
        )

    async def drain(self) -> str:
        """Drain, returning once no allocation is left or the grace period is over."""
        self.begin_drain()
        reason = "no allocation left"
        if self.dataplane.allocation_count > 0:
            try:
                await asyncio.wait_for(self.dataplane.wait_idle(), self.options.grace_period)
            except TimeoutError:
                reason = "grace period over"
        log.info("drain finished", reason=reason, allocations_left=self.dataplane.allocation_count)
        return reason

    # -- the process --------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until drained or told to exit: the exit code."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            try:
                await self.start()
            except DaemonStartError as exc:
                log.error(f"stopping: {exc}")
                self._finish(1)
            code = await self._done
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()
        log.info("stopped", exit_code=code)
        return code

    def _finish(self, code: int) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    def _on_sigterm(self) -> None:
        if self._drain_task is not None:
            log.info("second SIGTERM: exiting now", allocations=self.dataplane.allocation_count)
            self._finish(0)
            return
        log.info("SIGTERM: draining")

        async def drain_then_exit() -> None:
            await self.drain()
            self._finish(0)

        self._drain_task = asyncio.get_running_loop().create_task(drain_then_exit())

    def _on_sigint(self) -> None:
        log.info("SIGINT: exiting now", allocations=self.dataplane.allocation_count)
        self._finish(0)

    def _on_sighup(self) -> None:
        if self.origin is None:
            log.info("SIGHUP: no config origin to re-read")
            return
        log.info("SIGHUP: re-reading the config", origin=self.origin.description)
        self.origin.reload()


def _show_addr(addr: Addr | None) -> str | None:
    if addr is None:
        return None
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"


def parse_alternate_server(text: str) -> Addr:
    """`HOST:PORT` or `[V6]:PORT` (a name is resolved once, now) -> (ip, port)."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError("--alternate-server", text, "HOST:PORT, e.g. 10.0.0.7:3478")
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ConfigError("--alternate-server", text, f"{host} does not resolve: {exc}") from None
    return str(infos[0][4][0]), int(port_text)


def options_from_args(args: argparse.Namespace, config: StunnerConfig | None) -> DaemonOptions:
    """DaemonOptions from the stunnerd command line and the STUNNER_* environment."""
    env = os.environ
    origin = "" if args.uri else (args.config or env.get("STUNNER_CONFIG_ORIGIN", ""))
    config_id = ""
    if config is None:  # CDS
        origin = origin or DEFAULT_CDS_ORIGIN
        config_id = args.id
        if not config_id and env.get("STUNNER_NAMESPACE") and env.get("STUNNER_NAME"):
            config_id = f"{env['STUNNER_NAMESPACE']}/{env['STUNNER_NAME']}"
        if not config_id:
            raise ConfigError(
                "--id", "", "the config id NAMESPACE/NAME (or STUNNER_NAMESPACE and STUNNER_NAME)"
            )
        from stunner_dp.daemon.origin.cds import cds_urls

        cds_urls(origin, config_id)  # a malformed origin or id fails here, at start
    alternate = parse_alternate_server(args.alternate_server) if args.alternate_server else None
    if args.grace_period < 0:
        raise ConfigError("--grace-period", args.grace_period, "seconds, 0 or more")
    try:
        forwarder_mode(getattr(args, "forwarder", "") or None)
    except ValueError as exc:
        allowed = f"auto, compiled or python (the --forwarder flag, or ${FORWARDER_ENV})"
        value = args.forwarder or env.get(FORWARDER_ENV)
        raise ConfigError("--forwarder", value, allowed) from exc
    return DaemonOptions(
        origin=origin,
        watch=bool(args.watch),
        config_id=config_id,
        node=env.get("STUNNER_NODENAME", ""),
        force_ready=bool(args.force_ready_status),
        alternate_server=alternate,
        grace_period=float(args.grace_period),
        boot_health_endpoint=env.get(BOOT_HEALTH_ENV, DEFAULT_HEALTHCHECK_ENDPOINT),
        dns_interval=interval_from_env(env),
        log_levels=args.log,
        log_format=args.log_format,
    )


def run_daemon(args: argparse.Namespace, config: StunnerConfig | None) -> int:
    """The daemon: one process (`--udp-thread-num` 0 or 1) or a supervisor of N workers."""
    try:
        options = options_from_args(args, config)
    except ConfigError as exc:
        log.error(f"stunnerd: {exc}")
        return 2
    if getattr(args, "forwarder", ""):
        os.environ[FORWARDER_ENV] = args.forwarder  # read by each Server, inherited by workers
    if config is not None and not args.log:
        with contextlib.suppress(ValueError):
            configure_logging(config.admin.loglevel or "all:INFO", args.log_format)

    async def main() -> int:
        dataplane: Dataplane | None = None
        if args.udp_thread_num > 1:
            from stunner_dp.daemon.supervisor import Supervisor

            dataplane = Supervisor(
                args.udp_thread_num,
                alternate_server=options.alternate_server,
                dns_interval=options.dns_interval,
                log_levels=options.log_levels,
                log_format=options.log_format,
            )
        daemon = Daemon(options, config=config, dataplane=dataplane)
        attach_metrics(daemon)
        return await daemon.run()

    return uvloop.run(main())
