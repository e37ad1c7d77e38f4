"""Soak: churn TURN allocations at a steady rate for a while, watch for leaks.

    .venv/bin/python bench/soak.py                 # 10 minutes, 20 sessions a second
    .venv/bin/python bench/soak.py --minutes 2 --json

The server runs in this process (the library API, on uvloop): one on 127.0.0.1 whose listeners
also relay from ::1 (`additional_address`), one on ::1. The clients and the UDP echo peers (one
on 127.0.0.1, one on ::1) run in a child process, so the RSS and open descriptors measured here
are the server's. Each session is one client that allocates (401 challenge, then Allocate),
binds a channel and installs a permission for the echo peer of each relay, relays ChannelData
and a Send indication both ways, refreshes, and then ends in one of three ways:

- UDP, Refresh with LIFETIME 0 (deleted at once; a dual allocation first drops its IPv6 relay
  with REQUESTED-ADDRESS-FAMILY IPv6 and LIFETIME 0);
- UDP, the client goes silent (the allocation expires; its socket is held till then, so no
  later client inherits the 5-tuple of a live allocation);
- TCP, the client closes its connection (deleted with the connection).

Sessions take turns over four address-family variants (VARIANTS), so the rate is shared, not
added: an IPv4 client with an IPv4 relay; an IPv4 client asking REQUESTED-ADDRESS-FAMILY IPv6;
an IPv6 client on ::1; an IPv4 client with a dual allocation (ADDITIONAL-ADDRESS-FAMILY, two
relays, a channel and permission per family). The relayed addresses must be of the families the
variant asked for.

The minimum allocation lifetime is RFC 8656's 600 s; waiting that long for expiries would make
a soak of hours. `--min-lifetime` (default 10 s) lowers the server's floor for this run only
(it sets `stunner_dp.turn.server.DEFAULT_LIFETIME`, a test hook), so the expiry path churns as
much as the others. IPv4 UDP clients bind random 127.0.0.x source addresses so the per-IP tables
see many keys (IPv6 has one loopback address: its clients differ by port).

At the start, every minute and at the end it prints RSS, open descriptors, live allocations and
relay ports in use (sockets of this process bound in the relay range, counted from
/proc/net/udp, udp6, tcp and tcp6, so a socket leaked past the server's own books still shows;
`relay_ports_ipv6` the IPv6 ones). The end is after the churn stops and every
allocation has expired. Exit status 1 when allocations or ports are not back to zero, RSS
grew by more than `--max-rss-growth` (10%) between minute 1 and the end, or more than
`--max-failed` (1%) of the sessions failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import uvloop

from stunner_dp import stun
from stunner_dp.turn.auth import long_term_key

USER, PASSWORD, REALM = "soak", "soak-pass", "soak.test"
ECHOES = 5  # payloads per session that should come back from the echo peer
TIMEOUT = 2.0


# -- measurements (server process) --------------------------------------------------------------


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


SOCKET_TABLES = ("udp", "udp6", "tcp", "tcp6")  # /proc/net/<table>


def ports_in_use(low: int, high: int) -> dict[str, int]:
    """Sockets of this process bound to a local port in [low, high], per kernel table (UDP
    and TCP, IPv4 and IPv6): the kernel's count rather than the server's own books."""
    mine = _socket_inodes()
    counts = dict.fromkeys(SOCKET_TABLES, 0)
    for table in SOCKET_TABLES:
        try:
            with open(f"/proc/net/{table}", encoding="ascii") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    port = int(fields[1].rsplit(":", 1)[1], 16)
                    counts[table] += low <= port <= high and fields[9] in mine
        except OSError:
            continue
    return counts


def relay_ports_in_use(low: int, high: int) -> int:
    return sum(ports_in_use(low, high).values())


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            with socket.socket(family, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


# -- clients (child process) -----------------------------------------------------------------


def _peer_attr(peer: tuple[str, int], tid: bytes) -> tuple[int, bytes]:
    return stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)


def _family_attr(attr: int, family: int) -> tuple[int, bytes]:
    return attr, stun.encode_family(family)


ASK_IPV6 = (_family_attr(stun.ATTR_REQUESTED_ADDRESS_FAMILY, stun.FAMILY_IPV6),)
DUAL = (_family_attr(stun.ATTR_ADDITIONAL_ADDRESS_FAMILY, stun.FAMILY_IPV6),)
IPV4, IPV6 = stun.FAMILY_IPV4, stun.FAMILY_IPV6


@dataclass(frozen=True)
class Variant:
    """Who the client is, what it asks for, and the relays (in answer order) it must get; one
    echo peer per relay, of that relay's family."""

    name: str
    client: str  # "": a random 127.0.0.x (UDP) or 127.0.0.1 (TCP)
    allocate: tuple[tuple[int, bytes], ...]
    relays: tuple[int, ...]


VARIANTS = (
    Variant("ipv4", "", (), (IPV4,)),
    Variant("ipv4-asks-ipv6", "", ASK_IPV6, (IPV6,)),
    Variant("ipv6", "::1", (), (IPV6,)),
    Variant("dual", "", DUAL, (IPV4, IPV6)),
)


class _Session:
    """The TURN exchange of one session, over whatever `send`/`receive` carry."""

    stream = False  # over TCP: ChannelData padded to 4 bytes

    def __init__(self) -> None:
        self.key = long_term_key(USER, REALM, PASSWORD)
        self.nonce = ""
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.send: Any = None

    async def transact(self, tid: bytes, data: bytes) -> stun.Message:
        self.send(data)
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer")
            frame = await asyncio.wait_for(self.inbox.get(), left)
            if stun.is_stun(frame):
                msg = stun.parse_message(frame)
                if msg.transaction_id == tid:
                    return msg

    async def ask(self, method: int, attrs_fn: Any, auth: bool = True) -> stun.Message:
        tid = os.urandom(12)
        attrs = attrs_fn(tid)
        body = list(attrs)
        key = None
        if auth:
            body += [
                (stun.ATTR_USERNAME, stun.encode_text(USER)),
                (stun.ATTR_REALM, stun.encode_text(REALM)),
                (stun.ATTR_NONCE, stun.encode_text(self.nonce)),
            ]
            key = self.key
        data = stun.encode_message(method, stun.CLASS_REQUEST, tid, body, integrity_key=key)
        return await self.transact(tid, data)

    async def run(
        self,
        variant: Variant,
        peers: dict[int, tuple[str, int]],
        lifetime: int,
        end_with_refresh_zero: bool,
    ) -> int:
        """Returns the number of payloads that made the round trip (ECHOES per relay)."""
        transport = [(stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(17))]
        first = await self.ask(stun.METHOD_ALLOCATE, lambda tid: transport, auth=False)
        self.nonce = stun.decode_text(first.get(stun.ATTR_NONCE) or b"")
        lt = [(stun.ATTR_LIFETIME, stun.encode_u32(lifetime))]
        resp = await self.ask(
            stun.METHOD_ALLOCATE, lambda tid: [*transport, *lt, *variant.allocate]
        )
        _expect(resp, "Allocate")
        relayed = [
            stun.decode_xor_address(v, resp.transaction_id)
            for v in resp.get_all(stun.ATTR_XOR_RELAYED_ADDRESS)
        ]
        families = tuple(IPV6 if ":" in ip else IPV4 for ip, _ in relayed)
        if families != variant.relays:
            raise RuntimeError(f"Allocate: relays {relayed}, families {variant.relays} asked")
        echoed = 0
        first_channel = 0x4000 + random.randrange(0x100)
        for n, family in enumerate(variant.relays):
            echoed += await self._relay_both_ways(first_channel + n, peers[family])
        resp = await self.ask(stun.METHOD_REFRESH, lambda tid: lt)
        _expect(resp, "Refresh")
        if end_with_refresh_zero:
            zero = [(stun.ATTR_LIFETIME, stun.encode_u32(0))]
            if len(variant.relays) > 1:  # RFC 8656 8.2: drop the IPv6 relay, keep the IPv4 one
                resp = await self.ask(stun.METHOD_REFRESH, lambda tid: [*zero, *ASK_IPV6])
                _expect(resp, "Refresh(0, IPv6)")
            resp = await self.ask(stun.METHOD_REFRESH, lambda tid: zero)
            _expect(resp, "Refresh(0)")
        return echoed

    async def _relay_both_ways(self, channel: int, peer: tuple[str, int]) -> int:
        """A channel and a permission for `peer`, four ChannelData and a Send indication echoed
        back; returns how many came back."""
        resp = await self.ask(
            stun.METHOD_CHANNEL_BIND,
            lambda tid: [
                (stun.ATTR_CHANNEL_NUMBER, stun.encode_channel_number(channel)),
                _peer_attr(peer, tid),
            ],
        )
        _expect(resp, "ChannelBind")
        resp = await self.ask(stun.METHOD_CREATE_PERMISSION, lambda tid: [_peer_attr(peer, tid)])
        _expect(resp, "CreatePermission")
        echoed = 0
        for i in range(4):
            payload = f"soak {i}".encode() + os.urandom(100)
            self.send(stun.encode_channel_data(channel, payload, pad=self.stream))
            if await self._echo(payload):
                echoed += 1
        tid = os.urandom(12)
        payload = b"send indication" + os.urandom(60)
        self.send(
            stun.encode_message(
                stun.METHOD_SEND,
                stun.CLASS_INDICATION,
                tid,
                [_peer_attr(peer, tid), (stun.ATTR_DATA, payload)],
            )
        )
        if await self._echo(payload):  # the echo comes back on the channel
            echoed += 1
        return echoed

    async def _echo(self, payload: bytes) -> bool:
        deadline = time.monotonic() + TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(self.inbox.get(), left)
            except TimeoutError:
                return False
            if payload in frame:
                return True
        return False


def _expect(msg: stun.Message, what: str) -> None:
    if msg.cls != stun.CLASS_SUCCESS:
        code = stun.decode_error_code(msg.get(stun.ATTR_ERROR_CODE) or b"\0\0\0\0")
        raise RuntimeError(f"{what}: {code}")


class _UdpProto(asyncio.DatagramProtocol):
    def __init__(self, session: _Session) -> None:
        self.session = session

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.session.inbox.put_nowait(data)


class _TcpProto(asyncio.Protocol):
    def __init__(self, session: _Session) -> None:
        self.session = session
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            size = stun.stream_frame_length(self.buf)
            if size is None or len(self.buf) < size:
                return
            self.session.inbox.put_nowait(bytes(self.buf[:size]))
            del self.buf[:size]


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def one_session(
    servers: dict[int, tuple[str, int]],
    peers: dict[int, tuple[str, int]],
    variant: Variant,
    kind: str,
    lt: int,
) -> int:
    loop = asyncio.get_running_loop()
    session = _Session()
    server = servers[IPV6 if ":" in variant.client else IPV4]
    if kind == "tcp":
        session.stream = True
        transport, _ = await loop.create_connection(
            lambda: _TcpProto(session), server[0], server[1]
        )
        session.send = transport.write
        try:
            return await session.run(variant, peers, lt, end_with_refresh_zero=False)
        finally:
            transport.close()  # the allocation goes with the connection
    source = (variant.client or f"127.0.0.{random.randrange(2, 250)}", 0)
    dgram, _ = await loop.create_datagram_endpoint(
        lambda: _UdpProto(session), local_addr=source, remote_addr=server
    )
    session.send = dgram.sendto
    try:
        return await session.run(variant, peers, lt, end_with_refresh_zero=kind == "udp-delete")
    finally:
        if kind == "udp-expire":
            # Silent, but the port stays ours until the allocation expires: a new client that
            # the kernel gave this port would get a correct 437 for its 5-tuple (more likely on
            # ::1, the one IPv6 loopback address) and count as failed.
            loop.call_later(lt + 2, dgram.close)
        else:
            dgram.close()


async def client_main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    echoes, peers = [], {}
    for family, host in ((IPV4, "127.0.0.1"), (IPV6, "::1")):
        echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=(host, 0))
        echoes.append(echo)
        peers[family] = echo.get_extra_info("sockname")[:2]
    servers = {IPV4: ("127.0.0.1", args.port), IPV6: ("::1", args.port6)}
    stats = {"sessions": 0, "ok": 0, "failed": 0, "echoed": 0, "echo_lost": 0}
    by_variant = {v.name: {"sessions": 0, "ok": 0, "failed": 0, "echoed": 0} for v in VARIANTS}
    lost_by_kind: dict[str, int] = {}
    errors: dict[str, int] = {}
    kinds = ("udp-delete", "udp-expire", "tcp")
    tasks: set[asyncio.Task[None]] = set()

    async def run(variant: Variant, kind: str) -> None:
        mine = by_variant[variant.name]
        mine["sessions"] += 1
        try:
            echoed = await one_session(servers, peers, variant, kind, args.lifetime)
            expected = ECHOES * len(variant.relays)
            stats["echoed"] += echoed
            mine["echoed"] += echoed
            stats["echo_lost"] += expected - echoed
            if echoed < expected:
                label = f"{variant.name}/{kind}"
                lost_by_kind[label] = lost_by_kind.get(label, 0) + expected - echoed
            stats["ok"] += 1
            mine["ok"] += 1
        except (OSError, RuntimeError, TimeoutError, stun.StunError) as exc:
            stats["failed"] += 1
            mine["failed"] += 1
            error = f"{variant.name}/{kind}: {exc}"[:100]
            errors[error] = errors.get(error, 0) + 1

    end = time.monotonic() + args.seconds
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    i = 0
    while time.monotonic() < end:
        if len(tasks) < 2000:  # bounded: a stalled server must not grow this without end
            # every (variant, ending) pair once in each run of 12 sessions
            variant = VARIANTS[(i // len(kinds)) % len(VARIANTS)]
            task = asyncio.create_task(run(variant, kinds[i % len(kinds)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stats["sessions"] += 1
            i += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    for echo in echoes:
        echo.close()
    report = {"clients": stats, "by_variant": by_variant, "echo_lost": lost_by_kind}
    print(json.dumps({**report, "errors": errors}), flush=True)


# -- server and report (parent process) ------------------------------------------------------


def soak_config(port: int, address: str, additional: str, low: int, high: int) -> dict[str, Any]:
    """TURN-UDP and TURN-TCP on `address`:`port`, relaying from `address` (and `additional`,
    the other family's, when given) in [low, high], to echo peers on either loopback."""
    extra = {"additional_address": additional} if additional else {}
    return {
        "version": "v1",
        "admin": {"name": "soak", "metrics_endpoint": "", "healthcheck_endpoint": ""},
        "auth": {
            "type": "static",
            "realm": REALM,
            "credentials": {"username": USER, "password": PASSWORD},
        },
        "listeners": [
            {
                "name": f"{proto.lower()}-listener",
                "protocol": f"TURN-{proto}",
                "address": address,
                **extra,
                "port": port,
                "min_relay_port": low,
                "max_relay_port": high,
                "routes": ["peers"],
            }
            for proto in ("UDP", "TCP")
        ],
        "clusters": [{"name": "peers", "endpoints": ["127.0.0.1", "::1"]}],
    }


async def server_main(args: argparse.Namespace) -> int:
    import stunner_dp.turn.server as turn_server
    from stunner_dp.net.runtime import Server

    turn_server.DEFAULT_LIFETIME = args.min_lifetime  # test hook: see the module docstring
    low, high = args.relay_low, args.relay_high
    middle = (low + high) // 2  # the two servers' relay windows must not overlap
    port, port6 = free_port("127.0.0.1"), free_port("::1")
    # One server per loopback family (a Server binds all its listeners on one host, and the
    # wildcard would leave loopback); the IPv4 one relays from ::1 too.
    config4 = soak_config(port, "127.0.0.1", "::1", low, middle)
    config6 = soak_config(port6, "::1", "", middle + 1, high)
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def sample(label: str, *servers: Server) -> dict[str, Any]:
        turns = [srv.turn for srv in servers if srv.turn is not None]
        ports = ports_in_use(low, high)
        row: dict[str, Any] = {
            "at": label,
            "t": round(time.monotonic() - t0, 1),
            "rss_kib": rss_kib(),
            "fds": open_fds(),
            "allocations": sum(srv.allocation_count for srv in servers),
            "relay_ports": sum(ports.values()),
            "relay_ports_ipv6": ports["udp6"] + ports["tcp6"],
            "rate_limited": sum(turn.rate_limited for turn in turns),
            "auth_failures": sum(turn.auth_failures for turn in turns),
        }
        rows.append(row)
        if not args.json:
            print(
                f"{row['at']:>8} t={row['t']:7.1f}s rss={row['rss_kib'] / 1024:7.1f} MiB "
                f"fds={row['fds']:5d} allocations={row['allocations']:5d} "
                f"relay_ports={row['relay_ports']:5d} (ipv6 {row['relay_ports_ipv6']:5d})",
                flush=True,
            )
        return row

    async with (
        Server(config4, bind_host="127.0.0.1") as srv4,
        Server(config6, bind_host="::1") as srv6,
    ):
        broken = {**srv4.failed_listeners, **srv6.failed_listeners}
        if broken:
            print(f"soak: listeners failed: {broken}", file=sys.stderr)
            return 2
        both = (srv4, srv6)
        sample("start", *both)
        seconds = args.minutes * 60
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "--client",
            "--port",
            str(port),
            "--port6",
            str(port6),
            "--seconds",
            str(seconds),
            "--rate",
            str(args.rate),
            "--lifetime",
            str(args.min_lifetime),
            stdout=subprocess.PIPE,
        )
        minute, next_mark = 0, t0 + 60
        try:
            while client.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.wait(), max(0.0, next_mark - time.monotonic()))
                if time.monotonic() >= next_mark:
                    minute += 1
                    next_mark += 60
                    sample(f"min {minute}", *both)
        finally:
            if client.returncode is None:
                client.kill()
                await client.wait()
        out = await client.stdout.read() if client.stdout else b""
        churn_end = sample("churned", *both)
        # let the abandoned allocations expire (lifetime + a tick or two), bounded
        deadline = time.monotonic() + args.min_lifetime + 15
        while time.monotonic() < deadline and (
            srv4.allocation_count or srv6.allocation_count or relay_ports_in_use(low, high)
        ):
            await asyncio.sleep(0.5)
        end = sample("end", *both)
    clients = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    sessions = int(clients.get("clients", {}).get("sessions", 0))
    failed = int(clients.get("clients", {}).get("failed", sessions))
    first = next((r for r in rows if r["at"] == "min 1"), rows[0])
    growth = (end["rss_kib"] - first["rss_kib"]) / first["rss_kib"]
    peak = max(r["allocations"] for r in rows)
    by_variant = clients.get("by_variant", {})
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "samples": rows,
        "clients": clients.get("clients", {}),
        "by_variant": by_variant,
        "echo_lost_by_kind": clients.get("echo_lost", {}),
        "errors": clients.get("errors", {}),
        "peak_allocations_sampled": peak,
        "peak_relay_ports_ipv6_sampled": max(r["relay_ports_ipv6"] for r in rows),
        "allocations_at_churn_end": churn_end["allocations"],
        "rss_growth_min1_to_end": round(growth, 4),
        "ok": (
            end["allocations"] == 0
            and end["relay_ports"] == 0
            and growth < args.max_rss_growth
            and sessions > 0
            and failed <= sessions * args.max_failed
            and len(by_variant) == len(VARIANTS)
            and all(v["ok"] > 0 for v in by_variant.values())
        ),
    }
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=1))
    return 0 if summary["ok"] else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=20.0, help="new sessions per second")
    p.add_argument("--min-lifetime", type=int, default=10, help="server's lifetime floor, s")
    p.add_argument("--relay-low", type=int, default=31000)
    p.add_argument("--relay-high", type=int, default=31999)
    p.add_argument("--max-rss-growth", type=float, default=0.10)
    p.add_argument(
        "--max-failed", type=float, default=0.01, help="share of sessions allowed to fail"
    )
    p.add_argument("--json", action="store_true", help="one JSON summary line")
    p.add_argument(
        "--log", default="all:WARNING", help="server log levels (all:INFO: every allocation)"
    )
    # child process mode
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port6", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--lifetime", type=int, default=10, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        uvloop.run(client_main(args))
        return 0
    from stunner_dp.observe.logs import configure_logging

    configure_logging(args.log)
    return uvloop.run(server_main(args))


if __name__ == "__main__":
    sys.exit(main())
