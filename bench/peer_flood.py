"""Peer flood: what one CreatePermission with thousands of XOR-PEER-ADDRESS costs everyone else.

A server (in a process of its own, on uvloop, 127.0.0.1) routes to one cluster of `--rules`
endpoints (distinct /32s in 10.0.0.0/8). An attacker allocates with valid credentials and sends
one CreatePermission carrying `--peers` XOR-PEER-ADDRESS, every one of them allowed by the
cluster (the worst case: a denied peer would end the judging early). Meanwhile a bystander
sends Binding requests one after the other and records each round trip.

Reported: the worst and median Binding round trip of the bystander while the big request is in
the server, and how long the big request took: from sending it to the answer of a Binding the
attacker sends right behind it on the same socket (the server handles one socket's datagrams in
order, so this holds whether or not the big request gets an answer of its own), and that answer,
if any.

    .venv/bin/python bench/peer_flood.py                      # 10,000 rules, 4,000 peers
    .venv/bin/python bench/peer_flood.py --also-small          # and again with 2 rules
    .venv/bin/python bench/peer_flood.py --peers 120 --cap 0   # peers judged, no cap
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

try:
    from stunner_dp import stun
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from stunner_dp import stun

from stunner_dp.turn.auth import long_term_key

USER, PASSWORD = "user", "pass"
BASE = int(IPv4Address("10.0.0.1"))


def endpoint_ip(i: int) -> str:
    return str(IPv4Address(BASE + 4 * i))  # spaced out, so no two share a /31


def serve(rules: int, cap: int | None, ready: Any, stop: Any) -> None:
    """The server process: start, say where it listens, run until told to stop."""
    import uvloop

    from stunner_dp.testing import start_turn_server

    async def main() -> None:
        endpoints = [endpoint_ip(i) for i in range(rules)]
        admin: dict[str, Any] = {"name": "peer-flood", "healthcheck_endpoint": ""}
        if cap is not None:
            admin["max_permissions_per_allocation"] = cap
        async with start_turn_server(
            protocols=("TURN-UDP",),
            username=USER,
            password=PASSWORD,
            endpoints=endpoints,
            admin=admin,
        ) as handle:
            ready.send((handle.host, handle.port))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, stop.recv)

    uvloop.run(main())


def transact(sock: socket.socket, data: bytes, tid: bytes, timeout: float) -> stun.Message | None:
    """Send once and wait for the answer with this transaction id (no retransmission)."""
    sock.send(data)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            reply = sock.recv(65536)
        except TimeoutError:
            return None
        try:
            msg = stun.parse_message(reply)
        except stun.StunError:
            continue
        if msg.transaction_id == tid:
            return msg
    return None


def code_of(msg: stun.Message | None) -> str:
    if msg is None:
        return "no answer"
    if msg.cls == stun.CLASS_SUCCESS:
        return "success"
    raw = msg.get(stun.ATTR_ERROR_CODE)
    return str(stun.decode_error_code(raw)[0]) if raw else "error"


def binding(sock: socket.socket, timeout: float) -> stun.Message | None:
    tid = os.urandom(12)
    return transact(
        sock, stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, tid), tid, timeout
    )


class Attacker:
    def __init__(self, server: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(server)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.key = b""
        self.auth: list[tuple[int, bytes]] = []

    def allocate(self) -> None:
        transport = [
            (stun.ATTR_REQUESTED_TRANSPORT, stun.encode_requested_transport(stun.TRANSPORT_UDP))
        ]
        tid = os.urandom(12)
        challenge = stun.encode_message(stun.METHOD_ALLOCATE, stun.CLASS_REQUEST, tid, transport)
        resp = transact(self.sock, challenge, tid, 5.0)
        assert resp is not None, "no answer to the Allocate challenge"
        realm = stun.decode_text(resp.get(stun.ATTR_REALM) or b"")
        nonce = stun.decode_text(resp.get(stun.ATTR_NONCE) or b"")
        self.key = long_term_key(USER, realm, PASSWORD)
        self.auth = [
            (stun.ATTR_USERNAME, stun.encode_text(USER)),
            (stun.ATTR_REALM, stun.encode_text(realm)),
            (stun.ATTR_NONCE, stun.encode_text(nonce)),
        ]
        tid = os.urandom(12)
        signed = self.signed(stun.METHOD_ALLOCATE, tid, transport)
        resp = transact(self.sock, signed, tid, 5.0)
        assert resp is not None and resp.cls == stun.CLASS_SUCCESS, code_of(resp)

    def signed(self, method: int, tid: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
        return stun.encode_message(
            method, stun.CLASS_REQUEST, tid, attrs + self.auth, integrity_key=self.key
        )

    def flood(self, rules: int, peers: int, timeout: float) -> tuple[float, str, int]:
        """(seconds until the server was past the big request, its answer, its size)."""
        tid = os.urandom(12)
        attrs = [
            (stun.ATTR_XOR_PEER_ADDRESS, stun.encode_xor_address((endpoint_ip(i % rules), 9), tid))
            for i in range(peers)
        ]
        big = self.signed(stun.METHOD_CREATE_PERMISSION, tid, attrs)
        behind_tid = os.urandom(12)
        behind = stun.encode_message(stun.METHOD_BINDING, stun.CLASS_REQUEST, behind_tid)
        answer: stun.Message | None = None
        start = time.perf_counter()
        self.sock.send(big)
        self.sock.send(behind)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                msg = stun.parse_message(self.sock.recv(65536))
            except (TimeoutError, stun.StunError):
                break
            if msg.transaction_id == tid:
                answer = msg
            elif msg.transaction_id == behind_tid:
                return time.perf_counter() - start, code_of(answer), len(big)
        return float("inf"), code_of(answer), len(big)


def bystander(server: tuple[str, int], stop: threading.Event, rtts: list[float]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(server)
    with sock:
        while not stop.is_set():
            start = time.perf_counter()
            if binding(sock, 120.0) is None:
                rtts.append(float("inf"))
                return
            rtts.append(time.perf_counter() - start)
            time.sleep(0.002)


def run(rules: int, peers: int, cap: int | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready_r, ready_w = ctx.Pipe(duplex=False)
    stop_r, stop_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=serve, args=(rules, cap, ready_w, stop_r), daemon=True)
    proc.start()
    try:
        if not ready_r.poll(60):
            raise RuntimeError("the server did not start")
        server = ready_r.recv()
        attacker = Attacker(server)
        attacker.allocate()
        warm: list[float] = []
        idle_stop = threading.Event()
        idle = threading.Thread(target=bystander, args=(server, idle_stop, warm))
        idle.start()
        time.sleep(0.3)
        idle_stop.set()
        idle.join(35)
        rtts: list[float] = []
        stop = threading.Event()
        pinger = threading.Thread(target=bystander, args=(server, stop, rtts))
        pinger.start()
        time.sleep(0.2)
        took, answer, size = attacker.flood(rules, peers, 120.0)
        time.sleep(0.2)
        stop.set()
        pinger.join(125)
        return {
            "rules": rules,
            "peers": peers,
            "permission_cap": "default" if cap is None else cap,
            "request_bytes": size,
            "big_request_s": round(took, 4),
            "big_request_answer": answer,
            "binding_rtt_idle_median_ms": round(statistics.median(warm) * 1e3, 3),
            "binding_rtt_worst_ms": round(max(rtts) * 1e3, 3),
            "binding_rtt_median_ms": round(statistics.median(rtts) * 1e3, 3),
            "bindings": len(rtts),
        }
    finally:
        stop_w.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=10_000, help="cluster endpoints")
    parser.add_argument("--peers", type=int, default=4_000, help="XOR-PEER-ADDRESS in one request")
    parser.add_argument(
        "--cap", type=int, default=None, help="max_permissions_per_allocation (0: unlimited)"
    )
    parser.add_argument("--also-small", action="store_true", help="also run with 2 rules")
    args = parser.parse_args()
    for rules in (args.rules, 2) if args.also_small else (args.rules,):
        print(json.dumps(run(rules, args.peers, args.cap)), flush=True)


if __name__ == "__main__":
    main()
