"""deploy/ for one dataplane per node on the node's network: the Kustomize component
(components/daemonset) renders a valid hostNetwork DaemonSet in place of the Deployment, with
the node's address as relay address and no port that collides with the node's; the operator's
Dataplane variant asks for a DaemonSet with hostNetwork and is valid as the Pod it becomes."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stunner_dp.cli import stunnerd_parser
from stunner_dp.config import load_config_text

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
OPERATOR_DS = REPO / "deploy" / "stunner-operator" / "daemonset" / "dataplane.yaml"
K8S_VERSIONS = ["1.26.0", kv.utils.latest_version()]
NODE_PORTS = range(30000, 32768)  # Kubernetes' default --service-node-port-range
EPHEMERAL = range(32768, 61000)  # Linux's default ip_local_port_range
NODE_IP = "192.0.2.21"

Doc = dict[str, Any]


def validate_core(doc: Doc, version: str) -> None:
    try:
        kv.validate(copy.deepcopy(doc), version, strict=True)
    except kv.utils.ValidationError as exc:
        raise AssertionError(f"{doc['kind']} {doc['metadata'].get('name')}: {exc}") from None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: CI must render the kustomizations")
        pytest.skip("kubectl is not installed")
    overlay_dir = tmp_path_factory.mktemp("daemonset-overlay")
    base = os.path.relpath(KUBE, overlay_dir)
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "components": [f"{base}/components/daemonset"],
    }
    (overlay_dir / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay_dir)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def the(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)}"
    return found[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_component_renders_a_valid_daemonset_instead(rendered: list[Doc], version: str) -> None:
    assert sorted(d["kind"] for d in rendered) == [
        "ConfigMap",
        "DaemonSet",
        "Namespace",
        "Service",
        "Service",
    ]
    for d in rendered:
        validate_core(d, version)
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "stunner-dp"
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "stunner"


def test_the_component_lists_its_manifests() -> None:
    comp = yaml.safe_load((KUBE / "components/daemonset/kustomization.yaml").read_text())
    base = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert comp["kind"] == "Component"
    assert comp["namespace"] == base["namespace"] and comp["labels"] == base["labels"]
    on_disk = {p.name for p in (KUBE / "components/daemonset").glob("*.yaml")}
    assert set(comp["resources"]) == on_disk - {"kustomization.yaml"}


def test_one_pod_per_node_on_the_nodes_address(rendered: list[Doc]) -> None:
    ds = the(rendered, "DaemonSet", "stunner-dp")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0
    (c,) = pod["containers"]
    assert c["name"] == "stunner-daemon" and c["command"] == ["stunnerd"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env["STUNNER_ADDR"] == "status.hostIP"
    assert env["STUNNER_NODENAME"] == "spec.nodeName"
    for port in c["ports"]:  # hostNetwork: a port is the node's, hostPort must equal it
        assert port["hostPort"] == port["containerPort"], port["name"]
    assert (
        ds["spec"]["selector"]["matchLabels"].items()
        <= ds["spec"]["template"]["metadata"]["labels"].items()
    )
    sc = c["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_config_uses_the_node_address_and_ports_clear_of_the_nodes(
    rendered: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUNNER_ADDR", NODE_IP)  # status.hostIP
    ds = the(rendered, "DaemonSet")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    args = stunnerd_parser().parse_args(c["args"])
    assert args.watch and args.config == "/etc/stunnerd/stunnerd.conf"
    config = load_config_text(
        the(rendered, "ConfigMap", "stunnerd-config")["data"]["stunnerd.conf"]
    )
    assert config.listeners
    ports = {(p["containerPort"], p["protocol"]): p for p in c["ports"]}
    for lis in config.listeners:
        assert lis.address == NODE_IP, lis.name
        relays = range(lis.min_relay_port, lis.max_relay_port + 1)
        for taken in (NODE_PORTS, EPHEMERAL):
            assert not set(relays) & set(taken), f"{lis.name}: relays overlap {taken}"
        proto = "TCP" if lis.protocol in ("TURN-TCP", "TURN-TLS") else "UDP"
        assert (lis.port, proto) in ports, lis.name
    health = int(config.admin.healthcheck_endpoint.rstrip("/").rsplit(":", 1)[1])
    metrics = int(config.admin.metrics_endpoint.split(":")[-1].split("/")[0])
    assert {health, metrics}.isdisjoint({8080, 8086})  # often taken on nodes
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == health, probe
    assert ports[(metrics, "TCP")]["name"] == "metrics"
    svc = the(rendered, "Service", "stunner-dp-metrics")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["ports"][0]["port"] == metrics


DATAPLANE_SPEC_FIELDS = {  # stunner.l7mp.io/v1 Dataplane spec (STUNner's CRD), used here
    "image": str,
    "imagePullPolicy": str,
    "dataplaneResource": str,
    "command": list,
    "args": list,
    "env": list,
    "containerSecurityContext": dict,
    "resources": dict,
    "terminationGracePeriodSeconds": int,
    "hostNetwork": bool,
    "securityContext": dict,
    "disableHealthCheck": bool,
    "enableMetricsEndpoint": bool,
}


def test_the_operator_dataplane_asks_for_a_host_network_daemonset() -> None:
    dp = yaml.safe_load(OPERATOR_DS.read_text())
    assert dp["apiVersion"] == "stunner.l7mp.io/v1" and dp["kind"] == "Dataplane"
    assert "namespace" not in dp["metadata"]
    spec = dp["spec"]
    for key, value in spec.items():
        assert key in DATAPLANE_SPEC_FIELDS, f"unknown Dataplane field {key}"
        assert isinstance(value, DATAPLANE_SPEC_FIELDS[key]), key
    assert spec["dataplaneResource"] == "DaemonSet"  # the CRD's enum: Deployment | DaemonSet
    assert spec["hostNetwork"] is True
    args = stunnerd_parser().parse_args(spec["args"])
    assert args.watch and args.udp_thread_num == int(spec["resources"]["limits"]["cpu"])
    # the operator writes STUNNER_ADDR (pod IP = node IP under hostNetwork) and the id itself
    assert not {e["name"] for e in spec.get("env", [])} & {"STUNNER_ADDR", "STUNNER_NAME"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_operator_dataplane_is_a_valid_pod(version: str) -> None:
    spec = yaml.safe_load(OPERATOR_DS.read_text())["spec"]
    container = {
        "name": "stunner-daemon",
        "image": spec["image"],
        "imagePullPolicy": spec["imagePullPolicy"],
        "command": spec["command"],
        "args": spec["args"],
        "resources": spec["resources"],
        "securityContext": spec["containerSecurityContext"],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dp"},
        "spec": {
            "containers": [container],
            "hostNetwork": spec["hostNetwork"],
            "securityContext": spec["securityContext"],
            "terminationGracePeriodSeconds": spec["terminationGracePeriodSeconds"],
        },
    }
    validate_core(pod, version)
