"""auth.credentials.previous_secrets and rest_hmac (extensions): parsed, named when wrong,
redacted in dumps, and a change is an auth change (applied live)."""

from __future__ import annotations

from typing import Any

import pytest

from stunner_dp.config import ConfigError, parse_config
from stunner_dp.config.diff import diff_configs


def rest(**creds: Any) -> dict[str, Any]:
    return {"version": "v1", "auth": {"type": "ephemeral", "credentials": {"secret": "s", **creds}}}


def test_defaults() -> None:
    auth = parse_config(rest(), env={}).auth
    assert (auth.previous_secrets, auth.rest_hmac) == ((), "sha1")


def test_previous_secrets_and_sha256() -> None:
    auth = parse_config(rest(previous_secrets=["old", "older"], rest_hmac="SHA-256"), env={}).auth
    assert auth.previous_secrets == ("old", "older") and auth.rest_hmac == "sha256"
    dumped = auth.to_dict(redact=True)["credentials"]
    assert "old" not in str(dumped) and dumped["rest_hmac"] == "sha256"
    assert auth.to_dict()["credentials"]["previous_secrets"] == ["old", "older"]


@pytest.mark.parametrize(
    ("creds", "field"),
    [
        ({"rest_hmac": "md5"}, "auth.credentials.rest_hmac"),
        ({"rest_hmac": 1}, "auth.credentials.rest_hmac"),
        ({"previous_secrets": "old"}, "auth.credentials.previous_secrets"),
        ({"previous_secrets": ["ok", ""]}, "auth.credentials.previous_secrets[1]"),
        ({"previous_secrets": ["ok", 7]}, "auth.credentials.previous_secrets[1]"),
        ({"previous_secrets": [f"s{i}" for i in range(9)]}, "auth.credentials.previous_secrets"),
    ],
)
def test_bad_values_name_the_field(creds: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(rest(**creds), env={})
    assert info.value.field == field


def test_a_rotation_is_an_auth_change() -> None:
    old = parse_config(rest(), env={})
    new = parse_config(rest(secret="new", previous_secrets=["s"]), env={})
    assert diff_configs(old, new).auth_changed
