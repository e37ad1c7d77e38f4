"""diff_configs: what a reconcile must do to go from one config to the next."""

from __future__ import annotations

from dataclasses import dataclass

from .model import ListenerConfig, StunnerConfig

__all__ = ["ConfigDiff", "diff_configs"]


@dataclass(frozen=True)
class ConfigDiff:
    listeners_to_start: tuple[str, ...] = ()  # new names, in the new config's order
    listeners_to_stop: tuple[str, ...] = ()  # names gone from the new config
    # sockets must be rebuilt: protocol, address, port, cert/key changed, or the realm (all)
    listeners_to_restart: tuple[str, ...] = ()
    # everything else (routes, relay range, public address) applies without a restart
    listeners_changed_live: tuple[str, ...] = ()
    auth_changed: bool = False
    clusters_changed: bool = False
    admin_changed: bool = False

    @property
    def empty(self) -> bool:
        return self == ConfigDiff()


def _socket_key(lis: ListenerConfig) -> tuple[object, ...]:
    # NAT discovery's extra sockets are bound with the listener's
    return (lis.protocol, lis.address, lis.port, lis.cert, lis.key, lis.nat_discovery)


def diff_configs(old: StunnerConfig, new: StunnerConfig) -> ConfigDiff:
    old_by_name = {lis.name: lis for lis in old.listeners}
    new_names = {lis.name for lis in new.listeners}
    # the realm is baked into every listener's TURN server (nonces, keys), as in stunnerd
    realm_changed = old.auth.realm != new.auth.realm
    start, restart, live = [], [], []
    for lis in new.listeners:
        before = old_by_name.get(lis.name)
        if before is None:
            start.append(lis.name)
        elif realm_changed or _socket_key(before) != _socket_key(lis):
            restart.append(lis.name)
        elif before != lis:
            live.append(lis.name)
    return ConfigDiff(
        listeners_to_start=tuple(start),
        listeners_to_stop=tuple(n for n in old_by_name if n not in new_names),
        listeners_to_restart=tuple(restart),
        listeners_changed_live=tuple(live),
        auth_changed=old.auth != new.auth,
        clusters_changed=old.clusters != new.clusters,
        admin_changed=old.admin != new.admin,
    )
