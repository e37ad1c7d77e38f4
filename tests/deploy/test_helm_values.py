"""deploy/helm: the values overlay for the upstream stunner-gateway-operator chart.

The chart ships no values schema, so the overlay is checked against what the chart does with
it: its default-Dataplane template turns `stunnerGatewayOperator.dataplane.spec` into the spec
of a Dataplane named "default" (the image as `name:tag`, `pullPolicy` as `imagePullPolicy`,
the other keys as they are). That spec must be the one of deploy/stunner-operator/dataplane.yaml
and use only fields of the Dataplane CRD (stunner.l7mp.io/v1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from test_manifests import DATAPLANE_SPEC_FIELDS

REPO = Path(__file__).resolve().parents[2]
VALUES = REPO / "deploy" / "helm" / "stunner-gateway-operator-values.yaml"
DATAPLANE = REPO / "deploy" / "stunner-operator" / "dataplane.yaml"
# what the operator puts in the dataplane pod's env itself, before a Dataplane's spec.env
OPERATOR_ENV = {
    "STUNNER_ADDR",
    "STUNNER_NAME",
    "STUNNER_NAMESPACE",
    "STUNNER_NODENAME",
    "STUNNER_CONFIG_ORIGIN",
}


def rendered_spec(values: dict[str, Any]) -> dict[str, Any]:
    """The Dataplane spec the chart renders from its `dataplane.spec` values."""
    spec = dict(values["stunnerGatewayOperator"]["dataplane"]["spec"])
    image = spec.pop("image")
    spec["image"] = f"{image['name']}:{image['tag']}"
    spec["imagePullPolicy"] = image["pullPolicy"]
    if not spec.get("env"):
        spec.pop("env", None)  # the template leaves an empty env out
    return spec


def test_overlay_selects_the_managed_default_dataplane() -> None:
    values = yaml.safe_load(VALUES.read_text())
    assert values["stunnerGatewayOperator"]["dataplane"]["mode"] == "managed"


def test_overlay_uses_only_dataplane_crd_fields() -> None:
    spec = rendered_spec(yaml.safe_load(VALUES.read_text()))
    for key, value in spec.items():
        assert key in DATAPLANE_SPEC_FIELDS, f"{key} is not a Dataplane spec field"
        assert isinstance(value, DATAPLANE_SPEC_FIELDS[key]), key


def test_overlay_renders_our_dataplane() -> None:
    spec = rendered_spec(yaml.safe_load(VALUES.read_text()))
    ours = yaml.safe_load(DATAPLANE.read_text())["spec"]
    for key, value in spec.items():
        assert ours.get(key) == value, (
            f"{key}: chart renders {value!r}, dataplane.yaml has {ours.get(key)!r}"
        )
    for key in ("image", "command", "args", "resources", "enableMetricsEndpoint"):
        assert key in spec, key


def test_overlay_sets_nothing_the_operator_sets() -> None:
    spec = yaml.safe_load(VALUES.read_text())["stunnerGatewayOperator"]["dataplane"]["spec"]
    names = {e["name"] for e in spec.get("env") or []}
    assert not names & OPERATOR_ENV, names & OPERATOR_ENV
