"""Kernel fast path for TURN ChannelData (issue 10): an eBPF TC program and its control plane.

``OffloadEngine.load()`` attaches ``turn_offload.bpf.o`` (package data, built by
``scripts/build-bpf``); ``add_channel()`` / ``remove()`` install and delete channel bindings;
``counters()`` and ``pass_reasons()`` read what the kernel did. See ``engine.py``.
"""

from .engine import (
    PASS_REASONS,
    ChannelHandle,
    Counters,
    OffloadEngine,
    offload_unavailable_reason,
)
from .libbpf import OffloadError

__all__ = [
    "PASS_REASONS",
    "ChannelHandle",
    "Counters",
    "OffloadEngine",
    "OffloadError",
    "offload_unavailable_reason",
]
