"""The daemon's HTTP endpoints as the config names them (`admin.metrics_endpoint`,
`admin.healthcheck_endpoint`): parsed here, without a web framework, because the state machine
needs their ports too (no peer may reach them through a relay) and the servers live in
stunner_dp.observe."""

from __future__ import annotations

from urllib.parse import urlsplit

from .model import AdminConfig

__all__ = [
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_METRICS_PATH",
    "DEFAULT_METRICS_PORT",
    "admin_http_ports",
    "parse_http_endpoint",
]

DEFAULT_METRICS_PORT = 8080
DEFAULT_METRICS_PATH = "/metrics"
DEFAULT_HEALTH_PORT = 8086


def parse_http_endpoint(
    url: str, default_port: int, default_path: str = "/"
) -> tuple[str, int, str]:
    """`http://:8086` -> ("", 8086, "/"); `http://127.0.0.1:8080/metrics` -> ("127.0.0.1",
    8080, "/metrics"); `[::1]:9000` and `:9000` (no scheme) are accepted. An empty host means
    every interface. Raises ValueError for anything else."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", ""):
        raise ValueError(f"{url!r}: only http:// endpoints are served")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number in 0-65535") from None
    host = parts.hostname or ""
    path = parts.path or default_path
    if not path.startswith("/"):
        path = "/" + path
    return host, default_port if port is None else port, path


def admin_http_ports(admin: AdminConfig) -> list[int]:
    """The ports the metrics and health servers listen on (none for a disabled one, or one
    the daemon will refuse to serve)."""
    ports = []
    for url, default in (
        (admin.metrics_endpoint, DEFAULT_METRICS_PORT),
        (admin.healthcheck_endpoint, DEFAULT_HEALTH_PORT),
    ):
        if url.strip():
            try:
                ports.append(parse_http_endpoint(url, default)[1])
            except ValueError:
                continue
    return [port for port in ports if port > 0]
