"""deploy/: every Kubernetes manifest against the Kubernetes schemas (kubernetes-validate), the
Custom Resources structurally (and their core-typed parts against the core schemas), the
references between the objects, the operator's Deployment shape, and the ConfigMap's config
through stunner-dp's own validation."""

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
OPERATOR = REPO / "deploy" / "stunner-operator"
# 1.26: mixed-protocol LoadBalancer Services GA (service.yaml); and the newest schemas shipped
K8S_VERSIONS = ["1.26.0", kv.utils.latest_version()]
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("stunner.l7mp.io/v1", "Dataplane"),
}

Doc = dict[str, Any]


def load_docs(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        assert isinstance(d, dict) and d.get("apiVersion") and d.get("kind"), path
    return docs


def manifest_files() -> list[Path]:
    files = sorted(KUBE.glob("*.yaml")) + sorted(KUBE.glob("components/*/*.yaml"))
    files += sorted(OPERATOR.glob("*.yaml"))
    return [f for f in files if f.name != "kustomization.yaml"]


ALL: list[tuple[str, Doc]] = [
    (f"{p.parent.name}/{p.name}:{i}", d)
    for p in manifest_files()
    for i, d in enumerate(load_docs(p))
]


def one(kind: str, name: str | None = None) -> Doc:
    found = [
        d for _, d in ALL if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def validate_core(doc: Doc, version: str) -> None:
    try:
        kv.validate(copy.deepcopy(doc), version, strict=True)
    except kv.utils.ValidationError as exc:
        raise AssertionError(f"{doc['kind']} {doc['metadata'].get('name')}: {exc}") from None


# --- schemas ----------------------------------------------------------------------------------


def test_every_expected_kind_is_there() -> None:
    kinds = {d["kind"] for _, d in ALL}
    expected = {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "Dataplane",
    }
    assert expected <= kinds, expected - kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "where,doc",
    [(w, d) for w, d in ALL if (d["apiVersion"], d["kind"]) not in CUSTOM],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_core_manifest_is_valid(where: str, doc: Doc, version: str) -> None:
    validate_core(doc, version)


def test_validation_catches_a_bad_manifest() -> None:
    """The schema check bites: a typo'd field and a wrong type are both rejected."""
    dep = copy.deepcopy(one("Deployment", "stunner-dp"))
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(AssertionError):
        validate_core(dep, K8S_VERSIONS[-1])
    dep = copy.deepcopy(one("Deployment", "stunner-dp"))
    dep["spec"]["replicas"] = "two"
    with pytest.raises(AssertionError):
        validate_core(dep, K8S_VERSIONS[-1])


def test_kustomization_lists_the_manifests() -> None:
    kust = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    resources = kust["resources"]
    for name in resources:
        assert (KUBE / name).is_file(), name
    on_disk = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(resources) == on_disk
    for component in COMPONENTS:
        comp = yaml.safe_load((KUBE / "components" / component / "kustomization.yaml").read_text())
        assert comp["kind"] == "Component"
        assert comp["namespace"] == kust["namespace"]
        assert comp["labels"] == kust["labels"]
        on_disk = {p.name for p in (KUBE / "components" / component).glob("*.yaml")}
        assert set(comp["resources"]) == on_disk - {"kustomization.yaml"}
    image = one("Deployment", "stunner-dp")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] in {i["name"] for i in kust["images"]}


# --- kubectl kustomize: the default set runs on a bare cluster, each option adds its kind ----

COMPONENTS = {  # component -> the kind it adds (a CRD kind or an add-on's)
    "servicemonitor": "ServiceMonitor",
    "hpa": "HorizontalPodAutoscaler",
    "keda": "ScaledObject",
}
CORE_API_VERSIONS = {"v1", "apps/v1", "policy/v1"}
OPTIONS = [(), ("servicemonitor",), ("hpa",), ("keda",), ("servicemonitor", "hpa")]


def kustomize(tmp_path: Path, components: tuple[str, ...]) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: CI must render the kustomizations")
        pytest.skip("kubectl is not installed")
    target = KUBE
    if components:  # an overlay of the user's own, as the kustomization's comment shows
        base = os.path.relpath(KUBE, tmp_path)
        overlay = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [base],
            "components": [f"{base}/components/{c}" for c in components],
        }
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
        target = tmp_path
    out = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("components", OPTIONS, ids=lambda c: "+".join(c) or "default")
def test_kustomize_renders_the_default_and_each_option(
    tmp_path: Path, components: tuple[str, ...]
) -> None:
    docs = kustomize(tmp_path, components)
    extra = [d for d in docs if d["apiVersion"] not in CORE_API_VERSIONS]
    assert sorted(d["kind"] for d in extra) == sorted(COMPONENTS[c] for c in components)
    base_kinds = {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    assert {d["kind"] for d in docs} - {COMPONENTS[c] for c in components} == base_kinds
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "stunner-dp", d["kind"]
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "stunner", d["kind"]
        if (d["apiVersion"], d["kind"]) not in CUSTOM:
            validate_core(d, K8S_VERSIONS[-1])


# --- Custom Resources: structure, and their core-typed parts against the core schemas -------

DATAPLANE_SPEC_FIELDS = {  # stunner.l7mp.io/v1 Dataplane spec (STUNner's CRD)
    "image": str,
    "imagePullPolicy": str,
    "imagePullSecrets": list,
    "dataplaneResource": str,
    "labels": dict,
    "annotations": dict,
    "command": list,
    "args": list,
    "envFrom": list,
    "env": list,
    "containerSecurityContext": dict,
    "replicas": int,
    "resources": dict,
    "terminationGracePeriodSeconds": int,
    "hostNetwork": bool,
    "affinity": dict,
    "securityContext": dict,
    "tolerations": list,
    "topologySpreadConstraints": list,
    "disableHealthCheck": bool,
    "enableMetricsEndpoint": bool,
}


def test_dataplane_structure() -> None:
    dp = one("Dataplane")
    assert dp["apiVersion"] == "stunner.l7mp.io/v1"
    assert "namespace" not in dp["metadata"], "Dataplane is cluster-scoped"
    spec = dp["spec"]
    for key, value in spec.items():
        assert key in DATAPLANE_SPEC_FIELDS, f"unknown Dataplane field {key}"
        assert isinstance(value, DATAPLANE_SPEC_FIELDS[key]), key
    assert spec["image"] and spec["command"] == ["stunnerd"]
    assert spec["enableMetricsEndpoint"] is True
    assert spec["terminationGracePeriodSeconds"] == 3600
    args = stunnerd_parser().parse_args(spec["args"])
    assert args.watch
    # one worker process per CPU of the limit (see the comment in dataplane.yaml)
    assert args.udp_thread_num == int(spec["resources"]["limits"]["cpu"])
    # the operator sets STUNNER_ADDR (the pod IP) and the id itself: test_operator_env.py
    assert not {e["name"] for e in spec.get("env", [])} & {"STUNNER_ADDR", "STUNNER_NAME"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_dataplane_core_parts_are_valid(version: str) -> None:
    """The Dataplane's fields are core types (EnvVar, ResourceRequirements, SecurityContext,
    PodSecurityContext, ...): put them in the Pod they become and validate that."""
    spec = one("Dataplane")["spec"]
    container = {
        "name": "stunner-daemon",
        "image": spec["image"],
        "imagePullPolicy": spec.get("imagePullPolicy", "IfNotPresent"),
        "command": spec["command"],
        "args": spec["args"],
        "env": spec.get("env", []),
        "envFrom": spec.get("envFrom", []),
        "resources": spec.get("resources", {}),
        "securityContext": spec.get("containerSecurityContext", {}),
    }
    pod_spec: Doc = {
        "containers": [container],
        "hostNetwork": spec.get("hostNetwork", False),
        "terminationGracePeriodSeconds": spec["terminationGracePeriodSeconds"],
    }
    for key in ("securityContext", "affinity", "tolerations", "topologySpreadConstraints"):
        if key in spec:
            pod_spec[key] = spec[key]
    validate_core(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dp"}, "spec": pod_spec}, version
    )


def test_scaledobject_structure() -> None:
    so = one("ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == one("Deployment")["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    triggers = {t["type"]: t for t in spec["triggers"]}
    prom = triggers["prometheus"]["metadata"]
    assert prom["serverAddress"].startswith("http")
    assert "stunner_allocations_active" in prom["query"]
    assert float(prom["threshold"]) > 0
    assert all(isinstance(v, str) for t in spec["triggers"] for v in t["metadata"].values())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_scaledobject_hpa_behavior_is_valid(version: str) -> None:
    """KEDA passes advanced.horizontalPodAutoscalerConfig.behavior into the HPA it makes."""
    so = one("ScaledObject")["spec"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "minReplicas": so["minReplicaCount"],
            "maxReplicas": so["maxReplicaCount"],
            "behavior": so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    validate_core(hpa, version)


def test_servicemonitor_selects_the_metrics_service() -> None:
    sm = one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    svc = one("Service", "stunner-dp-metrics")
    labels = svc["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in ports
        assert ep.get("path", "/metrics") == "/metrics"
    # and no other Service matches (or its ports would be scraped too)
    for _, d in ALL:
        if d["kind"] == "Service" and d is not svc:
            other = d["metadata"].get("labels", {})
            assert not sm["spec"]["selector"]["matchLabels"].items() <= other.items()


# --- the Deployment: the operator's shape, and what points at it ----------------------------


def container() -> Doc:
    spec = one("Deployment")["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return spec["containers"][0]


def test_deployment_has_the_operators_shape() -> None:
    dep = one("Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container()
    assert c["name"] == "stunner-daemon" and c["command"] == ["stunnerd"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env["STUNNER_ADDR"] == "status.podIP"
    assert env["STUNNER_NAME"] == "metadata.name"
    assert env["STUNNER_NAMESPACE"] == "metadata.namespace"
    for probe, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
        p = c[probe]
        assert p["httpGet"] == {"path": path, "port": 8086}
        assert p["periodSeconds"] == 15 and p["timeoutSeconds"] == 1
    assert pod["terminationGracePeriodSeconds"] == 3600
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "128Mi"},
        "limits": {"cpu": "2", "memory": "512Mi"},
    }
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    # read-only root: /tmp is a volume
    assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


def test_deployment_args_watch_the_mounted_config() -> None:
    c = container()
    args = stunnerd_parser().parse_args(c["args"])
    assert args.watch and args.config
    assert args.udp_thread_num <= int(c["resources"]["limits"]["cpu"])
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in mounts.values() if args.config.startswith(m["mountPath"] + "/"))
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates (-w)"
    cm_ref = volumes[mount["name"]]["configMap"]
    cm = one("ConfigMap", cm_ref["name"])
    file = args.config[len(mount["mountPath"]) + 1 :]
    key = next(
        i["key"] for i in cm_ref.get("items", [{"key": file, "path": file}]) if i["path"] == file
    )
    assert key in cm["data"]


def test_configmap_config_passes_our_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUNNER_ADDR", "10.1.2.3")  # what the downward API gives the pod
    for key, text in one("ConfigMap", "stunnerd-config")["data"].items():
        config = load_config_text(text)
        assert config.listeners, key
        assert {lst.address for lst in config.listeners} == {"10.1.2.3"}
        c = container()
        container_ports = {(p["containerPort"], p["protocol"]) for p in c["ports"]}
        for lst in config.listeners:
            proto = "TCP" if lst.protocol in ("TURN-TCP", "TURN-TLS") else "UDP"
            assert (lst.port, proto) in container_ports, lst.name
        assert config.admin.metrics_endpoint.endswith(":8080/metrics")
        assert config.admin.healthcheck_endpoint.rstrip("/").endswith(":8086")
    assert os.environ["STUNNER_ADDR"] == "10.1.2.3"


def pod_labels() -> dict[str, str]:
    return dict(one("Deployment")["spec"]["template"]["metadata"]["labels"])


def test_selectors_match_the_pods() -> None:
    labels = pod_labels()
    dep = one("Deployment")
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for _, d in ALL:
        if d["kind"] == "Service":
            assert d["spec"]["selector"].items() <= labels.items(), d["metadata"]["name"]
        if d["kind"] == "PodDisruptionBudget":
            assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for tsc in dep["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        assert tsc["labelSelector"]["matchLabels"].items() <= labels.items()


def test_services_expose_turn_and_metrics() -> None:
    c = container()
    named = {p["name"]: p for p in c["ports"]}
    lb = one("Service", "stunner-dp")
    assert lb["spec"]["type"] == "LoadBalancer"
    assert {(p["port"], p["protocol"]) for p in lb["spec"]["ports"]} == {
        (3478, "UDP"),
        (3478, "TCP"),
    }
    for p in lb["spec"]["ports"] + one("Service", "stunner-dp-metrics")["spec"]["ports"]:
        target = p["targetPort"]
        match = (
            named[target]
            if isinstance(target, str)
            else next(
                q
                for q in c["ports"]
                if q["containerPort"] == target and q["protocol"] == p["protocol"]
            )
        )
        assert match["protocol"] == p.get("protocol", "TCP")


def test_autoscalers_target_the_deployment() -> None:
    name = one("Deployment")["metadata"]["name"]
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu and cpu[0]["resource"]["name"] == "cpu"
    assert one("ScaledObject")["spec"]["scaleTargetRef"]["name"] == name
