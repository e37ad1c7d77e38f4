"""The compiled user-space forwarder (issue 10, offload off): ChannelData relayed by a C thread.

``libturn_forwarder.so`` (package data, built by ``scripts/build-forwarder`` from
``turn_forwarder.c``; see that file for the design) is loaded with ctypes. ``Forwarder`` owns
one instance and the thread that runs its loop. The thread reads the sockets it is given;
every datagram it does not relay comes back as a record on ``Forwarder.handoff`` (a Unix
stream socket) for Python's own paths.

When the object cannot load (another CPU architecture, an older C library, a missing file)
:func:`forwarder_unavailable_reason` says why and the server relays in Python.
"""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct
import threading
from importlib import resources
from pathlib import Path

__all__ = [
    "KIND_LISTENER",
    "KIND_RELAY",
    "RECORD",
    "TOTAL_NAMES",
    "EntryCounters",
    "Forwarder",
    "ForwarderError",
    "forwarder_unavailable_reason",
]

OBJECT_NAME = "libturn_forwarder.so"
ABI = 1  # FWD_ABI in turn_forwarder.c
BUILT_FOR = "x86_64"  # the machine scripts/build-forwarder compiles for
KIND_LISTENER, KIND_RELAY = 0, 1
# the order of enum total in turn_forwarder.c
TOTAL_NAMES: tuple[str, ...] = ("handed_off", "handoff_dropped", "recv_errors", "wakeups")
# a handed-off datagram: length, token, family, pad, port (host order), address; then the data
RECORD = struct.Struct("=IIBxH16s")
DEFAULT_MAX_ENTRIES = 65536
HANDOFF_BUFFER = 4 << 20  # the Unix socket's buffer, as big as the C side's queue

_u8p = ctypes.POINTER(ctypes.c_uint8)
_u64p = ctypes.POINTER(ctypes.c_uint64)
_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 16}


class ForwarderError(Exception):
    """The forwarder could not load, or refused a call: `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EntryCounters(ctypes.Structure):
    _fields_ = [
        ("fwd_packets", ctypes.c_uint64),
        ("fwd_bytes", ctypes.c_uint64),
        ("rev_packets", ctypes.c_uint64),
        ("rev_bytes", ctypes.c_uint64),
        ("fwd_dropped", ctypes.c_uint64),
        ("rev_dropped", ctypes.c_uint64),
    ]


def object_path() -> Path:
    return Path(str(resources.files(__package__).joinpath(OBJECT_NAME)))


_library: tuple[ctypes.CDLL, ctypes.PyDLL] | None = None
_load_error: str | None = None


def _load() -> tuple[ctypes.CDLL, ctypes.PyDLL]:
    """The library twice: `CDLL` releases the GIL (the thread's loop runs in it for good),
    `PyDLL` keeps it (the short calls from the event loop: no GIL hand-over per call)."""
    global _library, _load_error
    if _library is not None:
        return _library
    if _load_error is not None:
        raise ForwarderError(_load_error)
    machine = platform.machine()
    path = object_path()
    try:
        if machine != BUILT_FOR:
            raise ForwarderError(f"the shipped forwarder is built for {BUILT_FOR}, not {machine}")
        if not path.is_file():
            raise ForwarderError(f"{path} is missing")
        try:
            released, held = ctypes.CDLL(str(path)), ctypes.PyDLL(str(path))
        except OSError as exc:
            raise ForwarderError(f"cannot load {path.name}: {exc}") from exc
        if held.fwd_abi() != ABI:
            raise ForwarderError(f"{path.name} has ABI {held.fwd_abi()}, this code wants {ABI}")
    except ForwarderError as exc:
        _load_error = exc.reason
        raise
    released.fwd_run.argtypes = [ctypes.c_void_p]
    released.fwd_run.restype = ctypes.c_int
    held.fwd_new.argtypes = [ctypes.c_int, ctypes.c_uint32]
    held.fwd_new.restype = ctypes.c_void_p
    held.fwd_free.argtypes = [ctypes.c_void_p]
    held.fwd_free.restype = None
    held.fwd_stop.argtypes = [ctypes.c_void_p]
    held.fwd_stop.restype = None
    held.fwd_watch.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_uint32]
    held.fwd_unwatch.argtypes = [ctypes.c_void_p, ctypes.c_int]
    held.fwd_add.argtypes = [
        ctypes.c_void_p, ctypes.c_int,
        ctypes.c_uint8, _u8p, ctypes.c_uint16, ctypes.c_uint16,
        ctypes.c_int,
        ctypes.c_uint8, _u8p, ctypes.c_uint16,
    ]  # fmt: skip
    held.fwd_remove.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    held.fwd_counters.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(EntryCounters)]
    held.fwd_totals.argtypes = [ctypes.c_void_p, _u64p]
    held.fwd_totals.restype = None
    _library = (released, held)
    return _library


def forwarder_unavailable_reason() -> str | None:
    """Why the compiled forwarder cannot run here (None: it can)."""
    try:
        _load()
    except ForwarderError as exc:
        return exc.reason
    return None


def _packed_ip(family: int, host: str) -> ctypes.Array[ctypes.c_uint8]:
    try:
        raw = socket.inet_pton(family, host)
    except OSError as exc:  # an address of the other family (or no address at all)
        raise ValueError(f"{host!r} is not an address of the socket's family") from exc
    return (ctypes.c_uint8 * 16).from_buffer_copy(raw.ljust(16, b"\0"))


class Forwarder:
    """One C forwarding loop and its thread. Calls come from one event loop's thread."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        released, self._lib = _load()
        # ours reads what the thread hands back; the thread writes to `theirs`
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, HANDOFF_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HANDOFF_BUFFER)
        ours.setblocking(False)
        theirs.setblocking(False)
        handle = self._lib.fwd_new(theirs.fileno(), max_entries)
        if not handle:
            ours.close()
            theirs.close()
            raise ForwarderError("the forwarder could not allocate its tables")
        self.handoff = ours
        self._theirs = theirs
        self._handle = ctypes.c_void_p(handle)
        self._counters = EntryCounters()
        self._totals = (ctypes.c_uint64 * (len(TOTAL_NAMES) + 1))()
        self.result: int | None = None  # fwd_run's return, once the thread has ended
        self._thread = threading.Thread(
            target=self._run, args=(released,), name="stunner-dp-forwarder", daemon=True
        )
        self._thread.start()

    def _run(self, released: ctypes.CDLL) -> None:
        self.result = int(released.fwd_run(self._handle))

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def watch(self, sock: socket.socket, kind: int, token: int) -> None:
        """Read `sock` in the thread; what it does not relay comes back under `token`."""
        self._check(self._lib.fwd_watch(self._handle, sock.fileno(), kind, token), "watch")

    def unwatch(self, fd: int) -> None:
        """The thread stops reading `fd` (and drops entries through it) before this returns."""
        self._lib.fwd_unwatch(self._handle, fd)

    def add(
        self,
        listener: socket.socket,
        client: tuple[str, int],
        channel: int,
        relay: socket.socket,
        peer: tuple[str, int],
    ) -> int:
        """Install one channel; its id. ForwarderError (taken, full) or ValueError (an
        address of the wrong family) when the thread cannot relay it."""
        cfam, pfam = listener.family, relay.family
        if cfam not in _FAMILIES or pfam not in _FAMILIES:
            raise ValueError("not an IP socket")
        rc = self._lib.fwd_add(
            self._handle,
            listener.fileno(),
            cfam, _packed_ip(cfam, client[0]), client[1], channel,
            relay.fileno(),
            pfam, _packed_ip(pfam, peer[0]), peer[1],
        )  # fmt: skip
        return self._check(rc, "add")

    def remove(self, entry: int) -> None:
        self._lib.fwd_remove(self._handle, entry)

    def counters(self, entry: int) -> EntryCounters | None:
        """The entry's counts so far (a copy), None when it is gone."""
        if self._lib.fwd_counters(self._handle, entry, ctypes.byref(self._counters)) != 0:
            return None
        return EntryCounters.from_buffer_copy(self._counters)

    def totals(self) -> tuple[dict[str, int], int]:
        """The thread's own counts (TOTAL_NAMES) and the number of entries."""
        self._lib.fwd_totals(self._handle, self._totals)
        values = list(self._totals)
        return dict(zip(TOTAL_NAMES, values, strict=False)), values[-1]

    def close(self) -> None:
        """Stop and join the thread, then free it. The caller unwatches its sockets first."""
        if self._handle.value is None:
            return
        self._lib.fwd_stop(self._handle)
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # never seen; leaking beats freeing under a live thread
            return
        self._lib.fwd_free(self._handle)
        self._handle = ctypes.c_void_p()
        self._theirs.close()
        self.handoff.close()

    @staticmethod
    def _check(rc: int, what: str) -> int:
        if rc < 0:
            raise ForwarderError(f"fwd_{what}: {os.strerror(-rc)}")
        return rc
