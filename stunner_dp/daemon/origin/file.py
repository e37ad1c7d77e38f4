"""A config file as origin: read once, and with `watch` re-read whenever it changes.

Change detection polls (mtime, size, inode, device) once a second: no inotify dependency, and it
catches Kubernetes ConfigMap updates, which swap a symlink to a new file (a new inode) rather
than writing in place. SIGHUP (`reload`) re-reads the file whether watched or not. The file is
parsed in a child process with the config package's bounds (`isolated.py`): the event loop
keeps relaying while a big file is read, and a hostile one is refused with the bound it broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from stunner_dp.config import ConfigError
from stunner_dp.observe.logs import get_logger

from . import ApplyConfig
from .isolated import load_file

__all__ = ["FileOrigin"]

log = get_logger("config")

Signature = tuple[int, int, int, int]


class FileOrigin:
    def __init__(
        self,
        path: str,
        apply: ApplyConfig,
        *,
        watch: bool = False,
        interval: float = 1.0,
        loaded: bool = False,
    ) -> None:
        """`loaded`: the caller has applied the file as it is now already (the daemon's first
        config comes from the command line), so only later changes count."""
        self.path = path.removeprefix("file://")
        self.description = f"file {self.path}"
        self.apply = apply
        self.watch = watch
        self.interval = interval
        self.loaded = loaded
        self._seen: Signature | None = None
        self._missing = False
        self._task: asyncio.Task[None] | None = None
        self._reload: asyncio.Task[bool] | None = None
        self.last_error = ""  # why the last read was refused ("" when it was taken)
        self.refused = 0

    def signature(self) -> Signature | None:
        try:
            st = os.stat(self.path)  # follows symlinks: a ConfigMap swap shows as a new inode
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    async def start(self) -> None:
        if self.loaded:
            self._seen = self.signature()
        else:
            await self.load("start")
        if self.watch and self._task is None:
            self._task = asyncio.create_task(self._poll(), name="config-file-watch")
            log.info("watching config file", path=self.path, interval=self.interval)

    def reload(self) -> None:
        if self._reload is None or self._reload.done():
            self._reload = asyncio.create_task(self.load("SIGHUP"))

    async def stop(self) -> None:
        for task in (self._task, self._reload):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._reload = None

    async def load(self, why: str) -> bool:
        """Read, validate and hand over the file; False (logged) when it cannot be used."""
        self._seen = self.signature()
        try:
            config = await load_file(self.path)
        except ConfigError as exc:
            self.refused += 1
            self.last_error = str(exc)
            log.error(
                "config file is not valid: ignored, the running config stays",
                path=self.path,
                trigger=why,
                field=exc.field,
                error=str(exc),
            )
            return False
        self.last_error = ""
        log.info("config file read", path=self.path, trigger=why)
        return await self.apply(config)

    def state(self) -> dict[str, Any]:
        """For /status: the file, and why its last read was refused."""
        return {
            "origin": self.description,
            "watch": self.watch,
            "refused": self.refused,
            "last_error": self.last_error or None,
        }

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            sig = self.signature()
            if sig is None:
                if not self._missing:
                    self._missing = True
                    log.warning("config file is gone: the running config stays", path=self.path)
                continue
            if self._missing:
                self._missing = False
                log.info("config file is back", path=self.path)
            if sig != self._seen:
                try:
                    await self.load("file changed")
                except Exception as exc:  # never let one bad round end the watch
                    log.error("config reload failed", path=self.path, error=repr(exc))
