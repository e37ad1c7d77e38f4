"""ctypes over ``libbpf.so.1`` and the raw ``bpf()`` syscall: just what the offload engine needs.

libbpf (Debian 12 ships 1.1) loads the ELF object: BTF-defined maps, CO-RE relocations, the
``bpf_cast_to_kern_ctx`` kfunc. It has no tcx API (that came in 1.3), so tcx links are made with
a raw ``bpf(BPF_LINK_CREATE)``; classic clsact attachment goes through ``bpf_tc_*``.

Every failure is an :class:`OffloadError` whose message says why in words
("libbpf.so.1 not found", "not permitted (needs CAP_BPF and CAP_NET_ADMIN)",
"verifier refused: ...").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections import deque
from typing import Any

__all__ = [
    "BPF_TCX_EGRESS",
    "BPF_TCX_INGRESS",
    "BPF_TC_EGRESS",
    "BPF_TC_INGRESS",
    "BpfObject",
    "Lib",
    "OffloadError",
    "lib",
    "link_create_tcx",
    "map_delete",
    "map_lookup",
    "map_update",
    "num_possible_cpus",
    "tc_attach",
    "tc_detach",
    "tc_hook_create",
    "tc_query",
]

# enum bpf_cmd / bpf_attach_type (linux/bpf.h of kernel 6.6+, absent from Debian 12's headers)
BPF_LINK_CREATE = 28
BPF_LINK_DETACH = 34
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
# enum bpf_tc_attach_point (libbpf.h)
BPF_TC_INGRESS = 1 << 0
BPF_TC_EGRESS = 1 << 1
BPF_TC_F_REPLACE = 1 << 0
# map update flags
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361}
_LOG_LINES = 40


class OffloadError(Exception):
    """Offloading cannot be set up or changed here; ``str()`` is the reason in words."""

    def __init__(self, reason: str, err: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errno = err


def _seccomp_filtered() -> bool:
    """Does a seccomp filter confine this process (a container runtime's default profile may
    refuse bpf() unless CAP_SYS_ADMIN is held, whatever CAP_BPF says)?"""
    try:
        with open("/proc/self/status") as fh:
            return any(ln.split()[1:] == ["2"] for ln in fh if ln.startswith("Seccomp:"))
    except OSError:
        return False


def _errno_reason(what: str, err: int) -> str:
    if err in (errno.EPERM, errno.EACCES):
        hint = (
            "; or this process's seccomp filter refuses bpf(): allow it in the runtime's profile"
            if _seccomp_filtered()
            else ""
        )
        return f"{what}: not permitted (needs CAP_BPF and CAP_NET_ADMIN, or root){hint}"
    if err == errno.ENOENT:
        return f"{what}: not found (ENOENT)"
    return f"{what}: {os.strerror(err)} (errno {err})"


class _TcHook(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _TcOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


_PrintFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class Lib:
    """The loaded ``libbpf.so.1`` with typed function pointers and a log of its messages."""

    def __init__(self) -> None:
        name = "libbpf.so.1"
        try:
            self.so = ctypes.CDLL(name, use_errno=True)
        except OSError:
            found = ctypes.util.find_library("bpf")
            if not found:
                raise OffloadError("libbpf.so.1 not found (apt-get install libbpf1)") from None
            try:
                self.so = ctypes.CDLL(found, use_errno=True)
            except OSError as e:
                raise OffloadError(f"libbpf cannot be loaded: {e}") from None
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.log: deque[str] = deque(maxlen=400)
        self._log_lock = threading.Lock()
        self._declare()
        self._print_cb = _PrintFn(self._on_print)  # keep a reference: libbpf holds the pointer
        self.so.libbpf_set_print(self._print_cb)

    def _declare(self) -> None:
        so, vp, ci, cs = self.so, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        sig: dict[str, tuple[Any, list[Any]]] = {
            "bpf_object__open_mem": (vp, [vp, ctypes.c_size_t, vp]),
            "bpf_object__load": (ci, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__find_program_by_name": (vp, [vp, cs]),
            "bpf_object__find_map_by_name": (vp, [vp, cs]),
            "bpf_program__fd": (ci, [vp]),
            "bpf_program__set_log_buf": (ci, [vp, vp, ctypes.c_size_t]),
            "bpf_program__set_log_level": (ci, [vp, ctypes.c_uint32]),
            "bpf_map__fd": (ci, [vp]),
            "bpf_map__set_max_entries": (ci, [vp, ctypes.c_uint32]),
            "bpf_map__value_size": (ctypes.c_uint32, [vp]),
            "bpf_map_update_elem": (ci, [ci, vp, vp, ctypes.c_uint64]),
            "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
            "bpf_map_delete_elem": (ci, [ci, vp]),
            "libbpf_num_possible_cpus": (ci, []),
            "libbpf_set_print": (vp, [vp]),
            "bpf_tc_hook_create": (ci, [vp]),
            "bpf_tc_attach": (ci, [vp, vp]),
            "bpf_tc_detach": (ci, [vp, vp]),
            "bpf_tc_query": (ci, [vp, vp]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(so, name)
            fn.restype = res
            fn.argtypes = args
        self.libc.vsnprintf.restype = ctypes.c_int
        self.libc.vsnprintf.argtypes = [vp, ctypes.c_size_t, cs, vp]
        self.libc.syscall.restype = ctypes.c_long

    def _on_print(self, level: int, fmt: bytes | None, args: int | None) -> int:
        # x86_64 (and aarch64) pass va_list as a pointer here: vsnprintf formats it
        buf = ctypes.create_string_buffer(1024)
        if fmt is not None:
            self.libc.vsnprintf(buf, len(buf), fmt, args)
        with self._log_lock:
            for line in buf.value.decode("utf-8", "replace").splitlines():
                self.log.append(line)
        return 0

    def last_log(self, n: int = _LOG_LINES) -> list[str]:
        with self._log_lock:
            return list(self.log)[-n:]

    def clear_log(self) -> None:
        with self._log_lock:
            self.log.clear()

    def bpf_syscall(self, cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
        nr = _SYS_BPF.get(os.uname().machine)
        if nr is None:
            raise OffloadError(f"bpf() syscall number unknown on {os.uname().machine}")
        rc = int(self.libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr,
                                   ctypes.c_uint(len(attr))))
        if rc < 0:
            return -ctypes.get_errno()
        return rc


_lib: Lib | None = None
_lib_lock = threading.Lock()


def lib() -> Lib:
    """The process-wide :class:`Lib` (loaded on first use)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = Lib()
        return _lib


def num_possible_cpus() -> int:
    n = int(lib().so.libbpf_num_possible_cpus())
    if n <= 0:
        raise OffloadError(_errno_reason("libbpf_num_possible_cpus", -n))
    return n


class BpfObject:
    """One opened and loaded ELF object; ``close()`` releases its programs and maps."""

    def __init__(self, data: bytes, max_entries: dict[str, int] | None = None,
                 program: str | None = None) -> None:
        self._lib = lib()
        self._data = ctypes.create_string_buffer(data, len(data))  # must outlive the object
        self._lib.clear_log()
        ctypes.set_errno(0)
        obj = self._lib.so.bpf_object__open_mem(self._data, len(data), None)
        if not obj:
            err = ctypes.get_errno() or errno.EINVAL
            raise OffloadError(self._reason("opening the BPF object failed", err), err)
        self._obj: int | None = int(obj)
        try:
            for name, n in (max_entries or {}).items():
                m = self._map_ptr(name)
                rc = self._lib.so.bpf_map__set_max_entries(m, n)
                if rc < 0:
                    raise OffloadError(_errno_reason(f"sizing map {name}", -rc), -rc)
            self._log_buf = ctypes.create_string_buffer(1 << 20)
            if program is not None:
                prog = self._prog_ptr(program)
                self._lib.so.bpf_program__set_log_buf(prog, self._log_buf, len(self._log_buf))
            rc = self._lib.so.bpf_object__load(self._obj)
            if rc < 0:
                raise OffloadError(self._reason("loading the BPF object failed", -rc), -rc)
        except BaseException:
            self.close()
            raise

    def _reason(self, what: str, err: int) -> str:
        lines = [ln for ln in self._lib.last_log() if ln.strip()]
        verifier = self._log_buf.value.decode("utf-8", "replace").splitlines() \
            if hasattr(self, "_log_buf") else []
        text = " ".join(lines)
        if err in (errno.EPERM, errno.EACCES) and not verifier:
            return _errno_reason(what, err)
        if "vmlinux BTF" in text or "kernel BTF" in text:
            return f"{what}: no BTF (/sys/kernel/btf/vmlinux is needed for CO-RE): " + \
                " | ".join(lines[-5:])
        if verifier:
            tail = [ln for ln in verifier if ln.strip()][-12:]
            return "verifier refused: " + " | ".join(tail)
        detail = " | ".join(lines[-8:])
        return f"{_errno_reason(what, err)}" + (f": {detail}" if detail else "")

    def _need(self) -> int:
        if self._obj is None:
            raise OffloadError("the BPF object is closed")
        return self._obj

    def _map_ptr(self, name: str) -> int:
        m = self._lib.so.bpf_object__find_map_by_name(self._need(), name.encode())
        if not m:
            raise OffloadError(f"map {name} not in the BPF object")
        return int(m)

    def _prog_ptr(self, name: str) -> int:
        p = self._lib.so.bpf_object__find_program_by_name(self._need(), name.encode())
        if not p:
            raise OffloadError(f"program {name} not in the BPF object")
        return int(p)

    def map_fd(self, name: str) -> int:
        fd = int(self._lib.so.bpf_map__fd(self._map_ptr(name)))
        if fd < 0:
            raise OffloadError(_errno_reason(f"map {name} fd", -fd))
        return fd

    def map_value_size(self, name: str) -> int:
        return int(self._lib.so.bpf_map__value_size(self._map_ptr(name)))

    def prog_fd(self, name: str) -> int:
        fd = int(self._lib.so.bpf_program__fd(self._prog_ptr(name)))
        if fd < 0:
            raise OffloadError(_errno_reason(f"program {name} fd", -fd))
        return fd

    def close(self) -> None:
        if self._obj is not None:
            self._lib.so.bpf_object__close(self._obj)
            self._obj = None


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    rc = int(lib().so.bpf_map_update_elem(fd, key, value, flags))
    if rc < 0:
        err = -rc
        if err == errno.EEXIST:
            raise OffloadError("map entry already exists", err)
        if err == errno.E2BIG:
            raise OffloadError("map is full", err)
        raise OffloadError(_errno_reason("map update", err), err)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    buf = ctypes.create_string_buffer(value_size)
    rc = int(lib().so.bpf_map_lookup_elem(fd, key, buf))
    if rc < 0:
        if -rc == errno.ENOENT:
            return None
        raise OffloadError(_errno_reason("map lookup", -rc), -rc)
    return buf.raw


def map_delete(fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was not there."""
    rc = int(lib().so.bpf_map_delete_elem(fd, key))
    if rc < 0:
        if -rc == errno.ENOENT:
            return False
        raise OffloadError(_errno_reason("map delete", -rc), -rc)
    return True


def link_create_tcx(prog_fd: int, ifindex: int, attach_type: int = BPF_TCX_INGRESS) -> int:
    """A tcx bpf_link (kernel >= 6.6): the returned fd owns the attachment (close = detach).

    The kernel makes the fd O_CLOEXEC, so an exec'd child does not keep the program attached.
    """
    attr = ctypes.create_string_buffer(64)
    # union bpf_attr.link_create: prog_fd, target_ifindex, attach_type, flags,
    # tcx.relative_fd (u32 at 16), tcx.expected_revision (u64 at 24)
    ctypes.memmove(attr, (ctypes.c_uint32 * 4)(prog_fd, ifindex, attach_type, 0), 16)
    rc = lib().bpf_syscall(BPF_LINK_CREATE, attr)
    if rc < 0:
        raise OffloadError(_errno_reason(f"tcx attach on ifindex {ifindex}", -rc), -rc)
    return rc


def link_detach(link_fd: int) -> None:
    """Detach a link now (its fd stays open until closed)."""
    attr = ctypes.create_string_buffer(64)
    ctypes.memmove(attr, (ctypes.c_uint32 * 1)(link_fd), 4)
    lib().bpf_syscall(BPF_LINK_DETACH, attr)


def _hook(ifindex: int, point: int) -> _TcHook:
    return _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=point, parent=0)


def tc_hook_create(ifindex: int) -> None:
    """The clsact qdisc on ``ifindex`` (EEXIST is fine)."""
    h = _hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)
    rc = int(lib().so.bpf_tc_hook_create(ctypes.byref(h)))
    if rc < 0 and -rc != errno.EEXIST:
        raise OffloadError(_errno_reason(f"clsact on ifindex {ifindex}", -rc), -rc)


def tc_attach(ifindex: int, prog_fd: int, handle: int, priority: int,
              point: int = BPF_TC_INGRESS) -> None:
    h = _hook(ifindex, point)
    o = _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=prog_fd, flags=BPF_TC_F_REPLACE,
                handle=handle, priority=priority)
    rc = int(lib().so.bpf_tc_attach(ctypes.byref(h), ctypes.byref(o)))
    if rc < 0:
        raise OffloadError(_errno_reason(f"tc attach on ifindex {ifindex}", -rc), -rc)


def tc_query(ifindex: int, handle: int, priority: int, point: int = BPF_TC_INGRESS) -> int | None:
    """The program id of our filter (handle, priority) on ``ifindex``, or None."""
    h = _hook(ifindex, point)
    o = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    rc = int(lib().so.bpf_tc_query(ctypes.byref(h), ctypes.byref(o)))
    if rc < 0:
        return None
    return int(o.prog_id)


def tc_detach(ifindex: int, handle: int, priority: int, point: int = BPF_TC_INGRESS) -> bool:
    h = _hook(ifindex, point)
    o = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    rc = int(lib().so.bpf_tc_detach(ctypes.byref(h), ctypes.byref(o)))
    return rc == 0
