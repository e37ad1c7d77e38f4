"""admin.user_bandwidth / user_bandwidth_burst: defaults, accepted values, refusals naming the
field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from stunner_dp.config import ConfigError, parse_config
from stunner_dp.testing import make_config


def parsed(**admin: Any) -> Any:
    return parse_config(make_config(admin={"name": "bw", **admin})).admin


def test_off_by_default_and_round_trips() -> None:
    assert (parsed().user_bandwidth, parsed().user_bandwidth_burst) == (0, 0)
    a = parsed(user_bandwidth=250_000, user_bandwidth_burst="500000")
    assert (a.user_bandwidth, a.user_bandwidth_burst) == (250_000, 500_000)
    assert a.to_dict()["user_bandwidth"] == 250_000
    assert parse_config(make_config(admin=a.to_dict())).admin == a


@pytest.mark.parametrize(
    ("admin", "field", "says"),
    [
        ({"user_bandwidth": -1}, "admin.user_bandwidth", "0 (no cap)"),
        ({"user_bandwidth": 10}, "admin.user_bandwidth", "at least 1000"),
        ({"user_bandwidth": "fast"}, "admin.user_bandwidth", "integer"),
        (
            {"user_bandwidth": 5000, "user_bandwidth_burst": 100},
            "admin.user_bandwidth_burst",
            "one packet",
        ),
        (
            {"user_bandwidth_burst": 5000},
            "admin.user_bandwidth_burst",
            "without admin.user_bandwidth",
        ),
    ],
)
def test_bad_values_named(admin: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parsed(**admin)
    assert err.value.field == field
    assert says in str(err.value)
