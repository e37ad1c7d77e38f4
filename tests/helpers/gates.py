"""The gates of the fast-path tests: where the kernel offload or the compiled forwarder cannot
run here the test skips with the reason; in CI (CI=true) that is a failure, not a skip."""

from __future__ import annotations

import os

import pytest

from stunner_dp.forwarder import forwarder_unavailable_reason
from stunner_dp.offload import offload_unavailable_reason

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require(reason: str | None, in_ci: str, here: str) -> None:
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"{in_ci}: {reason}")
    pytest.skip(f"{here}: {reason}")


def require_offload() -> None:
    """Skip where the kernel offload cannot load (needs root: CAP_BPF + CAP_NET_ADMIN)."""
    _require(
        offload_unavailable_reason(),
        "offload must be testable in CI",
        "kernel offload unavailable here",
    )


def require_forwarder() -> None:
    """Skip where the compiled forwarder's shared object cannot load."""
    _require(
        forwarder_unavailable_reason(),
        "the compiled forwarder must be testable in CI",
        "compiled forwarder unavailable here",
    )
