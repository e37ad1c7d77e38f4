"""A TURN load generator: many clients, paced ChannelData, a peer it runs itself.

Each client Allocates with long-term credentials (401, then authenticated), creates a permission
and binds a channel to a UDP peer (the sink) that this module runs on 127.0.0.1. Traffic is
ChannelData of a fixed size at a paced offered rate, one way (client -> relay -> sink) or echoed
(the sink sends every datagram back to the relay address, the server relays it to the client).

The payload carries a run id, a sequence number and a send timestamp (``time.perf_counter_ns``,
CLOCK_MONOTONIC, the same clock in every process on the host), so the sink measures one-way
latency and the client round-trip latency.

Sender processes (``Generator.procs``) each own a share of the clients and pace their share of the
rate in small bursts every millisecond with raw non-blocking sockets; the sink is a process of its
own. ``Generator.ceiling()`` measures what the generator reaches into the sink without any
server, so that a result is never the generator's own limit in disguise.

Run ``python bench/loadgen.py --help`` for the command line; ``bench/compare.py`` drives it
against coturn and stunner-dp.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import select
import socket
import struct
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

try:
    from stunner_dp import stun
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from stunner_dp import stun

TICK_NS = 1_000_000  # pacing period: one burst per millisecond (Generator(tick_us=) changes it)
DRAIN_S = 0.25  # time allowed for the last packets of a run to arrive
RTO_S = 0.5  # handshake retransmission timeout
MAX_TRIES = 5  # handshake transmissions per request before the client gives up
BASE_CHANNEL = 0x4000
SOCK_BUF = 4 * 1024 * 1024

# ChannelData header + payload header: channel, length, run id, sequence, send time (ns)
_CD = struct.Struct("!HHIIQ")
_PAYLOAD = struct.Struct("!IIQ")  # the same fields without the ChannelData header
PAYLOAD_MIN = _PAYLOAD.size
_CD_HEAD = struct.Struct("!HH")

_ctx = mp.get_context("fork")


# -- small helpers ---------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, int(q * (len(sorted_values) - 1)))])


def pin(cpus: Iterable[int] | None) -> None:
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cpus))


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (worker processes of a server)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """utime + stime (all threads) of ``pid`` and its descendants, from /proc/PID/stat."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent not idle, summed over CPUs (/proc/stat "cpu" line):
    every process, kernel thread, interrupt and softirq. Offloaded packets are processed in the
    softirq of whichever process sent them, so no single PID holds their cost."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    # user nice system idle iowait irq softirq steal: idle, iowait and steal (the hypervisor
    # ran someone else) are not work done here; guest and guest_nice are in user already
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / _CLK_TCK


def other_cpu_seconds(ours: set[int]) -> float:
    """utime + stime of every user-space process outside ``ours`` (other work on a shared
    machine; kernel threads, children of kthreadd, are kept: ksoftirqd runs our softirqs), with
    cutime + cstime: a short-lived process that ends in the window shows up in its parent's."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if entry == "2" or fields[1] == b"2":  # kthreadd and kernel threads
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime (14-17)
    return total / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its descendants."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except OSError:
            continue
    return total


def _udp_sockets() -> Iterator[list[str]]:
    """The fields of every line of the kernel's UDP socket tables, IPv4 then IPv6 (local
    address at 1, inode at 9, drops last)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            yield line.split()


def udp_drops(port: int) -> int:
    """The kernel's drop counter of the local UDP socket bound to ``port`` (receive overflow),
    IPv4 or IPv6."""
    for parts in _udp_sockets():
        if int(parts[1].rpartition(":")[2], 16) == port:
            return int(parts[-1])
    return 0


def family_of(host: str) -> int:
    """AF_INET6 for an IPv6 literal (``::1``), AF_INET otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def socket_drops(pid: int) -> int:
    """Receive-overflow drops summed over every UDP socket of ``pid`` and its descendants: where
    a server loses packets before it reads them (its socket buffers overflowed)."""
    inodes: set[str] = set()
    for p in descendants(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return sum(int(parts[-1]) for parts in _udp_sockets() if parts[9] in inodes)


# -- the TURN client handshake --------------------------------------------------------------------


@dataclass(slots=True)
class Creds:
    username: str
    password: str


class Conn:
    """One client transport to the server: a connected UDP socket or a TCP stream."""

    __slots__ = ("buf", "out", "sock", "tcp")

    def __init__(self, server: tuple[str, int], tcp: bool) -> None:
        self.tcp = tcp
        self.buf = bytearray()
        self.out = bytearray()
        if tcp:
            sock = socket.socket(family_of(server[0]), socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(5.0)
            sock.connect(server)  # loopback: done at once
            sock.setblocking(False)
        else:
            sock = socket.socket(family_of(server[0]), socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(server)
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> bool:
        """Send one message; False when the kernel refused it (UDP) — TCP queues the rest."""
        if not self.tcp:
            try:
                self.sock.send(data)
            except OSError:
                return False
            return True
        if self.out:
            self.out += data
            return self.flush()
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            return False
        if n < len(data):
            self.out += data[n:]
        return True

    def flush(self) -> bool:
        if self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            del self.out[:n]
        return True

    def receive(self) -> list[bytes]:
        """Every message that has arrived (STUN or ChannelData), framed for streams."""
        msgs: list[bytes] = []
        if not self.tcp:
            for _ in range(1024):
                try:
                    msgs.append(self.sock.recv(65536))
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # ICMP port unreachable and friends
            return msgs
        for _ in range(64):
            try:
                chunk = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not chunk:
                break
            self.buf += chunk
        buf = self.buf
        pos = 0
        while True:
            try:
                n = stun.stream_frame_length(memoryview(buf)[pos:])
            except stun.StunError:
                buf.clear()
                return msgs
            if n is None or len(buf) - pos < n:
                break
            msgs.append(bytes(buf[pos : pos + n]))
            pos += n
        del buf[:pos]
        return msgs

    def close(self) -> None:
        self.sock.close()


STEP_ALLOC_401, STEP_ALLOC, STEP_PERM, STEP_BIND, STEP_DONE, STEP_FAILED = range(6)
RETRANSMITS: dict[str, int] = {}  # per step, in this process (handshake timeouts)
STEP_NAMES = ("Allocate", "Allocate (auth)", "CreatePermission", "ChannelBind", "done", "failed")


class Client:
    """One TURN client walking Allocate (401 + authenticated), CreatePermission, ChannelBind."""

    __slots__ = (
        "channel",
        "conn",
        "deadline",
        "error",
        "key",
        "nonce",
        "peer",
        "realm",
        "relay",
        "request",
        "step",
        "tid",
        "tries",
    )

    def __init__(self, conn: Conn, peer: tuple[str, int], channel: int) -> None:
        self.conn = conn
        self.peer = peer
        self.channel = channel
        self.step = STEP_ALLOC_401
        self.tid = b""
        self.request = b""
        self.tries = 0
        self.deadline = 0.0
        self.key = b""
        self.nonce = b""
        self.realm = b""
        self.relay: tuple[str, int] | None = None
        self.error = ""

    def build(self, creds: Creds) -> bytes:
        self.tid = os.urandom(12)
        transport = [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(17))]
        if ":" in self.peer[0]:  # an IPv6 peer needs an IPv6 relay (RFC 6156: IPv4 by default)
            family = stun.encode_family(stun.FAMILY_IPV6)
            transport.append((stun.ATTR_REQUESTED_ADDRESS_FAMILY, family))
        if self.step == STEP_ALLOC_401:
            return stun.encode_message(
                stun.METHOD_ALLOCATE, stun.CLASS_REQUEST, self.tid, transport
            )
        auth = [
            (stun.ATTR_USERNAME, creds.username.encode()),
            (stun.ATTR_REALM, self.realm),
            (stun.ATTR_NONCE, self.nonce),
        ]
        peer = (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(self.peer, self.tid))
        if self.step == STEP_ALLOC:
            method, attrs = stun.METHOD_ALLOCATE, [*transport, *auth]
        elif self.step == STEP_PERM:
            method, attrs = stun.METHOD_CREATE_PERMISSION, [peer, *auth]
        else:
            chan = (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(self.channel))
            method, attrs = stun.METHOD_CHANNEL_BIND, [chan, peer, *auth]
        return stun.encode_message(
            method, stun.CLASS_REQUEST, self.tid, attrs, integrity_key=self.key
        )

    def send_step(self, creds: Creds, now: float, fresh: bool = True) -> None:
        if fresh:
            self.request = self.build(creds)
            self.tries = 0
        self.tries += 1
        self.deadline = now + RTO_S
        self.conn.send(self.request)

    def on_response(self, msg: stun.Message, creds: Creds, now: float) -> None:
        if msg.transaction_id != self.tid or self.step >= STEP_DONE:
            return
        if msg.cls == stun.CLASS_ERROR:
            raw = msg.get(stun.ATTR_ERROR_CODE)
            code = stun.decode_error_code(raw)[0] if raw else 0
            realm, nonce = msg.get(stun.ATTR_REALM), msg.get(stun.ATTR_NONCE)
            if code in (401, 438) and nonce is not None and self.tries < MAX_TRIES:
                if self.step == STEP_ALLOC_401:
                    self.step = STEP_ALLOC
                if realm is not None:
                    self.realm = realm
                    self.key = hashlib.md5(
                        f"{creds.username}:{realm.decode()}:{creds.password}".encode()
                    ).digest()
                self.nonce = nonce
                tries = self.tries
                self.send_step(creds, now)
                self.tries = tries + 1  # a challenge loop must still end
                return
            self.error = f"{STEP_NAMES[self.step]}: {code}"
            self.step = STEP_FAILED
            return
        if msg.cls != stun.CLASS_SUCCESS:
            return
        if self.step in (STEP_ALLOC_401, STEP_ALLOC):
            raw = msg.get(stun.ATTR_XOR_RELAYED_ADDRESS)
            if raw is not None:
                self.relay = stun.decode_xor_address(raw, self.tid)
            self.step = STEP_PERM
        elif self.step == STEP_PERM:
            self.step = STEP_BIND
        else:
            self.step = STEP_DONE
            return
        self.send_step(creds, now)


def handshake(
    clients: list[Client],
    creds: Creds,
    *,
    window: int,
    timeout: float,
) -> tuple[int, int, float]:
    """Run every client through the full sequence, ``window`` at a time.

    Returns (done, failed, seconds). Bounded by ``timeout`` seconds overall.
    """
    t0 = time.perf_counter()
    ep = select.epoll()
    by_fd: dict[int, Client] = {}
    active: list[Client] = []
    nxt = 0
    done = failed = 0
    last_scan = t0
    try:
        while (done + failed) < len(clients):
            now = time.perf_counter()
            if now - t0 > timeout:
                break
            while len(active) < window and nxt < len(clients):
                c = clients[nxt]
                nxt += 1
                fd = c.conn.fileno()
                by_fd[fd] = c
                ep.register(fd, select.EPOLLIN)
                active.append(c)
                c.send_step(creds, now)
            events = ep.poll(0.05, len(active) or 1)
            now = time.perf_counter()
            for fd, _ in events:
                c = by_fd[fd]
                if c.conn.tcp:
                    c.conn.flush()
                for data in c.conn.receive():
                    if not stun.is_stun(data):
                        continue
                    try:
                        msg = stun.parse_message(data)
                    except stun.StunError:
                        continue
                    c.on_response(msg, creds, now)
            if now - last_scan > 0.05 or events:
                last_scan = now
                keep: list[Client] = []
                for c in active:
                    if c.step < STEP_DONE and now > c.deadline:
                        if c.tries >= MAX_TRIES:
                            c.error = f"{STEP_NAMES[c.step]}: timeout"
                            c.step = STEP_FAILED
                        else:
                            c.send_step(creds, now, fresh=False)
                            RETRANSMITS[STEP_NAMES[c.step]] = (
                                RETRANSMITS.get(STEP_NAMES[c.step], 0) + 1
                            )
                    if c.step >= STEP_DONE:
                        ep.unregister(c.conn.fileno())
                        del by_fd[c.conn.fileno()]
                        if c.step == STEP_DONE:
                            done += 1
                        else:
                            failed += 1
                    else:
                        keep.append(c)
                active = keep
    finally:
        ep.close()
    failed += len(clients) - done - failed
    return done, failed, time.perf_counter() - t0


# -- processes -------------------------------------------------------------------------------------


@dataclass
class SinkStats:
    received: int = 0
    bytes: int = 0
    latencies_ns: list[int] = field(default_factory=list)


def _sink_main(
    conn: Connection, cpus: list[int] | None, ready: Connection, host: str = "127.0.0.1"
) -> None:
    """The peer: counts (and optionally echoes) what arrives, one-way latency per datagram."""
    pin(cpus)
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
    sock.bind((host, 0))
    sock.setblocking(False)
    ready.send(sock.getsockname()[1])
    ep = select.epoll()
    ep.register(sock.fileno(), select.EPOLLIN)
    ep.register(conn.fileno(), select.EPOLLIN)
    run_id = -1
    echo = False
    count = 0
    nbytes = 0
    lat = array("q")
    buf = bytearray(65536)
    recv_into = sock.recv_into
    recvfrom = sock.recvfrom
    sendto = sock.sendto
    unpack = _PAYLOAD.unpack_from
    clock = time.perf_counter_ns
    sfd = sock.fileno()
    while True:
        for fd, _ in ep.poll(0.1):
            if fd == sfd:
                for _ in range(4096):
                    try:
                        if echo:
                            data, addr = recvfrom(65536)
                            n = len(data)
                        else:
                            n = recv_into(buf)
                            data = buf
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue
                    if n < PAYLOAD_MIN:
                        continue
                    rid, _seq, ts = unpack(data)
                    if rid != run_id:
                        continue
                    count += 1
                    nbytes += n
                    lat.append(clock() - ts)
                    if echo:
                        with contextlib.suppress(OSError):
                            sendto(data, addr)
                continue
            cmd = conn.recv()
            if cmd[0] == "begin":
                run_id, echo = cmd[1], cmd[2]
                count = nbytes = 0
                lat = array("q")
            elif cmd[0] == "end":
                lat_sorted = sorted(lat)
                conn.send(
                    {
                        "received": count,
                        "bytes": nbytes,
                        "lat_p50_us": percentile(lat_sorted, 0.5) / 1000,
                        "lat_p99_us": percentile(lat_sorted, 0.99) / 1000,
                        "lat_max_us": percentile(lat_sorted, 1.0) / 1000,
                        "drops": udp_drops(sock.getsockname()[1]),
                    }
                )
                run_id = -1
                lat = array("q")
            elif cmd[0] == "quit":
                sock.close()
                return


def _sender_main(conn: Connection, cpus: list[int] | None, index: int) -> None:
    """One sender process: its share of the clients, its share of the rate."""
    pin(cpus)
    conns: list[Conn] = []
    channels: list[int] = []
    while True:
        cmd = conn.recv()
        op = cmd[0]
        if op in ("quit", "reset"):
            for c in (*conns, *_idle):
                c.close()
            conns, channels = [], []
            _idle.clear()
            if op == "quit":
                return
            conn.send({})
            continue
        if op == "setup":
            # ("setup", server, tcp, count, peer, creds, window, timeout, keep)
            _, server, tcp, count, peer, creds, window, timeout, keep = cmd
            clients = [
                Client(Conn(server, tcp), peer, BASE_CHANNEL + (i % 0x1000)) for i in range(count)
            ]
            done, failed, secs = handshake(clients, creds, window=window, timeout=timeout)
            ok = [c for c in clients if c.step == STEP_DONE]
            if keep:
                conns = [c.conn for c in ok]
                channels = [c.channel for c in ok]
                for c in clients:
                    if c.step != STEP_DONE:
                        c.conn.close()
            else:
                # The allocations stay on the server (idle, until it stops); sockets stay open
                # so that no later client reuses a 5-tuple.
                _idle.extend(c.conn for c in clients)
            errors: dict[str, int] = {f"{k} retransmits": v for k, v in RETRANSMITS.items()}
            RETRANSMITS.clear()
            for c in clients:
                if c.step != STEP_DONE:
                    key = c.error or f"{STEP_NAMES[c.step]}: unfinished"
                    errors[key] = errors.get(key, 0) + 1
            conn.send({"done": done, "failed": failed, "seconds": secs, "errors": errors})
        elif op == "direct":
            # Plain UDP to the sink, no TURN: the generator's own ceiling.
            _, target, count = cmd
            for c in conns:
                c.close()
            conns = []
            for _ in range(count):
                s = Conn(target, False)
                conns.append(s)
            channels = [0] * count
            conn.send({"done": count})
        elif op == "run":
            # ("run", run_id, rate, duration, size, start_ns, echo, raw)
            _, run_id, rate, duration, size, start_ns, echo, raw = cmd
            conn.send(_run(conns, channels, run_id, rate, duration, size, start_ns, echo, raw))
        else:
            conn.send({"error": f"unknown command {op!r}"})


_idle: list[Conn] = []  # idle allocations' sockets, kept open in the sender process


def _run(
    conns: list[Conn],
    channels: list[int],
    run_id: int,
    rate: float,
    duration: float,
    size: int,
    start_ns: int,
    echo: bool,
    raw: bool,
) -> dict[str, Any]:
    """Paced sending: every millisecond, send what the schedule says is due."""
    n = len(conns)
    if n == 0 or rate <= 0:
        time.sleep(duration + DRAIN_S)
        return {
            "sent": 0,
            "errors": 0,
            "echoed": 0,
            "rtt_p50_us": float("nan"),
            "rtt_p99_us": float("nan"),
        }
    tcp = conns[0].tcp
    pad = b"\x00" * (size - PAYLOAD_MIN)
    stream_pad = b"\x00" * (-size & 3) if tcp else b""
    pack = _CD.pack
    pack_payload = _PAYLOAD.pack
    clock = time.perf_counter_ns
    sends = [c.sock.send for c in conns]
    ep = select.epoll() if (echo or tcp) else None
    by_fd: dict[int, Conn] = {}
    if ep is not None:
        for c in conns:
            ep.register(c.fileno(), select.EPOLLIN)
            by_fd[c.fileno()] = c
    rtt = array("q")
    unpack = _PAYLOAD.unpack_from
    sent = errors = 0
    end_ns = start_ns + int(duration * 1e9)
    drain_end = end_ns + int(DRAIN_S * 1e9)
    ns_per_pkt = 1e9 / rate
    max_burst = max(1, int(rate * 0.01))  # never more than 10 ms of catch-up in one go
    idx = 0
    while clock() < start_ns:
        time.sleep(min(0.001, max(0.0, (start_ns - clock()) / 1e9)))
    while True:
        now = clock()
        if now >= end_ns:
            break
        due = int((now - start_ns) / ns_per_pkt) + 1 - sent
        if due > max_burst:
            due = max_burst
        for _ in range(due):
            ts = clock()
            if raw:
                pkt = pack_payload(run_id, sent, ts) + pad
            else:
                pkt = pack(channels[idx], size, run_id, sent, ts) + pad + stream_pad
            if tcp:
                if not conns[idx].send(pkt):
                    errors += 1
            else:
                try:
                    sends[idx](pkt)
                except OSError:
                    errors += 1
            sent += 1
            idx += 1
            if idx == n:
                idx = 0
        # The next tick boundary after now. (Adding TICK_NS per pass ran ahead whenever a pass
        # ended early on an echo, so the poll then slept through sends that were due and the
        # backlog left as one large burst, inflating round-trip times.)
        next_tick = start_ns + ((now - start_ns) // TICK_NS + 1) * TICK_NS
        if ep is not None:
            _receive(ep, by_fd, rtt, unpack, clock, run_id, max(0, next_tick - clock()), tcp)
        else:
            wait = next_tick - clock()
            if wait > 0:
                time.sleep(wait / 1e9)
    if ep is not None:
        while True:
            now = clock()
            if now >= drain_end:
                break
            _receive(ep, by_fd, rtt, unpack, clock, run_id, min(2_000_000, drain_end - now), tcp)
        ep.close()
    else:
        time.sleep(max(0.0, (drain_end - clock()) / 1e9))
    s = sorted(rtt)
    return {
        "sent": sent,
        "errors": errors,
        "echoed": len(rtt),
        "rtt_p50_us": percentile(s, 0.5) / 1000,
        "rtt_p99_us": percentile(s, 0.99) / 1000,
    }


def _receive(
    ep: select.epoll,
    by_fd: dict[int, Conn],
    rtt: array[int],
    unpack: Callable[..., tuple[int, ...]],
    clock: Callable[[], int],
    run_id: int,
    wait_ns: int,
    tcp: bool,
) -> None:
    for fd, _ in ep.poll(wait_ns / 1e9):
        c = by_fd[fd]
        if tcp:
            c.flush()
        for data in c.receive():
            if len(data) < 4 + PAYLOAD_MIN or not 0x40 <= data[0] <= 0x4F:
                continue
            rid, _seq, ts = unpack(data, 4)
            if rid == run_id:
                rtt.append(clock() - ts)


# -- the orchestrating side ------------------------------------------------------------------------


@dataclass
class RunResult:
    offered_pps: float
    delivered_pps: float
    loss_pct: float
    sent: int
    received: int
    ow_p50_us: float
    ow_p99_us: float
    rtt_p50_us: float = float("nan")
    rtt_p99_us: float = float("nan")
    cpu_us_per_pkt: float = float("nan")
    server_cpu_pct: float = float("nan")
    send_errors: int = 0
    sink_drops: int = 0
    server_drops: int = 0
    gen_cpu_pct: float = float("nan")  # sender + sink processes, % of one CPU
    # Machine-wide CPU (/proc/stat: all CPUs, processes, kernel threads, irq and softirq) per
    # packet delivered, less what processes outside this benchmark used in the same window.
    machine_cpu_us_per_pkt: float = float("nan")
    machine_raw_us_per_pkt: float = float("nan")  # the same, nothing subtracted
    other_cpu_pct: float = float("nan")  # processes outside the benchmark, % of one CPU
    echo: bool = False
    duration: float = 0.0
    rate: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AllocResult:
    allocations: int
    failed: int
    seconds: float
    per_second: float
    rss_delta_bytes: int
    bytes_per_allocation: float
    server_cpu_pct: float = float("nan")
    gen_cpu_pct: float = float("nan")  # near 100: the generator limited the rate
    server_cpu_us_per_allocation: float = float("nan")  # insensitive to CPU contention


class Generator:
    """Sender processes + a sink process. Use as a context manager; every process it starts is
    stopped (and joined, then killed by PID if need be) on exit."""

    def __init__(
        self,
        procs: int = 2,
        cpus: list[int] | None = None,
        host: str = "127.0.0.1",
        tick_us: int = TICK_NS // 1000,
    ) -> None:
        self.procs = max(1, procs)
        self.cpus = cpus
        self.host = host  # the sink's address: "::1" makes the peer (and its relays) IPv6
        # the senders' pacing period: the same rate in fewer, larger bursts (or the reverse),
        # so a server sleeps longer (or shorter) between wake-ups
        self.tick_us = max(1, tick_us)
        self._senders: list[tuple[Any, Connection]] = []
        self._sink: tuple[Any, Connection] | None = None
        self.sink_port = 0
        self._run_id = 0
        self.last_errors: dict[str, int] = {}  # why clients of the last setup failed

    def __enter__(self) -> Generator:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        global TICK_NS
        TICK_NS = self.tick_us * 1000  # the forked senders inherit it
        here, there = _ctx.Pipe()
        ready_r, ready_w = _ctx.Pipe(duplex=False)
        p = _ctx.Process(
            target=_sink_main, args=(there, self.cpus, ready_w, self.host), daemon=True
        )
        p.start()
        self._sink = (p, here)
        if not ready_r.poll(10):
            raise RuntimeError("the sink process did not start")
        self.sink_port = ready_r.recv()
        for i in range(self.procs):
            here, there = _ctx.Pipe()
            p = _ctx.Process(target=_sender_main, args=(there, self.cpus, i), daemon=True)
            p.start()
            self._senders.append((p, here))

    def close(self) -> None:
        procs = [*self._senders, *([self._sink] if self._sink else [])]
        for _, pipe in procs:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("quit",))
        for p, pipe in procs:
            p.join(3)
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, 9)
                p.join(1)
            pipe.close()
        self._senders = []
        self._sink = None

    def cpu_seconds(self) -> float:
        """CPU time used so far by the generator's own processes."""
        procs = [*self._senders, *([self._sink] if self._sink else [])]
        return sum(cpu_seconds(p.pid) for p, _ in procs if p.pid)

    def reset(self) -> None:
        """Close every client socket (the server these clients used is gone)."""
        self._ask_all([("reset",)] * self.procs, 30)

    @property
    def peer(self) -> tuple[str, int]:
        return (self.host, self.sink_port)

    def _ask_all(self, cmds: list[tuple[Any, ...]], timeout: float) -> list[dict[str, Any]]:
        for (_, pipe), cmd in zip(self._senders, cmds, strict=True):
            pipe.send(cmd)
        out = []
        deadline = time.monotonic() + timeout
        for p, pipe in self._senders:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"sender {p.pid} did not answer within {timeout:.0f} s")
            out.append(pipe.recv())
        return out

    def _split(self, total: int) -> list[int]:
        n = self.procs
        return [total // n + (1 if i < total % n else 0) for i in range(n)]

    def setup(
        self,
        server: tuple[str, int],
        creds: Creds,
        clients: int,
        *,
        tcp: bool = False,
        window: int = 64,
        timeout: float = 60.0,
        keep: bool = True,
    ) -> tuple[int, int, float]:
        """Allocate + CreatePermission + ChannelBind for ``clients`` clients (split over the
        sender processes). ``keep``: these clients carry the traffic of later runs; otherwise
        they stay idle. Returns (done, failed, wall seconds)."""
        t0 = time.perf_counter()
        counts = self._split(clients)
        cmds = [("setup", server, tcp, n, self.peer, creds, window, timeout, keep) for n in counts]
        replies = self._ask_all(cmds, timeout + 10)
        secs = time.perf_counter() - t0
        self.last_errors = {}
        for r in replies:
            for k, v in r["errors"].items():
                self.last_errors[k] = self.last_errors.get(k, 0) + v
        done = sum(r["done"] for r in replies)
        return done, sum(r["failed"] for r in replies), secs

    def allocation_rate(
        self,
        server: tuple[str, int],
        creds: Creds,
        count: int,
        server_pid: int | None,
        *,
        tcp: bool = False,
        window: int = 64,
        timeout: float = 120.0,
    ) -> AllocResult:
        """``count`` full sequences (kept idle); allocations/s and the server's RSS delta."""
        rss0 = rss_bytes(server_pid) if server_pid else 0
        cpu0, gcpu0 = (cpu_seconds(server_pid) if server_pid else 0.0), self.cpu_seconds()
        done, failed, secs = self.setup(
            server, creds, count, tcp=tcp, window=window, timeout=timeout, keep=False
        )
        cpu1, gcpu1 = (cpu_seconds(server_pid) if server_pid else 0.0), self.cpu_seconds()
        time.sleep(0.3)
        rss1 = rss_bytes(server_pid) if server_pid else 0
        delta = rss1 - rss0
        return AllocResult(
            allocations=done,
            failed=failed,
            seconds=secs,
            per_second=done / secs if secs > 0 else 0.0,
            rss_delta_bytes=delta,
            bytes_per_allocation=delta / done if done else float("nan"),
            server_cpu_pct=100 * (cpu1 - cpu0) / secs if server_pid and secs else float("nan"),
            gen_cpu_pct=100 * (gcpu1 - gcpu0) / secs if secs else float("nan"),
            server_cpu_us_per_allocation=1e6 * (cpu1 - cpu0) / done
            if server_pid and done
            else float("nan"),
        )

    def direct(self, clients: int) -> None:
        """Replace the traffic clients by ``clients`` plain UDP sockets connected to the sink:
        later runs (``raw=True``) send the same payloads with no server and no ChannelData
        header, the baseline a relay's cost is measured against."""
        self._ask_all([("direct", self.peer, n) for n in self._split(clients)], 10)

    def ceiling(self, clients: int = 64, duration: float = 1.0, size: int = 160) -> RunResult:
        """Unpaced (very high offered rate) sending straight into the sink, no server."""
        self.direct(clients)
        return self.run(5_000_000, duration, size=size, raw=True)

    def run(
        self,
        rate: float,
        duration: float,
        *,
        size: int = 160,
        echo: bool = False,
        server_pid: int | None = None,
        raw: bool = False,
    ) -> RunResult:
        """One paced run at ``rate`` packets/s in total for ``duration`` seconds."""
        if size < PAYLOAD_MIN:
            raise ValueError(f"size must be at least {PAYLOAD_MIN} bytes")
        assert self._sink is not None
        self._run_id += 1
        rid = self._run_id
        sink = self._sink[1]
        sink.send(("begin", rid, echo))
        drops0 = udp_drops(self.sink_port)
        start_ns = time.perf_counter_ns() + 50_000_000
        cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
        sdrops0 = socket_drops(server_pid) if server_pid else 0
        gcpu0 = self.cpu_seconds()
        ours = set(descendants(os.getpid()))  # this process, its generator and its servers
        other0, busy0 = other_cpu_seconds(ours), machine_busy_seconds()
        shares = [rate / self.procs] * self.procs
        cmds = [("run", rid, r, duration, size, start_ns, echo, raw) for r in shares]
        replies = self._ask_all(cmds, duration + DRAIN_S + 30)
        busy1, other1 = machine_busy_seconds(), other_cpu_seconds(ours)
        cpu1 = cpu_seconds(server_pid) if server_pid else 0.0
        sdrops1 = socket_drops(server_pid) if server_pid else 0
        gcpu1 = self.cpu_seconds()
        sink.send(("end", rid))
        if not sink.poll(30):
            raise RuntimeError("the sink did not answer")
        s = sink.recv()
        sent = sum(r["sent"] for r in replies)
        echoed = sum(r["echoed"] for r in replies)
        received = s["received"]
        relayed = received + echoed
        rtts = [r for r in replies if r["echoed"]]
        # Round-trip percentiles: the sender with the most samples stands for all (they share
        # one schedule); p99 is taken as the worst of the senders' p99s.
        rtt50 = max(rtts, key=lambda r: r["echoed"])["rtt_p50_us"] if rtts else float("nan")
        rtt99 = max(r["rtt_p99_us"] for r in rtts) if rtts else float("nan")
        cpu = cpu1 - cpu0
        delivered = echoed if echo else received
        window = duration + DRAIN_S + 0.05
        busy, other = busy1 - busy0, max(0.0, other1 - other0)
        return RunResult(
            offered_pps=sent / duration,
            delivered_pps=delivered / duration,
            loss_pct=100.0 * (1 - delivered / sent) if sent else float("nan"),
            sent=sent,
            received=received,
            ow_p50_us=s["lat_p50_us"],
            ow_p99_us=s["lat_p99_us"],
            rtt_p50_us=rtt50,
            rtt_p99_us=rtt99,
            cpu_us_per_pkt=cpu * 1e6 / relayed if (server_pid and relayed) else float("nan"),
            server_cpu_pct=100.0 * cpu / (duration + DRAIN_S + 0.05)
            if server_pid
            else float("nan"),
            send_errors=sum(r["errors"] for r in replies),
            sink_drops=s["drops"] - drops0,
            server_drops=sdrops1 - sdrops0,
            gen_cpu_pct=100.0 * (gcpu1 - gcpu0) / (duration + DRAIN_S + 0.05),
            machine_cpu_us_per_pkt=(busy - other) * 1e6 / relayed if relayed else float("nan"),
            machine_raw_us_per_pkt=busy * 1e6 / relayed if relayed else float("nan"),
            other_cpu_pct=100.0 * other / window,
            echo=echo,
            duration=duration,
            rate=rate,
        )

    def sweep(
        self,
        rates: Sequence[float],
        duration: float,
        *,
        size: int = 160,
        server_pid: int | None = None,
        stop_after_losses: int = 2,
        refine: int = 0,
        on_result: Callable[[RunResult], None] | None = None,
        raw: bool = False,
    ) -> list[RunResult]:
        """Runs at increasing rates; stops after ``stop_after_losses`` consecutive lossy runs.
        Then ``refine`` bisection steps between the best lossless rate and the lossy rate above
        it. Results come sorted by rate."""
        out: list[RunResult] = []
        lossy = 0

        def one(rate: float) -> RunResult:
            r = self.run(rate, duration, size=size, server_pid=server_pid, raw=raw)
            out.append(r)
            if on_result:
                on_result(r)
            return r

        for rate in rates:
            r = one(rate)
            lossy = lossy + 1 if r.loss_pct >= 1.0 else 0
            if lossy >= stop_after_losses:
                break
        for _ in range(refine):
            good = [r.rate for r in out if r.loss_pct < 1.0]
            if not good:
                break
            bad = [r.rate for r in out if r.loss_pct >= 1.0 and r.rate > max(good)]
            if not bad:
                break
            lo, hi = max(good), min(bad)
            if hi - lo < 0.05 * hi:
                break
            one(round((lo + hi) / 2, -2))
        return sorted(out, key=lambda r: r.rate)


def max_lossless(results: Iterable[RunResult], threshold: float = 1.0) -> float:
    """The highest delivered rate among runs with loss below ``threshold`` percent."""
    ok = [r.delivered_pps for r in results if r.loss_pct < threshold]
    return max(ok) if ok else 0.0


def default_rates(limit: float, quick: bool) -> list[float]:
    base = [2_000, 5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000]
    more = [120_000, 150_000, 180_000, 220_000, 260_000, 300_000, 350_000, 400_000]
    rates = [5_000, 20_000, 40_000, 60_000, 80_000, 120_000, 160_000] if quick else base + more
    return [r for r in rates if r <= limit * 1.05] or rates[:1]


# -- command line ----------------------------------------------------------------------------------


def fmt_run(r: RunResult) -> str:
    rtt = f" rtt p50/p99 {r.rtt_p50_us:7.0f}/{r.rtt_p99_us:7.0f} us" if r.echo else ""
    return (
        f"offered {r.offered_pps:9.0f} pps  delivered {r.delivered_pps:9.0f} pps  "
        f"loss {r.loss_pct:6.2f} %  one-way p50/p99 {r.ow_p50_us:7.0f}/{r.ow_p99_us:7.0f} us"
        f"{rtt}  cpu {r.cpu_us_per_pkt:6.2f} us/pkt"
        + f"  machine {r.machine_cpu_us_per_pkt:6.2f} us/pkt"
        + (f" (others {r.other_cpu_pct:.0f} %)" if r.other_cpu_pct >= 5 else "")
        + f"  gen {r.gen_cpu_pct:3.0f} % cpu"
        + (f"  drops: server {r.server_drops} sink {r.sink_drops}" if r.loss_pct > 0 else "")
    )


def parse_hostport(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPV6]:PORT or :PORT (127.0.0.1)."""
    host, _, port = text.rpartition(":")
    return (host.strip("[]") or "127.0.0.1", int(port))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--server", type=parse_hostport, required=True, help="TURN server HOST:PORT")
    p.add_argument("--user", default="user-1")
    p.add_argument("--password", default="pass-1")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--server-pid", type=int, help="server PID, for CPU and memory figures")
    p.add_argument("--clients", type=int, default=100, help="traffic clients (allocations)")
    p.add_argument("--rate", type=float, default=20_000, help="offered packets/s in total")
    p.add_argument("--sweep", action="store_true", help="a rate sweep up to --rate")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    p.add_argument("--size", type=int, default=160, help="ChannelData payload bytes")
    p.add_argument("--echo", action="store_true", help="the peer echoes: round-trip latency")
    p.add_argument("--procs", type=int, default=2, help="sender processes")
    p.add_argument("--cpus", default="", help="CPUs for the generator, e.g. 1 or 1,2")
    p.add_argument("--allocations", type=int, default=0, help="then N allocations: rate + RSS")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--ceiling", type=float, default=1.0, help="seconds of the ceiling run (0 skips it)"
    )
    args = p.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",") if c] or None
    creds = Creds(args.user, args.password)
    sink_host = "::1" if family_of(args.server[0]) == socket.AF_INET6 else "127.0.0.1"
    with Generator(args.procs, cpus, host=sink_host) as gen:  # the peer of the server's family
        if args.ceiling > 0:
            ceil = gen.ceiling(size=args.size, duration=args.ceiling)
            print(f"generator ceiling: {ceil.delivered_pps:.0f} pps into a plain UDP sink")
            gen.reset()
        done, failed, secs = gen.setup(
            args.server, creds, args.clients, tcp=args.transport == "tcp"
        )
        print(f"{done} clients ready ({failed} failed) in {secs:.2f} s {gen.last_errors or ''}")
        if done == 0:
            return 1
        rates = default_rates(args.rate, False) if args.sweep else [args.rate]
        results = []
        for rate in rates:
            r = gen.run(
                rate, args.duration, size=args.size, echo=args.echo, server_pid=args.server_pid
            )
            results.append(r)
            print(json.dumps(r.as_dict()) if args.json else fmt_run(r), flush=True)
        if args.sweep:
            print(f"max lossless rate: {max_lossless(results):.0f} pps")
        if args.allocations:
            a = gen.allocation_rate(
                args.server,
                creds,
                args.allocations,
                args.server_pid,
                tcp=args.transport == "tcp",
            )
            print(
                f"allocations: {a.allocations} ({a.failed} failed) at {a.per_second:.0f}/s, "
                f"{a.bytes_per_allocation:.0f} bytes each (RSS) {gen.last_errors or ''}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
