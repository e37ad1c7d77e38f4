"""Fixtures of tests/tls (defined in tls_helpers, which the tests import too)."""

from __future__ import annotations

from helpers.tls_helpers import cert, turn_peer

__all__ = ["cert", "turn_peer"]
