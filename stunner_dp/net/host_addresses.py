"""The host's own IP addresses, on every interface of this network namespace (a second NIC, a
docker bridge, the pod IP): no config names them, yet a datagram sent there reaches our
sockets, so the state machine must count them as ours (`TurnServer.add_own_addresses`).

Read without dependencies: IPv6 from /proc/net/if_inet6, IPv4 with the SIOCGIFCONF ioctl.
Never raises: what cannot be read is left out (loopback and the configured addresses are
ours whatever this finds).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import ipaddress
import socket
import struct

__all__ = ["host_addresses"]

SIOCGIFCONF = 0x8912
_IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: 16-byte name, 24-byte union
_MAX_INTERFACES = 4096


def _ipv6() -> list[str]:
    found: list[str] = []
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as lines:
        for line in lines:
            fields = line.split()
            if fields and len(fields[0]) == 32:
                with contextlib.suppress(ValueError):
                    found.append(str(ipaddress.IPv6Address(int(fields[0], 16))))
    return found


def _ipv4() -> list[str]:
    found: list[str] = []
    size = _MAX_INTERFACES * _IFREQ_SIZE
    buffer = array.array("B", bytes(size))
    address, _ = buffer.buffer_info()
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("iL", size, address)  # struct ifconf: length, buffer
        length = struct.unpack("iL", fcntl.ioctl(sock.fileno(), SIOCGIFCONF, request))[0]
        raw = buffer.tobytes()[:length]
        for offset in range(0, len(raw) - _IFREQ_SIZE + 1, _IFREQ_SIZE):
            # ifr_addr: a sockaddr_in (family, port, 4-byte address) after the name
            family = struct.unpack_from("H", raw, offset + 16)[0]
            if family == socket.AF_INET:
                found.append(socket.inet_ntoa(raw[offset + 20 : offset + 24]))
    return found


def host_addresses() -> tuple[str, ...]:
    """Every IPv4 and IPv6 address of this host's interfaces (in this network namespace)."""
    return tuple(dict.fromkeys([*_ipv4(), *_ipv6()]))
