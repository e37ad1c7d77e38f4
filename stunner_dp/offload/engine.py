"""The offload engine: the control plane of the kernel fast path (issue 10).

:class:`OffloadEngine` loads ``turn_offload.bpf.o`` (shipped as package data, built by
``scripts/build-bpf`` from ``bpf/turn_offload.bpf.c``), attaches it on the ingress of the chosen
interfaces and installs one pair of map entries per channel binding:

``fwd_map``  (client → peer)
    key   ``family u8, pad u8, channel be16, client_port be16, listener_port be16,
    client_ip [16]``
    value ``relay_ip [16], peer_ip [16], relay_port be16, peer_port be16, id u32``
``rev_map``  (peer → client)
    key   ``family u8, pad u8, relay_port be16, peer_port be16, pad u16, relay_ip [16],
    peer_ip [16]``
    value ``listener_ip [16], client_ip [16], listener_port be16, client_port be16,
    channel be16, pad u16, id u32``
``entry_stats``  per-CPU array indexed by ``id``:
    ``fwd_packets, fwd_bytes, rev_packets, rev_bytes`` (u64; bytes are relayed payload bytes,
    the 4-byte ChannelData header excluded: add 4 per packet for the listener side)
``pass_reasons``  per-CPU array of u64 indexed by :data:`PASS_REASONS`.

IPv4 addresses sit in the first 4 bytes of the 16 (rest zero). The client, listener, relay and
peer of one binding must share one family (the program rewrites addresses, not IP versions).

**The wildcard-listener decision** (kernel-offload.md, pitfall 5): the forward key holds the
listener *port* but not the listener IP, so a listener bound to 0.0.0.0/:: matches whatever
local address the client sent to, with no IP_PKTINFO needed for the client → peer direction.
The reverse direction must put the right source address on the ChannelData it sends to the
client, so the listener IP lives in the reverse *value* and the caller must give the concrete
local address the client talks to (IP_PKTINFO / IPV6_RECVPKTINFO on a wildcard socket, or the
bound address); :meth:`OffloadEngine.add_channel` refuses an unspecified listener IP.
Two listeners on one port but different IPs, reached by the same client ip:port with the same
channel, would collide; user space never offers that binding twice (``add_channel`` refuses a
duplicate key).

**Attach modes**: tcx links (kernel ≥ 6.6) through a raw ``bpf(BPF_LINK_CREATE)``: the link
dies with its fd, so a SIGKILLed server leaves nothing forwarding. Where tcx is missing, a
classic clsact filter with our own handle/priority (:data:`TC_HANDLE`, :data:`TC_PRIORITY`) is
used; such a filter survives its process, so :meth:`OffloadEngine.load` removes stale ones
first and :meth:`close` removes its own. One engine per network namespace; interfaces are
resolved in the calling thread's namespace, and a classic-tc engine must be closed from that
namespace too (tcx links are fds and need no such care). Link fds are O_CLOEXEC, but a
``fork()`` without exec would inherit them and keep the program attached.

**Delivery**: on ``lo`` the rewritten packet continues up the stack (TC_ACT_OK); elsewhere the
program asks the FIB and redirects to the egress device (``bpf_redirect`` or
``bpf_redirect_neigh``). A FIB miss, a local destination or forwarding disabled with the peer
behind another device leaves the packet to user space (reason ``fib``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from . import libbpf as bpf
from .libbpf import OffloadError

__all__ = [
    "PASS_REASONS",
    "TC_HANDLE",
    "TC_PRIORITY",
    "Attachment",
    "ChannelHandle",
    "Counters",
    "OffloadEngine",
    "OffloadError",
    "offload_unavailable_reason",
]

OBJECT_NAME = "turn_offload.bpf.o"
PROGRAM = "turn_offload"
# the order of enum pass_reason in turn_offload.bpf.c
PASS_REASONS: tuple[str, ...] = (
    "not_ip", "not_udp", "not_channeldata", "no_entry", "length", "fragment", "ip_options",
    "gso", "mtu", "too_big", "fib", "malformed", "error_dropped",
)
# a classic tc filter we own: ingress, handle 0x5d70 ("STUN"-ish), priority 0x5d70
TC_HANDLE = 0x5D70
TC_PRIORITY = 0x5D70
DEFAULT_MAX_CHANNELS = 16384
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x7FFF
MIN_KERNEL = (6, 3)  # bpf_cast_to_kern_ctx
TCX_KERNEL = (6, 6)

_FWD_KEY = struct.Struct("!BxHHH16s")
# the values' trailing `id` is a host-order __u32 (an array index to the program), the rest
# network order: packed apart (an id packed big-endian indexes past the array, counts lost)
_FWD_VAL = struct.Struct("!16s16sHH")
_REV_KEY = struct.Struct("!BxHHxx16s16s")
_REV_VAL = struct.Struct("!16s16sHHHxx")
_ID = struct.Struct("=I")
_COUNTERS = struct.Struct("=QQQQ")
_U64 = struct.Struct("=Q")

_SIOCGIFFLAGS = 0x8913
_SIOCGIFHWADDR = 0x8927
_IFF_UP = 0x1
_ARPHRD_ETHER = 1
_ARPHRD_LOOPBACK = 772
_CAP_SYS_ADMIN, _CAP_NET_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 12, 38, 39

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ChannelHandle:
    """One installed channel binding; pass it to :meth:`OffloadEngine.remove`."""

    id: int
    fwd_key: bytes
    rev_key: bytes


@dataclass(frozen=True, slots=True)
class Counters:
    """Offloaded traffic of one binding, summed over CPUs (bytes: relayed payload)."""

    fwd_packets: int
    fwd_bytes: int
    rev_packets: int
    rev_bytes: int


@dataclass(frozen=True, slots=True)
class Attachment:
    interface: str
    ifindex: int
    mode: Literal["tcx", "tc"]
    link_fd: int  # -1 for classic tc


def _kernel_version() -> tuple[int, int]:
    rel = os.uname().release
    parts: list[int] = []
    for piece in rel.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits[:4]))
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def _cap_effective() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _object_bytes() -> bytes:
    return resources.files(__package__).joinpath(OBJECT_NAME).read_bytes()


def offload_unavailable_reason() -> str | None:
    """Why loading cannot work here, in words, or None when it should. Cheap: no BPF loaded."""
    if os.uname().sysname != "Linux":
        return "not Linux"
    if _kernel_version() < MIN_KERNEL:
        return "kernel {}.{} is too old (needs >= {}.{})".format(*_kernel_version(), *MIN_KERNEL)
    caps = _cap_effective()
    admin = bool(caps & (1 << _CAP_SYS_ADMIN))
    has_bpf = bool(caps & (1 << _CAP_BPF)) or admin
    # CAP_PERFMON: the verifier allows the CO-RE read of skb->ip_summed (pointer arithmetic
    # on a trusted kernel pointer) only with it (measured: refused with BPF + NET_ADMIN alone)
    has_perfmon = bool(caps & (1 << _CAP_PERFMON)) or admin
    if not (has_bpf and has_perfmon and caps & (1 << _CAP_NET_ADMIN)):
        return "not permitted (needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or root)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "no BTF (/sys/kernel/btf/vmlinux is missing: CONFIG_DEBUG_INFO_BTF)"
    try:
        bpf.lib()
    except OffloadError as e:
        return e.reason
    try:
        _object_bytes()
    except OSError:
        return f"{OBJECT_NAME} is missing from the package (run scripts/build-bpf)"
    return None


def _ip_bytes(ip: str) -> tuple[int, bytes]:
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if a.version == 4:
        return socket.AF_INET, a.packed + bytes(12)
    return socket.AF_INET6, a.packed


def _port(p: int) -> int:
    if not 0 < p < 65536:
        raise ValueError(f"bad port {p}")
    return p


def _interface_info(name: str) -> tuple[int, int]:
    """(flags, ARPHRD type) of ``name`` in this thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", name.encode()[:15], 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        hw = fcntl.ioctl(s, _SIOCGIFHWADDR, req)
        arphrd = struct.unpack_from("16sH", hw)[1]
    return int(flags), int(arphrd)


def _pick_interfaces(names: list[str] | None) -> list[tuple[str, int]]:
    """(name, ifindex) to attach to: the named ones, or every up Ethernet-like one and lo."""
    index = {n: i for i, n in socket.if_nameindex()}
    out: list[tuple[str, int]] = []
    if names:
        for n in names:
            if n not in index:
                raise OffloadError(f"no interface named {n!r}")
            _, arphrd = _interface_info(n)
            if arphrd not in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK):
                raise OffloadError(f"interface {n} is not Ethernet or loopback (type {arphrd})")
            out.append((n, index[n]))
        return out
    for n, i in sorted(index.items(), key=lambda kv: kv[1]):
        try:
            flags, arphrd = _interface_info(n)
        except OSError:
            continue
        if flags & _IFF_UP and arphrd in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK):
            out.append((n, i))
    if not out:
        raise OffloadError("no interface that is up to attach to")
    return out


class OffloadEngine:
    """The loaded program, its maps and its attachments. Not thread-safe; one per netns."""

    def __init__(self, obj: bpf.BpfObject, max_channels: int) -> None:
        self._obj: bpf.BpfObject | None = obj
        self._fwd = obj.map_fd("fwd_map")
        self._rev = obj.map_fd("rev_map")
        self._stats = obj.map_fd("entry_stats")
        self._reasons = obj.map_fd("pass_reasons")
        self._prog = obj.prog_fd(PROGRAM)
        self._ncpu = bpf.num_possible_cpus()
        self._max = max_channels
        self._handles: dict[int, ChannelHandle] = {}
        self._free: list[int] = list(range(max_channels - 1, -1, -1))
        self.attachments: list[Attachment] = []

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def load(cls, interfaces: list[str] | None = None, *,
             max_channels: int = DEFAULT_MAX_CHANNELS,
             mode: Literal["auto", "tcx", "tc"] = "auto") -> OffloadEngine:
        """Load, verify and attach on ingress of ``interfaces`` (None/empty: all that are up).

        Raises :class:`OffloadError` with the reason when any step fails (nothing stays
        attached then).
        """
        reason = offload_unavailable_reason()
        if reason is not None:
            raise OffloadError(reason)
        if max_channels < 1:
            raise ValueError("max_channels must be >= 1")
        targets = _pick_interfaces(interfaces)
        sizes = {"fwd_map": max_channels, "rev_map": max_channels, "entry_stats": max_channels}
        obj = bpf.BpfObject(_object_bytes(), sizes, program=PROGRAM)
        engine = cls(obj, max_channels)
        try:
            for name, ifindex in targets:
                _remove_stale_tc(ifindex)
                engine.attachments.append(engine._attach(name, ifindex, mode))
        except BaseException:
            engine.close()
            raise
        return engine

    def _attach(self, name: str, ifindex: int, mode: str) -> Attachment:
        if mode in ("auto", "tcx"):
            try:
                fd = bpf.link_create_tcx(self._prog, ifindex)
                return Attachment(name, ifindex, "tcx", fd)
            except OffloadError as e:
                tcx_missing = e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)
                if mode == "tcx" or not tcx_missing:
                    raise OffloadError(f"{name}: {e.reason}", e.errno) from None
        try:
            bpf.tc_hook_create(ifindex)
            bpf.tc_attach(ifindex, self._prog, TC_HANDLE, TC_PRIORITY)
        except OffloadError as e:
            raise OffloadError(f"{name}: {e.reason}", e.errno) from None
        return Attachment(name, ifindex, "tc", -1)

    def close(self) -> None:
        """Detach everywhere and release every fd; idempotent."""
        for a in self.attachments:
            if a.mode == "tcx":
                with contextlib.suppress(OffloadError):
                    bpf.link_detach(a.link_fd)
                with contextlib.suppress(OSError):
                    os.close(a.link_fd)
            else:
                with contextlib.suppress(OffloadError):
                    bpf.tc_detach(a.ifindex, TC_HANDLE, TC_PRIORITY)
        self.attachments = []
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        self._handles.clear()

    def __enter__(self) -> OffloadEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._obj is None

    def _check_open(self) -> None:
        if self._obj is None:
            raise OffloadError("the offload engine is closed")

    # -- entries ---------------------------------------------------------------------------

    @property
    def entries(self) -> int:
        """Installed channel bindings."""
        return len(self._handles)

    def add_channel(self, client: Addr, listener: Addr, channel: int, relay: Addr,
                    peer: Addr) -> ChannelHandle:
        """Install both directions of one channel binding; returns its handle.

        ``listener`` must be the concrete local address the client sends to (see the module
        docstring); all four addresses one family. Raises ValueError for bad arguments and
        :class:`OffloadError` when the map refuses (duplicate, full).
        """
        self._check_open()
        if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            raise ValueError(f"channel {channel:#x} outside 0x4000-0x7FFF")
        fams = set()
        packed: list[bytes] = []
        for ip, _ in (client, listener, relay, peer):
            fam, b = _ip_bytes(ip)
            fams.add(fam)
            packed.append(b)
        if len(fams) != 1:
            raise ValueError("client, listener, relay and peer must share one address family")
        if ipaddress.ip_address(listener[0]).is_unspecified:
            raise ValueError("the listener's concrete local IP is needed (IP_PKTINFO)")
        family = fams.pop()
        cip, lip, rip, pip = packed
        cport, lport, rport, pport = (_port(a[1]) for a in (client, listener, relay, peer))
        if not self._free:
            raise OffloadError(f"all {self._max} offload entries are in use")
        ident = self._free.pop()
        fwd_key = _FWD_KEY.pack(family, channel, cport, lport, cip)
        rev_key = _REV_KEY.pack(family, rport, pport, rip, pip)
        try:
            self._zero_stats(ident)
            bpf.map_update(self._rev, rev_key,
                           _REV_VAL.pack(lip, cip, lport, cport, channel) + _ID.pack(ident),
                           bpf.BPF_NOEXIST)
            try:
                bpf.map_update(self._fwd, fwd_key,
                               _FWD_VAL.pack(rip, pip, rport, pport) + _ID.pack(ident),
                               bpf.BPF_NOEXIST)
            except BaseException:
                bpf.map_delete(self._rev, rev_key)
                raise
        except BaseException:
            self._free.append(ident)
            raise
        h = ChannelHandle(ident, fwd_key, rev_key)
        self._handles[ident] = h
        return h

    def remove(self, handle: ChannelHandle) -> None:
        """Delete both entries; the program stops relaying this binding at once."""
        self._check_open()
        if self._handles.get(handle.id) != handle:
            raise KeyError("unknown offload handle")
        bpf.map_delete(self._fwd, handle.fwd_key)
        bpf.map_delete(self._rev, handle.rev_key)
        del self._handles[handle.id]
        self._free.append(handle.id)

    def _zero_stats(self, ident: int) -> None:
        bpf.map_update(self._stats, struct.pack("=I", ident),
                       bytes(_COUNTERS.size * self._ncpu), bpf.BPF_ANY)

    # -- telemetry -------------------------------------------------------------------------

    def counters(self, handle: ChannelHandle) -> Counters:
        """(fwd packets, fwd bytes, rev packets, rev bytes) of one binding, summed over CPUs."""
        self._check_open()
        raw = bpf.map_lookup(self._stats, struct.pack("=I", handle.id),
                             _COUNTERS.size * self._ncpu)
        totals = [0, 0, 0, 0]
        if raw is not None:
            for fields in _COUNTERS.iter_unpack(raw):
                for i, v in enumerate(fields):
                    totals[i] += v
        return Counters(*totals)

    def pass_reasons(self) -> dict[str, int]:
        """Why packets went to user space (or, ``error_dropped``, were dropped), since load."""
        self._check_open()
        out: dict[str, int] = {}
        for i, name in enumerate(PASS_REASONS):
            raw = bpf.map_lookup(self._reasons, struct.pack("=I", i), _U64.size * self._ncpu)
            out[name] = sum(v for (v,) in _U64.iter_unpack(raw)) if raw else 0
        return out


def _remove_stale_tc(ifindex: int) -> None:
    """A classic filter with our handle/priority left by a dead process keeps forwarding."""
    if bpf.tc_query(ifindex, TC_HANDLE, TC_PRIORITY) is not None:
        bpf.tc_detach(ifindex, TC_HANDLE, TC_PRIORITY)
