"""parse_config: raw YAML/JSON data -> a validated StunnerConfig, stunnerd's defaults applied."""

from __future__ import annotations

import binascii
import dataclasses
import os
from collections.abc import Mapping
from ipaddress import ip_address, ip_network
from typing import Any

from ._fields import get_int, get_list, get_mapping, get_str, join
from .endpoints import parse_endpoint
from .env import expand_tree
from .errors import MISSING, ConfigError
from .inert import inert_notes
from .limits import MAX_CLUSTERS, MAX_ENDPOINTS, MAX_LISTENERS, check_count, check_shape
from .model import (
    DEFAULT_HEALTHCHECK_ENDPOINT,
    DEFAULT_REALM,
    AdminConfig,
    AuthConfig,
    ClusterConfig,
    ListenerConfig,
    NatDiscoveryConfig,
    StunnerConfig,
)

__all__ = ["AUTH_TYPES", "LISTENER_PROTOCOLS", "parse_config"]

LISTENER_PROTOCOLS = {
    alias: f"TURN-{proto}"
    for proto in ("UDP", "TCP", "TLS", "DTLS")
    for alias in (proto, f"TURN-{proto}")
}
AUTH_TYPES = {
    "static": "static",
    "plaintext": "static",
    "ephemeral": "ephemeral",
    "longterm": "ephemeral",
    "timewindowed": "ephemeral",
    "none": "none",  # STUNner's STUN server mode: Binding only, every TURN request refused
}
# STUNner's spellings (pkg/apis/v1 NewOffloadEngine), matched case-insensitively
OFFLOAD_ENGINES = {name.lower(): name for name in ("None", "XDP", "TC", "Auto")}
_IFNAME_MAX = 15  # IFNAMSIZ - 1
CLUSTER_TYPES = ("STATIC", "STRICT_DNS")
CLUSTER_PROTOCOLS = ("UDP", "TCP")

_PORT_RULE = "a port is 1-65535"
REST_HMACS = ("sha1", "sha256")
_MAX_PREVIOUS_SECRETS = 8
_COUNT_MAX = 2**31 - 1
_IDLE_MAX = 3600  # admin.connection_idle_timeout, seconds
_BANDWIDTH_MIN = 1000  # admin.user_bandwidth, bytes/s, when set
_BURST_MIN = 1500  # admin.user_bandwidth_burst, bytes, when set: one packet fits
# v1alpha1 relay range defaults, kept for converted files so they behave as they used to
_V1ALPHA1_RELAY = (32768, 65535)


def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> StunnerConfig:
    """Validate a parsed YAML/JSON config; raises ConfigError naming the first bad field."""
    if not isinstance(data, Mapping):
        raise ConfigError("config", data, "must be a mapping with version, admin, auth, ...")
    check_shape(data)  # before the recursive walks below
    raw = expand_tree(data, os.environ if env is None else env)
    version = raw.get("version", MISSING)
    if version == "v1alpha1":
        raw = _from_v1alpha1(raw)
    elif version != "v1":
        raise ConfigError("version", version, 'supported versions are "v1" and "v1alpha1"')

    listener_items = get_list(raw.get("listeners"), "listeners")
    cluster_items = get_list(raw.get("clusters"), "clusters")
    check_count("listeners", len(listener_items), MAX_LISTENERS, "listeners")
    check_count("clusters", len(cluster_items), MAX_CLUSTERS, "clusters")
    _check_endpoint_count(cluster_items)
    listeners = tuple(
        _listener(get_mapping(item, f"listeners[{i}]"), f"listeners[{i}]")
        for i, item in enumerate(listener_items)
    )
    clusters = tuple(
        _cluster(get_mapping(item, f"clusters[{i}]"), f"clusters[{i}]")
        for i, item in enumerate(cluster_items)
    )
    _check_unique([lis.name for lis in listeners], "listeners", "listener")
    _check_unique([c.name for c in clusters], "clusters", "cluster")
    _check_routes(listeners, clusters)
    config = StunnerConfig(
        version="v1",
        admin=_admin(get_mapping(raw.get("admin"), "admin")),
        auth=_auth(get_mapping(raw.get("auth"), "auth")),
        listeners=listeners,
        clusters=clusters,
    )
    return dataclasses.replace(config, notes=inert_notes(raw, config))


def _check_endpoint_count(clusters: list[Any]) -> None:
    """Before any endpoint is parsed: their total over all clusters is bounded."""
    total = 0
    for i, item in enumerate(clusters):
        endpoints = item.get("endpoints") if isinstance(item, Mapping) else None
        total += len(endpoints) if isinstance(endpoints, list) else 0
        check_count(f"clusters[{i}].endpoints", total, MAX_ENDPOINTS, "endpoints over all clusters")


def _from_v1alpha1(raw: Mapping[str, Any]) -> dict[str, Any]:
    # v1alpha1 differs from v1 only in auth type names (plaintext/longterm, accepted as aliases
    # anyway), bare UDP/TCP/TLS/DTLS protocol names (aliases too) and its relay port defaults
    out = dict(raw, version="v1")
    items = raw.get("listeners")
    if isinstance(items, list):
        converted: list[Any] = []
        for item in items:
            if isinstance(item, Mapping):
                item = dict(item)
                for key, default in zip(
                    ("min_relay_port", "max_relay_port"), _V1ALPHA1_RELAY, strict=True
                ):
                    if item.get(key) in (None, 0, ""):
                        item[key] = default
            converted.append(item)
        out["listeners"] = converted
    return out


def _admin(m: Mapping[str, Any]) -> AdminConfig:
    def count(key: str, default: int, meaning: str) -> int:
        rule = f"{meaning} must be 0 (unlimited) or a positive integer"
        return get_int(m, key, "admin", default, 0, _COUNT_MAX, rule)

    d = AdminConfig()
    offload_engine, offload_interfaces = _offload(m)
    return AdminConfig(
        name=get_str(m, "name", "admin") or d.name,
        loglevel=get_str(m, "loglevel", "admin") or d.loglevel,
        metrics_endpoint=get_str(m, "metrics_endpoint", "admin"),
        # absent: the default; an explicit "" disables the health server
        healthcheck_endpoint=get_str(
            m, "healthcheck_endpoint", "admin", DEFAULT_HEALTHCHECK_ENDPOINT
        ),
        user_quota=count("user_quota", d.user_quota, "the per-user allocation quota"),
        max_allocations=count("max_allocations", d.max_allocations, "the allocation cap"),
        max_permissions_per_allocation=count(
            "max_permissions_per_allocation",
            d.max_permissions_per_allocation,
            "the permission cap",
        ),
        max_channels_per_allocation=count(
            "max_channels_per_allocation", d.max_channels_per_allocation, "the channel cap"
        ),
        unauth_rate_per_ip=count(
            "unauth_rate_per_ip", d.unauth_rate_per_ip, "the unauthenticated answer rate per IP"
        ),
        auth_failures_per_user=count(
            "auth_failures_per_user", d.auth_failures_per_user, "the failed-login limit per user"
        ),
        **_connection_limits(m, d),
        **_user_bandwidth(m, d),
        offload_engine=offload_engine,
        offload_interfaces=offload_interfaces,
    )


def _connection_limits(m: Mapping[str, Any], d: AdminConfig) -> dict[str, int]:
    """admin.max_connections, max_connections_per_ip, connection_idle_timeout (extensions)."""

    def count(key: str, default: int, meaning: str) -> int:
        rule = f"{meaning} must be 0 (unlimited) or a positive integer"
        return get_int(m, key, "admin", default, 0, _COUNT_MAX, rule)

    idle_rule = (
        f"seconds a connection without an allocation may stay silent: 1-{_IDLE_MAX}, "
        "or 0 (never closed)"
    )
    return {
        "max_connections": count("max_connections", d.max_connections, "the connection cap"),
        "max_connections_per_ip": count(
            "max_connections_per_ip", d.max_connections_per_ip, "the connection cap per source IP"
        ),
        "connection_idle_timeout": get_int(
            m,
            "connection_idle_timeout",
            "admin",
            d.connection_idle_timeout,
            0,
            _IDLE_MAX,
            idle_rule,
        ),
    }


def _user_bandwidth(m: Mapping[str, Any], d: AdminConfig) -> dict[str, int]:
    """admin.user_bandwidth and user_bandwidth_burst (extensions), bytes/s and bytes."""
    rate = get_int(
        m,
        "user_bandwidth",
        "admin",
        d.user_bandwidth,
        0,
        _COUNT_MAX,
        "relayed bytes per second per user in each direction: 0 (no cap) or at least "
        f"{_BANDWIDTH_MIN} (e.g. 250000 for 2 Mbit/s)",
    )
    if 0 < rate < _BANDWIDTH_MIN:
        rule = f"0 (no cap) or at least {_BANDWIDTH_MIN} bytes per second (no media fits below)"
        raise ConfigError("admin.user_bandwidth", rate, rule)
    burst = get_int(
        m,
        "user_bandwidth_burst",
        "admin",
        d.user_bandwidth_burst,
        0,
        _COUNT_MAX,
        f"bytes a user may send at once: 0 (one second of user_bandwidth) or at least "
        f"{_BURST_MIN} (one packet)",
    )
    if 0 < burst < _BURST_MIN:
        rule = f"0 (one second of user_bandwidth) or at least {_BURST_MIN} bytes (one packet)"
        raise ConfigError("admin.user_bandwidth_burst", burst, rule)
    if burst and not rate:
        rule = "a burst does nothing without admin.user_bandwidth: set that, or remove this"
        raise ConfigError("admin.user_bandwidth_burst", burst, rule)
    return {"user_bandwidth": rate, "user_bandwidth_burst": burst}


def _offload(m: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """admin.offload_engine / offload_interfaces, and the shape of admin.license_config: all
    accepted as STUNner has them (see inert.py for what they do here)."""
    given = get_str(m, "offload_engine", "admin").strip()
    engine = OFFLOAD_ENGINES.get(given.lower() or "none")
    if engine is None:
        raise ConfigError("admin.offload_engine", given, "use None, TC, XDP or Auto")
    names = _strings(m, "offload_interfaces", "admin")
    for j, name in enumerate(names):
        if not name or len(name.encode()) > _IFNAME_MAX or "/" in name or " " in name:
            rule = f"an interface name (1-{_IFNAME_MAX} bytes, no '/' or spaces), e.g. eth0"
            raise ConfigError(f"admin.offload_interfaces[{j}]", name, rule)
    get_mapping(m.get("license_config"), "admin.license_config")
    return engine, tuple(sorted(names))


def _auth(m: Mapping[str, Any]) -> AuthConfig:
    given = get_str(m, "type", "auth").strip()
    atype = AUTH_TYPES.get(given.lower() or "static")
    if atype is None:
        allowed = (
            "use static (alias plaintext), ephemeral (aliases longterm, timewindowed) "
            "or none (STUN only)"
        )
        raise ConfigError("auth.type", given, allowed)
    creds = get_mapping(m.get("credentials"), "auth.credentials")
    base = "auth.credentials"
    auth = AuthConfig(
        type=atype,
        realm=get_str(m, "realm", "auth") or DEFAULT_REALM,
        username=get_str(creds, "username", base),
        password=get_str(creds, "password", base),
        secret=get_str(creds, "secret", base),
        previous_secrets=_previous_secrets(creds, base),
        rest_hmac=_rest_hmac(creds, base),
    )
    if any(ord(ch) < 0x20 for ch in auth.realm) or len(auth.realm) > 763:
        raise ConfigError("auth.realm", auth.realm, "a realm is printable text under 764 bytes")
    if atype == "static":
        for key in ("username", "password"):
            if not getattr(auth, key):
                raise ConfigError.missing(
                    f"{base}.{key}",
                    f"static auth needs a username and a password (set {base}.{key})",
                )
    elif atype == "ephemeral" and not auth.secret:
        raise ConfigError.missing(
            f"{base}.secret", f"ephemeral auth needs a shared secret (set {base}.secret)"
        )
    return auth


def _previous_secrets(creds: Mapping[str, Any], base: str) -> tuple[str, ...]:
    """auth.credentials.previous_secrets (extension): secrets still accepted, never issued."""
    path = f"{base}.previous_secrets"
    out: list[str] = []
    for j, item in enumerate(get_list(creds.get("previous_secrets"), path)):
        if not isinstance(item, str) or not item:
            rule = "each is a non-empty shared secret string (quote it in YAML)"
            raise ConfigError(f"{path}[{j}]", item, rule)
        out.append(item)
    if len(out) > _MAX_PREVIOUS_SECRETS:
        rule = f"at most {_MAX_PREVIOUS_SECRETS} (each costs a MAC per failed login)"
        raise ConfigError(path, len(out), rule)
    return tuple(out)


def _rest_hmac(creds: Mapping[str, Any], base: str) -> str:
    """auth.credentials.rest_hmac (extension): the TURN REST password's HMAC."""
    given = get_str(creds, "rest_hmac", base).strip().lower().replace("-", "")
    if given and given not in REST_HMACS:
        raise ConfigError(f"{base}.rest_hmac", given, "use sha1 (the default) or sha256")
    return given or "sha1"


def _public_relay_address(m: Mapping[str, Any], path: str, address: str) -> str:
    """listeners[].public_relay_address (extension): an IP of the relay address's family."""
    given = get_str(m, "public_relay_address", path).strip()
    if not given:
        return ""
    field = join(path, "public_relay_address")
    try:
        ip = ip_address(given)
    except ValueError:
        rule = "an IP address (the node's public IP), e.g. $STUNNER_PUBLIC_ADDR"
        raise ConfigError(field, given, rule) from None
    if ip.is_unspecified or ip.version != ip_address(address).version:
        rule = f"a specific IPv{ip_address(address).version} address, as the listener's address"
        raise ConfigError(field, given, rule)
    return str(ip)


def _additional_address(m: Mapping[str, Any], path: str, address: str) -> str:
    """listeners[].additional_address (extension): the relay address of the other IP family."""
    given = get_str(m, "additional_address", path).strip()
    if not given:
        return ""
    other = 6 if ip_address(address).version == 4 else 4
    rule = (
        f"an IPv{other} address, as `address` is IPv{10 - other}: the relay address of the "
        f"other family (e.g. the pod's IPv{other}, or {'::' if other == 6 else '0.0.0.0'} "
        "for the host's own)"
    )
    try:
        ip = ip_address(given)
    except ValueError:
        raise ConfigError(join(path, "additional_address"), given, rule) from None
    if ip.version != other:
        raise ConfigError(join(path, "additional_address"), given, rule)
    return str(ip)


def _proxy_protocol(
    m: Mapping[str, Any], path: str, transport: str
) -> tuple[bool, tuple[str, ...]]:
    """listeners[].proxy_protocol and proxy_protocol_trusted (extension, TCP/TLS only)."""
    field, trusted_field = join(path, "proxy_protocol"), join(path, "proxy_protocol_trusted")
    given = m.get("proxy_protocol")
    if isinstance(given, str) and given.strip().lower() in ("true", "false", ""):
        given = given.strip().lower() == "true"  # from an env-expanded ${VAR}
    if given is None:
        given = False
    if not isinstance(given, bool):
        raise ConfigError(field, given, "must be true or false")
    ranges = _strings(m, "proxy_protocol_trusted", path)
    if not given:
        if ranges:
            rule = "trusted PROXY sources do nothing without proxy_protocol: true; set it"
            raise ConfigError(trusted_field, list(ranges), rule)
        return False, ()
    if transport not in ("tcp", "tls"):
        rule = "PROXY protocol is for TURN-TCP and TURN-TLS listeners; remove it here"
        raise ConfigError(field, given, rule)
    if not ranges:
        rule = (
            "a PROXY listener needs the load balancer's source networks, e.g. "
            '["10.0.0.0/8"] (["0.0.0.0/0", "::/0"] trusts every source to name its client)'
        )
        raise ConfigError.missing(trusted_field, rule)
    out: list[str] = []
    for j, text in enumerate(ranges):
        try:
            out.append(str(ip_network(text, strict=False)))
        except ValueError:
            rule = "an IP address or CIDR of the load balancer, e.g. 10.0.0.0/8 or fd00::/8"
            raise ConfigError(f"{trusted_field}[{j}]", text, rule) from None
    return True, tuple(out)


def _nat_discovery(m: Mapping[str, Any], path: str, lis: ListenerConfig) -> NatDiscoveryConfig:
    """listeners[].nat_discovery (extension): RFC 5780's second address and port."""
    field = join(path, "nat_discovery")
    section = get_mapping(m.get("nat_discovery"), field)
    if lis.transport != "udp":
        rule = "NAT behaviour discovery (RFC 5780) is for TURN-UDP listeners; remove it here"
        raise ConfigError(field, dict(section), rule)
    primary = ip_address(lis.address)
    if primary.is_unspecified:
        rule = (
            "NAT discovery answers from the listener's own address, so `address` must be a "
            "specific IP (e.g. $STUNNER_ADDR), not the wildcard"
        )
        raise ConfigError(join(path, "address"), lis.address, rule)
    address_field = join(field, "alternate_address")
    given = get_str(section, "alternate_address", field).strip()
    rule = f"a second IPv{primary.version} address of this host, other than {lis.address}"
    if not given:
        raise ConfigError.missing(address_field, rule)
    try:
        alternate = ip_address(given)
    except ValueError:
        raise ConfigError(address_field, given, rule) from None
    if alternate.is_unspecified or alternate.version != primary.version or alternate == primary:
        raise ConfigError(address_field, given, rule)
    port_rule = f"a second port (1-65535), other than the listener's port {lis.port}"
    port = get_int(section, "alternate_port", field, 0, 1, 65535, port_rule)
    if port == 0:
        raise ConfigError.missing(join(field, "alternate_port"), port_rule)
    if port == lis.port:
        raise ConfigError(join(field, "alternate_port"), port, port_rule)
    return NatDiscoveryConfig(str(alternate), port)


def _listener(m: Mapping[str, Any], path: str) -> ListenerConfig:
    name = get_str(m, "name", path)
    if not name.strip():
        raise ConfigError(join(path, "name"), m.get("name", MISSING), "a listener needs a name")
    given = get_str(m, "protocol", path)
    protocol = LISTENER_PROTOCOLS.get(given.strip().upper() or "TURN-UDP")
    if protocol is None:
        allowed = "use TURN-UDP, TURN-TCP, TURN-TLS or TURN-DTLS (or UDP, TCP, TLS, DTLS)"
        raise ConfigError(join(path, "protocol"), given, allowed)

    address = get_str(m, "address", path).strip() or "0.0.0.0"
    try:
        address = str(ip_address(address))
    except ValueError:
        rule = "the relay address must be an IP address (e.g. $STUNNER_ADDR, the pod IP)"
        raise ConfigError(join(path, "address"), address, rule) from None

    def port(key: str, default: int) -> int:
        return get_int(m, key, path, default, 1, 65535, _PORT_RULE, zero_is_default=True)

    d = ListenerConfig(name="", protocol="")
    min_relay, max_relay = (
        port("min_relay_port", d.min_relay_port),
        port("max_relay_port", d.max_relay_port),
    )
    if min_relay > max_relay:
        rule = f"the relay port range needs min_relay_port <= max_relay_port ({max_relay})"
        raise ConfigError(join(path, "min_relay_port"), min_relay, rule)

    lis = ListenerConfig(
        name=name,
        protocol=protocol,
        address=address,
        port=port("port", d.port),
        public_address=get_str(m, "public_address", path).strip(),
        public_port=get_int(m, "public_port", path, 0, 0, 65535, "a port is 0-65535 (0: unset)"),
        public_relay_address=_public_relay_address(m, path, address),
        additional_address=_additional_address(m, path, address),
        min_relay_port=min_relay,
        max_relay_port=max_relay,
        cert=get_str(m, "cert", path).strip(),
        key=get_str(m, "key", path).strip(),
        routes=_strings(m, "routes", path),
    )
    proxy, trusted = _proxy_protocol(m, path, lis.transport)
    if proxy:
        lis = dataclasses.replace(lis, proxy_protocol=True, proxy_protocol_trusted=trusted)
    if m.get("nat_discovery") is not None:
        lis = dataclasses.replace(lis, nat_discovery=_nat_discovery(m, path, lis))
    if lis.transport in ("tls", "dtls"):
        for key in ("cert", "key"):
            _check_pem(getattr(lis, key), join(path, key), protocol)
    return lis


def _check_pem(value: str, path: str, protocol: str) -> None:
    if not value:
        rule = f"a {protocol} listener needs cert and key, each a base64-encoded PEM (set {path})"
        raise ConfigError.missing(path, rule)
    try:
        binascii.a2b_base64("".join(value.split()), strict_mode=True)
    except (binascii.Error, ValueError):
        rule = "must be base64-encoded PEM (e.g. `base64 -w0 cert.pem`)"
        raise ConfigError(path, value[:16] + "...", rule) from None


def _cluster(m: Mapping[str, Any], path: str) -> ClusterConfig:
    name = get_str(m, "name", path)
    if not name.strip():
        raise ConfigError(join(path, "name"), m.get("name", MISSING), "a cluster needs a name")
    ctype = get_str(m, "type", path).strip().upper() or "STATIC"
    if ctype not in CLUSTER_TYPES:
        raise ConfigError(join(path, "type"), m.get("type"), "use STATIC or STRICT_DNS")
    proto = get_str(m, "protocol", path).strip().upper() or "UDP"
    if proto not in CLUSTER_PROTOCOLS:
        raise ConfigError(join(path, "protocol"), m.get("protocol"), "use UDP or TCP")
    endpoints = _strings(m, "endpoints", path)
    for j, text in enumerate(endpoints):
        try:
            parse_endpoint(text, dns=ctype == "STRICT_DNS")
        except ValueError as exc:
            raise ConfigError(f"{path}.endpoints[{j}]", text, f"{ctype} endpoint {exc}") from None
    return ClusterConfig(name=name, type=ctype, protocol=proto, endpoints=endpoints)


def _strings(m: Mapping[str, Any], key: str, base: str) -> tuple[str, ...]:
    path = join(base, key)
    out: list[str] = []
    for j, item in enumerate(get_list(m.get(key), path)):
        if not isinstance(item, str):
            raise ConfigError(f"{path}[{j}]", item, "must be a string (quote it in YAML)")
        out.append(item.strip())
    return tuple(out)


def _check_unique(names: list[str], section: str, kind: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            rule = f"{kind} names must be unique; {section}[{seen[name]}] has this name already"
            raise ConfigError(f"{section}[{i}].name", name, rule)
        seen[name] = i


def _check_routes(
    listeners: tuple[ListenerConfig, ...], clusters: tuple[ClusterConfig, ...]
) -> None:
    names = [c.name for c in clusters]
    for i, lis in enumerate(listeners):
        for j, route in enumerate(lis.routes):
            if route not in names:
                known = ", ".join(names) if names else "none are defined"
                rule = f"no such cluster; route to one of the clusters ({known})"
                raise ConfigError(f"listeners[{i}].routes[{j}]", route, rule)
