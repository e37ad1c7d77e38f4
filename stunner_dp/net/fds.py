"""The process's open-file budget: what relay sockets and stream connections share."""

from __future__ import annotations

import os
import resource

__all__ = ["FD_RESERVE", "fd_soft_limit", "open_fds"]

FD_RESERVE = 64  # descriptors kept back for logs, metrics, health checks, DNS and accepts


def fd_soft_limit() -> int | None:
    """RLIMIT_NOFILE's soft limit, None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def open_fds() -> int:
    """Descriptors open now (0 when /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
