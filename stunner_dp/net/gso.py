"""UDP generic segmentation offload (Linux >= 4.18): many equal-sized datagrams to one
destination handed to the kernel in one `sendmsg`, which is then split into datagrams below the
socket layer. On loopback this cuts the sender's CPU per datagram from about 4.2 µs to 2.2 µs
for batches of 4 and 0.9 µs for 16 (see README "Performance")."""

from __future__ import annotations

import errno
import socket
import struct

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS
MAX_BYTES = 65000  # one GSO send is one IP datagram before segmentation: stay under 64 KiB

MAX_SEGMENT = 1400  # larger frames go alone: a segment must fit the path MTU to the client
# what sendmsg says when the device cannot segment at all (no checksum offload): stop batching
UNSUPPORTED_ERRNOS = frozenset({errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT})

_segment_size = struct.Struct("=H").pack


def gso_supported() -> bool:
    """Whether this kernel accepts UDP_SEGMENT (checked on a socket that sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(SOL_UDP, UDP_SEGMENT, 1200)
    except OSError:
        return False
    return True


def segment_option(size: int) -> list[tuple[int, int, bytes]]:
    """The ancillary data that makes one sendmsg carry datagrams of `size` bytes each."""
    return [(SOL_UDP, UDP_SEGMENT, _segment_size(size))]
