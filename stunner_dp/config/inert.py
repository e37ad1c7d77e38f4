"""Fields of STUNner's v1 schema that stunner-dp accepts but does not act on (yet).

stunnerd accepts them, so a config that sets them must load here too; silently dropping them
would hide that they do nothing. Each one found in a config becomes a warning that says so
(`StunnerConfig.notes`, logged when the config is applied).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import StunnerConfig

__all__ = ["NOT_READ_YET", "inert_notes"]

# Config fields whose reader does not exist yet. The kernel offload (stunner_dp/offload) is
# being wired to the config: whoever makes it read a field removes it here, and the warning goes.
NOT_READ_YET: frozenset[str] = frozenset()  # the kernel offload reads both admin fields

_OFFLOAD_PATH = "media takes the user-space path"


def inert_notes(raw: Mapping[str, Any], config: StunnerConfig) -> tuple[str, ...]:
    """One warning per field set in `raw` (the expanded config) that has no effect here."""
    notes: list[str] = []
    admin = raw.get("admin")
    if isinstance(admin, Mapping) and admin.get("license_config") is not None:
        notes.append(
            "admin.license_config has no effect here: stunner-dp has no licensed tiers "
            "(every feature is on without a key)"
        )
    engine = config.admin.offload_engine
    if engine != "None" and "admin.offload_engine" in NOT_READ_YET:
        notes.append(f"admin.offload_engine {engine} has no effect yet: {_OFFLOAD_PATH}")
    if config.admin.offload_interfaces and "admin.offload_interfaces" in NOT_READ_YET:
        names = ",".join(config.admin.offload_interfaces)
        notes.append(f"admin.offload_interfaces [{names}] has no effect yet: {_OFFLOAD_PATH}")
    for i, cluster in enumerate(config.clusters):
        if cluster.protocol == "TCP":
            notes.append(
                f"clusters[{i}].protocol TCP has no effect here: relays are UDP "
                "(RFC 6062 TCP relays are not implemented, as in stunnerd)"
            )
    return tuple(notes)
