"""Multi-core: a supervisor of N worker processes (`stunnerd --udp-thread-num N`, N > 1).

`Supervisor` implements the daemon's `Dataplane` protocol, so the daemon's health and status
endpoints, config origins (file watch, CDS, SIGHUP) and drain work unchanged; the metrics
endpoint reads `Supervisor.stats()`. The supervisor itself relays nothing:

- it starts N `python -m stunner_dp.daemon.worker` processes, each running a `Server` whose listener
  sockets (UDP and TCP) are bound with SO_REUSEPORT on the same ports, all with one nonce
  secret (a nonce from any worker is good at any other);
- it sends every config to every worker as the config dict (the difference is applied in each
  worker) together with the STRICT_DNS answers, which it resolves once for all;
- workers report a stats snapshot (a `StatsSnapshot`, stunner_dp.observe.stats) every second
  and when asked (`refresh()`, before each scrape); `stats()` is the sum
  (`StatsSnapshot.merge`). A dead worker's counters are kept (as last reported), its gauges
  (allocations, connections) dropped, so the summed counters never go down;
- a worker that dies is logged and restarted (its allocations are lost, the others go on);
  the supervisor binds and holds every worker's listener sockets and hands a restarted worker
  the same ones (`HeldSocket`, the socket channel of stunner_dp.daemon.pipe), so no socket
  leaves or joins a SO_REUSEPORT group and the kernel keeps every other client on its worker;
- draining (SIGTERM in the daemon) is forwarded to every worker as a message: new Allocates
  get 300 Try Alternate when an alternate server is set, existing allocations go on;
- `stop()` closes the pipes: workers stop at once (also if the supervisor is killed).

The frame protocol between the two is described in stunner_dp.daemon.pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

from stunner_dp.config import StunnerConfig
from stunner_dp.daemon.ledger import SharedLimits
from stunner_dp.daemon.pipe import read_frame, send_sockets, write_frame
from stunner_dp.net.dns import DEFAULT_INTERVAL, Resolved, StrictDnsResolver
from stunner_dp.net.sockets import bind_listener, listen_host, socket_kind
from stunner_dp.observe.logs import get_logger
from stunner_dp.observe.stats import StatsSnapshot, WorkersStats, WorkerStats
from stunner_dp.turn.access import strict_dns_hosts
from stunner_dp.turn.types import Addr

__all__ = ["Supervisor"]

log = get_logger("stunner")

START_TIMEOUT = 20.0  # seconds for a worker to report ready
APPLY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0  # then SIGKILL
RESTART_DELAY = 0.5  # first restart delay; doubled while a worker keeps dying young
MAX_RESTART_DELAY = 10.0
STABLE_AFTER = 10.0  # a worker that lived this long is "stable": restart delay resets


@dataclass(eq=False)
class HeldSocket:
    """A worker slot's listener socket, bound by the supervisor and held across the worker's
    restarts: `key` (socket kind, host, port) says which listener config it fits."""

    key: tuple[str, str, int]
    sock: socket.socket


@dataclass(eq=False)
class WorkerSlot:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    stats: StatsSnapshot | None = None
    listeners: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0
    restart_delay: float = RESTART_DELAY
    restarting: bool = False
    ready: asyncio.Future[dict[str, Any]] | None = None
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    held: dict[str, HeldSocket] = field(default_factory=dict)  # listener name -> its socket
    channel: socket.socket | None = None  # the socket channel to the worker (its listeners)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None and self.ready is None


class Supervisor:
    """N worker processes behind the daemon's `Dataplane` interface."""

    def __init__(
        self,
        workers: int,
        *,
        alternate_server: Addr | None = None,
        dns_interval: float = DEFAULT_INTERVAL,
        software: str = "",
        bind_host: str | None = None,
        log_levels: str = "",
        log_format: str = "text",
        python: str = sys.executable,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be 1 or more")
        self.size = workers
        self.config: StunnerConfig | None = None
        self.dns = StrictDnsResolver(self._dns_changed, interval=dns_interval)
        self.slots = [WorkerSlot(i) for i in range(workers)]
        self.restarts = 0
        self._alternate = alternate_server
        self._software = software
        self._bind_host = bind_host
        self._log_levels = log_levels
        self._log_format = log_format
        self._python = python
        self._nonce_secret = os.urandom(32)
        # quotas and rate limits count in one table all workers share (per dataplane)
        self._limits_fd = SharedLimits.create(workers)
        self._limits = SharedLimits.attach(self._limits_fd, 0)
        self._draining = False
        self._stopping = False
        self._running = False
        self._retired = StatsSnapshot()  # the counters of workers that died
        self._next_id = 0
        self._socket_gen = 0  # numbers the batches of listener sockets sent to the workers

    # -- Dataplane ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def allocation_count(self) -> int:
        return self.stats().server.allocations

    async def start(self, config: StunnerConfig) -> None:
        """Start every worker; RuntimeError when they cannot serve `config`."""
        if any(lis.port == 0 for lis in config.listeners):
            log.warning("a listener with port 0 gets a different port in every worker")
        self.config = config
        self._stopping = False
        self.dns.set_hosts(strict_dns_hosts(config))
        await self.dns.resolve(notify=False)
        results = await asyncio.gather(
            *(self._spawn(slot) for slot in self.slots), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise RuntimeError(f"worker processes could not start: {errors[0]}")
        self._running = True
        self.dns.start()
        log.info(
            "workers started",
            workers=self.size,
            pids=[slot.pid for slot in self.slots],
            listeners=self.slots[0].listeners,
        )

    async def apply(self, config: StunnerConfig) -> None:
        """Send `config` to every live worker and wait for each to apply it; RuntimeError
        when one could not (the daemon then rolls back by applying the old config)."""
        self.config = config
        self.dns.set_hosts(strict_dns_hosts(config))
        fresh = self.dns.unresolved()
        if fresh:
            await self.dns.resolve(fresh, notify=False)
        gen = self._hand_sockets_all(config)
        frame = {
            "type": "config",
            "config": config.to_dict(),
            "resolved": self._resolved(),
            "sockets": gen,
        }
        answers = await self._ask_all(frame, APPLY_TIMEOUT)
        for slot in self.slots:
            self._drop_failed_sockets(slot)
        errors = [a.get("error") for a in answers if a.get("error")]
        if errors:
            raise RuntimeError(f"a worker could not apply the config: {errors[0]}")

    def set_draining(self, draining: bool) -> None:
        self._draining = draining
        self._broadcast({"type": "draining", "value": draining})

    def listener_state(self) -> tuple[dict[str, int], dict[str, str]]:
        bound: dict[str, int] = {}
        failed: dict[str, str] = {}
        for slot in self.slots:
            if slot.alive:
                bound.update(slot.listeners)
                failed.update(slot.failed)
        for name in failed:
            bound.pop(name, None)  # failed in one worker: say so
        return bound, failed

    def stats(self) -> StatsSnapshot:
        live = [(s, s.stats) for s in self.slots if s.alive and s.stats is not None]
        total = StatsSnapshot.merge([self._retired, *(stats for _, stats in live)])
        workers = WorkersStats(
            running=sum(1 for s in self.slots if s.alive),
            restarts=self.restarts,
            per_worker={
                str(s.index): WorkerStats(pid=s.pid, allocations=stats.server.allocations)
                for s, stats in live
            },
        )
        return replace(total, workers=workers)

    async def refresh(self) -> None:
        """Ask every live worker for a fresh snapshot (before a scrape)."""
        await self._ask_all({"type": "stats"}, 1.0)

    async def wait_idle(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.refresh(), 2.0)
            if self.allocation_count == 0:
                return
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        self._stopping = True
        self._running = False
        await self.dns.stop()
        await asyncio.gather(*(self._stop_slot(slot) for slot in self.slots))
        for slot in self.slots:  # the listener ports are free once stop returns
            self._close_sockets(slot)

    def worker_pids(self) -> dict[str, int]:
        """Worker index -> PID of the live workers (for their process metrics)."""
        return {str(s.index): s.pid for s in self.slots if s.alive}

    # -- workers ------------------------------------------------------------------------------

    def _resolved(self) -> dict[str, list[str]]:
        return {name: list(ips) for name, ips in self.dns.resolved.items()}

    async def _spawn(self, slot: WorkerSlot) -> None:
        assert self.config is not None
        parent, child = socket.socketpair()
        if slot.channel is not None:
            slot.channel.close()  # a dead worker's
        slot.channel, channel_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        slot.channel.setblocking(False)
        channel_fd = channel_child.fileno()  # its number in the worker too (pass_fds)
        try:
            process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "stunner_dp.daemon.worker",
                "--fd",
                str(child.fileno()),
                pass_fds=(child.fileno(), self._limits_fd, channel_child.fileno()),
                start_new_session=False,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
            channel_child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        loop = asyncio.get_running_loop()
        slot.process, slot.writer, slot.stats = process, writer, None
        slot.started_at = time.monotonic()
        slot.ready = loop.create_future()
        slot.tasks = [
            loop.create_task(self._read(slot, reader)),
            loop.create_task(self._watch(slot, process)),
        ]
        # what the worker starts with: a config, DNS answers or drain state that change while
        # it starts (it is not `alive`, so nothing is sent to it) are sent once it is ready
        sent = (self.config, self._resolved(), self._draining)
        gen = self._hand_sockets(slot, sent[0])
        write_frame(
            writer,
            {
                "type": "init",
                "index": slot.index,
                "config": sent[0].to_dict(),
                "nonce_secret": self._nonce_secret.hex(),
                "sockets_fd": channel_fd,
                "sockets": gen,
                "limits_fd": self._limits_fd,
                "resolved": sent[1],
                "draining": sent[2],
                "alternate_server": list(self._alternate) if self._alternate else None,
                "bind_host": self._bind_host,
                "software": self._software,
                "log_levels": self._log_levels or self.config.admin.loglevel,
                "log_format": self._log_format,
            },
        )
        try:
            ready = await asyncio.wait_for(asyncio.shield(slot.ready), START_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(
                f"worker {slot.index} did not start in {START_TIMEOUT:g} s"
            ) from None
        finally:
            slot.ready = None
        if ready.get("type") == "failed":
            raise RuntimeError(f"worker {slot.index}: {ready.get('error')}")
        slot.listeners = dict(ready.get("listeners", {}))
        slot.failed = dict(ready.get("failed", {}))
        self._drop_failed_sockets(slot)
        slot.stats = self._decode_stats(slot, ready.get("stats"))
        if self.config is not None and (self.config, self._resolved()) != sent[:2]:
            write_frame(
                writer,
                {
                    "type": "config",
                    "config": self.config.to_dict(),
                    "resolved": self._resolved(),
                    "sockets": self._hand_sockets(slot, self.config),
                },
            )
        if self._draining != sent[2]:
            write_frame(writer, {"type": "draining", "value": self._draining})
        log.info("worker started", worker=slot.index, pid=process.pid)

    # -- listener sockets ---------------------------------------------------------------------

    def _hold_sockets(self, slot: WorkerSlot, config: StunnerConfig) -> dict[str, OSError]:
        """Make `slot.held` the sockets of `config`'s listeners: keep those that fit (a
        listener restarted on the same port gets the same socket), bind the others, close
        the rest. Returns the errors of those that could not be bound."""
        spare = {held.key: held for held in slot.held.values()}
        held: dict[str, HeldSocket] = {}
        errors: dict[str, OSError] = {}
        for listener in config.listeners:
            kind = socket_kind(listener)
            if kind is None:
                continue  # no listener serves it: the worker says so
            key = (kind, listen_host(listener, self._bind_host), listener.port)
            kept = spare.pop(key, None)
            if kept is not None:
                held[listener.name] = kept
                continue
            try:
                sock = bind_listener(listener, self._bind_host, reuse_port=True)
            except OSError as exc:
                errors[listener.name] = exc
                continue
            if sock is not None:
                held[listener.name] = HeldSocket(key, sock)
        for unused in spare.values():
            unused.sock.close()
        slot.held = held
        return errors

    def _hand_sockets(self, slot: WorkerSlot, config: StunnerConfig) -> int:
        """Hold `config`'s listener sockets for `slot` and queue them on its channel before
        the frame that names the returned batch number."""
        self._socket_gen += 1
        errors = self._hold_sockets(slot, config)
        self._send_sockets(slot, self._socket_gen, errors)
        return self._socket_gen

    def _hand_sockets_all(self, config: StunnerConfig) -> int:
        """`_hand_sockets` for a config sent to every live worker (one batch number); a dead
        slot's sockets follow the config too (a removed listener's port is freed now)."""
        self._socket_gen += 1
        for slot in self.slots:
            errors = self._hold_sockets(slot, config)
            if slot.alive:
                self._send_sockets(slot, self._socket_gen, errors)
        return self._socket_gen

    def _send_sockets(self, slot: WorkerSlot, gen: int, errors: dict[str, OSError]) -> None:
        if slot.channel is None:
            return
        sockets = {name: held.sock for name, held in slot.held.items()}
        try:
            send_sockets(slot.channel, gen, sockets, errors)
        except OSError as exc:  # the worker binds its own (a restart then moves clients)
            log.error("listener sockets not handed over", worker=slot.index, error=str(exc))

    @staticmethod
    def _drop_failed_sockets(slot: WorkerSlot) -> None:
        """A listener that failed in the worker (a bad certificate) serves nothing: its socket
        must not take a share of the clients. The next config binds it anew."""
        for name in slot.failed:
            held = slot.held.pop(name, None)
            if held is not None:
                held.sock.close()

    @staticmethod
    def _close_sockets(slot: WorkerSlot) -> None:
        for held in slot.held.values():
            held.sock.close()
        slot.held = {}
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = None

    @staticmethod
    def _decode_stats(slot: WorkerSlot, data: Any) -> StatsSnapshot | None:
        """A worker's snapshot from its frame (fields a newer worker adds are ignored); a
        snapshot that cannot be read leaves the last one."""
        if data is None:
            return None
        try:
            return StatsSnapshot.from_dict(data)
        except ValueError as exc:
            log.error("worker sent bad stats", worker=slot.index, error=str(exc))
            return slot.stats

    async def _read(self, slot: WorkerSlot, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                frame = await read_frame(reader)
            except ValueError as exc:
                log.error("worker sent a bad frame", worker=slot.index, error=str(exc))
                frame = None
            if frame is None:
                break
            kind = frame.get("type")
            if kind in ("ready", "failed"):
                if slot.ready is not None and not slot.ready.done():
                    slot.ready.set_result(frame)
                continue
            if kind == "stats":
                slot.stats = self._decode_stats(slot, frame.get("stats"))
            if "listeners" in frame:
                slot.listeners = dict(frame["listeners"])
                slot.failed = dict(frame.get("failed", {}))
            fut = slot.pending.pop(frame["id"], None) if "id" in frame else None
            if fut is not None and not fut.done():
                fut.set_result(frame)
        if slot.ready is not None and not slot.ready.done():
            slot.ready.set_result({"type": "failed", "error": "exited before it was ready"})
        for fut in slot.pending.values():
            if not fut.done():
                fut.set_result({"type": "gone"})
        slot.pending.clear()

    async def _watch(self, slot: WorkerSlot, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        self._limits.clear_worker(slot.index)  # its allocations are gone: stop counting them
        if slot.writer is not None:
            slot.writer.close()
        if self._stopping or not self._running or slot.restarting:
            return
        lost = slot.stats.server.allocations if slot.stats is not None else 0
        if slot.stats is not None:
            self._retired = StatsSnapshot.merge([self._retired, slot.stats.counters_only()])
        slot.stats = None
        if self._draining and code == 0:
            log.info("worker drained and exited", worker=slot.index, pid=process.pid)
            self._close_sockets(slot)  # not restarted: its share of each group goes to the rest
            return
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        log.error(
            "worker died: restarting it",
            worker=slot.index,
            pid=process.pid,
            cause=how,
            allocations_lost=lost,
        )
        lived = time.monotonic() - slot.started_at
        slot.restart_delay = (
            RESTART_DELAY
            if lived > STABLE_AFTER
            else min(slot.restart_delay * 2, MAX_RESTART_DELAY)
        )
        asyncio.get_running_loop().create_task(self._restart(slot, slot.restart_delay))

    async def _restart(self, slot: WorkerSlot, delay: float) -> None:
        slot.restarting = True
        try:
            await asyncio.sleep(delay)
            while not self._stopping and self._running:
                try:
                    await self._spawn(slot)
                except (RuntimeError, OSError) as exc:
                    log.error("worker restart failed", worker=slot.index, error=str(exc))
                    await self._kill(slot)
                    slot.restart_delay = min(slot.restart_delay * 2, MAX_RESTART_DELAY)
                    await asyncio.sleep(slot.restart_delay)
                    continue
                self.restarts += 1
                log.info(
                    "worker restarted", worker=slot.index, pid=slot.pid, restarts=self.restarts
                )
                return
        finally:
            slot.restarting = False

    async def _ask_all(self, frame: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[dict[str, Any]]] = []
        for slot in self.slots:
            if not slot.alive or slot.writer is None:
                continue
            self._next_id += 1
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            slot.pending[self._next_id] = fut
            write_frame(slot.writer, {**frame, "id": self._next_id})
            waits.append(fut)
        if not waits:
            return []
        done, pending = await asyncio.wait(waits, timeout=timeout)
        for fut in pending:
            fut.cancel()
        if pending:
            raise TimeoutError(f"{len(pending)} worker(s) did not answer in {timeout:g} s")
        return [f.result() for f in done]

    def _broadcast(self, frame: dict[str, Any]) -> None:
        for slot in self.slots:
            if slot.alive and slot.writer is not None:
                write_frame(slot.writer, frame)

    def _dns_changed(self, resolved: Resolved) -> None:
        self._broadcast({"type": "dns", "resolved": self._resolved()})

    async def _stop_slot(self, slot: WorkerSlot) -> None:
        if slot.writer is not None:
            slot.writer.close()  # end of stream: the worker stops its server and exits
        process = slot.process
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("worker did not stop: killing it", worker=slot.index, pid=process.pid)
                await self._kill(slot)
        for task in slot.tasks:
            task.cancel()
        for task in slot.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        slot.tasks = []

    async def _kill(self, slot: WorkerSlot) -> None:
        process = slot.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
