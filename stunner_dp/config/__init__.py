"""The STUNner v1 config schema: load (YAML/JSON, env expansion), validate, diff.

Pure data and functions: no I/O besides `load_config_file` reading its one file.
"""

from .diff import ConfigDiff, diff_configs
from .endpoints import Endpoint, parse_endpoint
from .errors import ConfigError
from .load import load_config_file, load_config_text
from .model import (
    AdminConfig,
    AuthConfig,
    ClusterConfig,
    ListenerConfig,
    NatDiscoveryConfig,
    StunnerConfig,
)
from .parse import parse_config

__all__ = [
    "AdminConfig",
    "AuthConfig",
    "ClusterConfig",
    "ConfigDiff",
    "ConfigError",
    "Endpoint",
    "ListenerConfig",
    "NatDiscoveryConfig",
    "StunnerConfig",
    "diff_configs",
    "load_config_file",
    "load_config_text",
    "parse_config",
    "parse_endpoint",
]
