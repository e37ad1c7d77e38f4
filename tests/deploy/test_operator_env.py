"""The pod STUNner's operator renders from deploy/stunner-operator/dataplane.yaml.

The operator (stunner-gateway-operator, internal/renderer/dataplane_util.go) writes the
container's env itself, then appends the Dataplane's `spec.env`; in a container's env the last
duplicate of a name wins. A Dataplane that sets STUNNER_NAME to the pod's name therefore makes
the dataplane ask CDS for `<namespace>/<pod name>`, which does not exist, and it never turns
ready. This reproduces that merge from our manifest and checks the id the daemon computes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from stunner_dp.cli import stunnerd_parser
from stunner_dp.daemon.stunnerd import options_from_args

REPO = Path(__file__).resolve().parents[2]
DATAPLANE = REPO / "deploy" / "stunner-operator" / "dataplane.yaml"

GATEWAY = {"name": "udp-gateway", "namespace": "stunner"}
CDS_URL = "http://stunner-config-discovery.stunner-system.svc:13478"
# what the downward API resolves for the rendered pod
POD = {
    "metadata.name": "stunner-dp-7d9f8b6c4-x2kqz",
    "metadata.namespace": GATEWAY["namespace"],
    "status.podIP": "10.244.1.17",
    "spec.nodeName": "node-1",
}
# the variables the operator sets itself (it names them in its renderer)
OPERATOR_ENV = (
    "STUNNER_ADDR",
    "STUNNER_NAME",
    "STUNNER_NAMESPACE",
    "STUNNER_NODENAME",
    "STUNNER_CONFIG_ORIGIN",
)


def operator_env() -> list[dict[str, Any]]:
    """The env the operator writes before the Dataplane's, in its order."""

    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    return [
        {"name": "STUNNER_ADDR", **field("status.podIP")},
        {"name": "STUNNER_NAME", "value": GATEWAY["name"]},
        {"name": "STUNNER_NAMESPACE", "value": GATEWAY["namespace"]},
        {"name": "STUNNER_NODENAME", **field("spec.nodeName")},
        {"name": "STUNNER_CONFIG_ORIGIN", "value": CDS_URL},
    ]


def dataplane_spec() -> dict[str, Any]:
    doc = yaml.safe_load(DATAPLANE.read_text(encoding="utf-8"))
    assert doc["kind"] == "Dataplane"
    spec: dict[str, Any] = doc["spec"]
    return spec


def rendered_env() -> dict[str, str]:
    """The container's environment as the kubelet builds it: the operator's entries, then the
    Dataplane's appended, fieldRefs resolved, the last duplicate of a name winning."""
    out: dict[str, str] = {}
    for entry in [*operator_env(), *dataplane_spec().get("env", [])]:
        if "value" in entry:
            out[entry["name"]] = str(entry["value"])
        else:
            out[entry["name"]] = POD[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


def rendered_args() -> argparse.Namespace:
    spec = dataplane_spec()
    assert spec["command"] == ["stunnerd"]
    return stunnerd_parser().parse_args(spec["args"])


@pytest.fixture
def pod_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in OPERATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    env = rendered_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_the_daemon_asks_cds_for_the_gateway(pod_env: dict[str, str]) -> None:
    args = rendered_args()
    options = options_from_args(args, None)  # no file: the config comes from CDS
    assert options.config_id == f"{GATEWAY['namespace']}/{GATEWAY['name']}"
    assert options.origin == CDS_URL
    assert options.node == POD["spec.nodeName"]
    assert options.watch


def test_the_relay_address_is_the_pod_ip(pod_env: dict[str, str]) -> None:
    assert pod_env["STUNNER_ADDR"] == POD["status.podIP"]


def test_the_dataplane_sets_nothing_the_operator_sets() -> None:
    names = [e["name"] for e in dataplane_spec().get("env", [])]
    assert not set(names) & set(OPERATOR_ENV), "the operator sets these; a duplicate wins"
