"""Fields of STUNner's v1 schema that stunner-dp accepts but does not act on.

stunnerd accepts them, so a config that sets them must load here too; silently dropping them
would hide that they do nothing. Each one found in a config becomes a warning that says so
(`StunnerConfig.notes`, logged when the config is applied).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import StunnerConfig

__all__ = ["inert_notes"]


def inert_notes(raw: Mapping[str, Any], config: StunnerConfig) -> tuple[str, ...]:
    """One warning per field set in `raw` (the expanded config) that has no effect here."""
    notes: list[str] = []
    admin = raw.get("admin")
    if isinstance(admin, Mapping) and admin.get("license_config") is not None:
        notes.append(
            "admin.license_config has no effect here: stunner-dp has no licensed tiers "
            "(every feature is on without a key)"
        )
    for i, cluster in enumerate(config.clusters):
        if cluster.protocol == "TCP":
            notes.append(
                f"clusters[{i}].protocol TCP has no effect here: a cluster's rules hold for "
                "UDP and TCP peers alike; a TCP relay (RFC 6062) is what a TURN-TCP/TLS client "
                "asks for with REQUESTED-TRANSPORT TCP"
            )
    return tuple(notes)
