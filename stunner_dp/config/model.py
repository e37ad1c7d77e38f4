"""The validated STUNner v1 config: immutable dataclasses the rest of stunner-dp codes against.

Objects are normally built by `parse_config`, which applies defaults and validates; building
them by hand (in tests) skips validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_HEALTHCHECK_ENDPOINT",
    "DEFAULT_REALM",
    "REDACTED",
    "AdminConfig",
    "AuthConfig",
    "ClusterConfig",
    "ListenerConfig",
    "NatDiscoveryConfig",
    "StunnerConfig",
]

DEFAULT_REALM = "stunner.l7mp.io"
DEFAULT_HEALTHCHECK_ENDPOINT = "http://:8086"
REDACTED = "<redacted>"


@dataclass(frozen=True)
class AdminConfig:
    name: str = "default-stunnerd"
    loglevel: str = "all:INFO"
    metrics_endpoint: str = ""  # "" disables the metrics server
    healthcheck_endpoint: str = DEFAULT_HEALTHCHECK_ENDPOINT  # "" disables
    user_quota: int = 0  # max allocations per user, 0 = unlimited
    # stunner-dp extensions (stunnerd ignores unknown keys, so the file stays portable);
    # 0 means unlimited for each of them
    max_allocations: int = 0  # global cap on live allocations
    max_permissions_per_allocation: int = 64
    max_channels_per_allocation: int = 64
    unauth_rate_per_ip: int = 100  # unauthenticated answers per second per source IP
    auth_failures_per_user: int = 10  # failed authentications per user per minute
    # TCP/TLS connections and DTLS associations (0 for max_connections: only the
    # open-file budget caps the TCP/TLS ones, see stunner_dp.net.tcp)
    max_connections: int = 0
    max_connections_per_ip: int = 256
    connection_idle_timeout: int = 5  # seconds silent without an allocation; 0: never closed
    # relayed payload bytes/s per quota user in each direction (0: no cap), a token bucket of
    # user_bandwidth_burst bytes (0: one second's worth)
    user_bandwidth: int = 0
    user_bandwidth_burst: int = 0
    # STUNner's kernel offload: "None", "TC", "XDP" or "Auto" as STUNner spells them, and the
    # interfaces (empty: all), sorted. Kept for the offload engine to read.
    offload_engine: str = "None"
    offload_interfaces: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loglevel": self.loglevel,
            "metrics_endpoint": self.metrics_endpoint,
            "healthcheck_endpoint": self.healthcheck_endpoint,
            "user_quota": self.user_quota,
            "max_allocations": self.max_allocations,
            "max_permissions_per_allocation": self.max_permissions_per_allocation,
            "max_channels_per_allocation": self.max_channels_per_allocation,
            "unauth_rate_per_ip": self.unauth_rate_per_ip,
            "auth_failures_per_user": self.auth_failures_per_user,
            "max_connections": self.max_connections,
            "max_connections_per_ip": self.max_connections_per_ip,
            "connection_idle_timeout": self.connection_idle_timeout,
            "user_bandwidth": self.user_bandwidth,
            "user_bandwidth_burst": self.user_bandwidth_burst,
            "offload_engine": self.offload_engine,
            "offload_interfaces": list(self.offload_interfaces),
        }


@dataclass(frozen=True)
class AuthConfig:
    type: str = "static"  # "static" | "ephemeral" | "none" (STUN only) after normalisation
    realm: str = DEFAULT_REALM
    username: str = ""  # static
    password: str = ""  # static
    secret: str = ""  # ephemeral (TURN REST API shared secret): issues and is accepted
    # extensions: older secrets still accepted (a rotation fails no live client), and the
    # REST password's HMAC, "sha1" (the TURN REST API draft, coturn) or "sha256"
    previous_secrets: tuple[str, ...] = ()
    rest_hmac: str = "sha1"

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        creds: dict[str, Any] = {}
        if self.username:
            creds["username"] = self.username
        if self.password:
            creds["password"] = REDACTED if redact else self.password
        if self.secret:
            creds["secret"] = REDACTED if redact else self.secret
        if self.previous_secrets:
            creds["previous_secrets"] = [
                REDACTED if redact else old for old in self.previous_secrets
            ]
        if self.rest_hmac != "sha1":
            creds["rest_hmac"] = self.rest_hmac
        return {"type": self.type, "realm": self.realm, "credentials": creds}


@dataclass(frozen=True)
class NatDiscoveryConfig:
    """listeners[].nat_discovery (extension, TURN-UDP): the second address and port RFC 5780
    NAT behaviour discovery answers from (the first is the listener's address and port)."""

    alternate_address: str
    alternate_port: int

    def to_dict(self) -> dict[str, Any]:
        return {"alternate_address": self.alternate_address, "alternate_port": self.alternate_port}


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    protocol: str  # "TURN-UDP" | "TURN-TCP" | "TURN-TLS" | "TURN-DTLS" after normalisation
    address: str = "0.0.0.0"  # relay address put in XOR-RELAYED-ADDRESS; sockets bind the wildcard
    port: int = 3478
    public_address: str = ""  # advertised only (ICE URIs)
    public_port: int = 0
    # extension: the relay address put in XOR-RELAYED-ADDRESS instead of `address` (a node's
    # public IP in front of its private one); relays still bind `address` when it is local
    public_relay_address: str = ""
    # extension (RFC 6156 / RFC 8656 dual stack): the relay address of the other IP family (the
    # IPv6 one of an IPv4 `address`, or the reverse); with it, or with `address: "::"`, the
    # listener relays both families and its UDP socket serves both on one port
    additional_address: str = ""
    min_relay_port: int = 30000
    max_relay_port: int = 32767
    cert: str = ""  # base64 PEM, TLS/DTLS only
    key: str = ""  # base64 PEM, TLS/DTLS only
    routes: tuple[str, ...] = ()  # cluster names a client of this listener may reach
    # extension, TCP/TLS only: every connection starts with a PROXY protocol header (v1/v2)
    # naming the client, sent by a load balancer from one of the trusted networks (CIDRs)
    proxy_protocol: bool = False
    proxy_protocol_trusted: tuple[str, ...] = ()
    # extension, TURN-UDP only: RFC 5780 on (OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST)
    nat_discovery: NatDiscoveryConfig | None = None

    @property
    def transport(self) -> str:
        """ "udp", "tcp", "tls" or "dtls": the socket kind under TURN."""
        return self.protocol.removeprefix("TURN-").lower()

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "protocol": self.protocol,
            "address": self.address,
            "port": self.port,
            "public_address": self.public_address,
            "public_port": self.public_port,
            "min_relay_port": self.min_relay_port,
            "max_relay_port": self.max_relay_port,
            "routes": list(self.routes),
        }
        if self.public_relay_address:
            out["public_relay_address"] = self.public_relay_address
        if self.additional_address:
            out["additional_address"] = self.additional_address
        if self.proxy_protocol:
            out["proxy_protocol"] = True
            out["proxy_protocol_trusted"] = list(self.proxy_protocol_trusted)
        if self.nat_discovery is not None:
            out["nat_discovery"] = self.nat_discovery.to_dict()
        if self.cert:
            out["cert"] = self.cert
        if self.key:
            # a private key is as secret as a password
            out["key"] = REDACTED if redact else self.key
        return out


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    type: str = "STATIC"  # "STATIC" | "STRICT_DNS"
    protocol: str = "UDP"  # "UDP" | "TCP"
    endpoints: tuple[str, ...] = ()  # IP, CIDR or hostname, each optionally ":<min-max>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "protocol": self.protocol,
            "endpoints": list(self.endpoints),
        }


@dataclass(frozen=True)
class StunnerConfig:
    version: str = "v1"
    admin: AdminConfig = field(default_factory=AdminConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    listeners: tuple[ListenerConfig, ...] = ()
    clusters: tuple[ClusterConfig, ...] = ()
    # warnings from the parser: fields accepted that have no effect here (logged on apply)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        """The stunnerd v1 shape; `redact` hides password, secret and TLS key (/status, logs)."""
        return {
            "version": self.version,
            "admin": self.admin.to_dict(),
            "auth": self.auth.to_dict(redact=redact),
            "listeners": [lis.to_dict(redact=redact) for lis in self.listeners],
            "clusters": [c.to_dict() for c in self.clusters],
        }

    def listener(self, name: str) -> ListenerConfig | None:
        for lis in self.listeners:
            if lis.name == name:
                return lis
        return None

    def cluster(self, name: str) -> ClusterConfig | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None
