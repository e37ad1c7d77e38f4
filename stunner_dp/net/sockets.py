"""Listener sockets, bound the same way by a `Server` and by the supervisor that holds its
workers' sockets (stunner_dp.daemon.supervisor). Loads no listener, no state machine."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from stunner_dp.config import ListenerConfig

__all__ = [
    "SocketProvider",
    "bind_listener",
    "bind_tcp",
    "bind_udp",
    "dual_stack",
    "listen_host",
    "socket_kind",
]

# A listener's socket made elsewhere (a worker gets its listener sockets from the supervisor):
# a bound socket to adopt, None to bind one; OSError when it could not be made.
SocketProvider = Callable[[ListenerConfig], "socket.socket | None"]

TCP_BACKLOG = 100  # asyncio's default; the worker's create_server sets its own again


def listen_host(listener: ListenerConfig, bind_host: str | None) -> str:
    """Where `listener` binds: `bind_host`, else the wildcard of its address family. A NAT
    discovery listener binds its address: RFC 5780 answers must leave from the addresses that
    RESPONSE-ORIGIN and OTHER-ADDRESS name."""
    if listener.nat_discovery is not None:
        return listener.address
    return bind_host or ("::" if ":" in listener.address else "0.0.0.0")


def dual_stack(listener: ListenerConfig, host: str) -> bool:
    """Whether `listener` binds one socket for both families: `address: "::"` on the IPv6
    wildcard (IPv4 clients arrive as ::ffff:a.b.c.d). Any other IPv6 host stays IPv6 only."""
    if host != "::" or listener.nat_discovery is not None:
        return False
    try:
        return ipaddress.ip_address(listener.address) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def socket_kind(listener: ListenerConfig) -> str | None:
    """The socket a listener serves on: "udp" (TURN-UDP, DTLS), "tcp" (TURN-TCP, TLS), or None."""
    return {"udp": "udp", "dtls": "udp", "tcp": "tcp", "tls": "tcp"}.get(listener.transport)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_udp(host: str, port: int, *, reuse_port: bool, dual_stack: bool = False) -> socket.socket:
    af = _family(host)
    sock = socket.socket(af, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        # Room for bursts: media arrives in bursts and a dropped datagram is a lost frame.
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_tcp(host: str, port: int, *, reuse_port: bool, dual_stack: bool = False) -> socket.socket:
    """A listening TCP socket, as asyncio's create_server(reuse_address=True) makes one."""
    af = _family(host)
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if af == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind((host, port))
        sock.listen(TCP_BACKLOG)  # connections queue here while no worker accepts
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listener(
    listener: ListenerConfig, bind_host: str | None, *, reuse_port: bool
) -> socket.socket | None:
    """The socket `listener` serves on, bound; None for a protocol no listener serves."""
    kind = socket_kind(listener)
    if kind is None:
        return None
    bind = bind_udp if kind == "udp" else bind_tcp
    host = listen_host(listener, bind_host)
    return bind(host, listener.port, reuse_port=reuse_port, dual_stack=dual_stack(listener, host))
