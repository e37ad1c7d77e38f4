"""deploy/ variants for the kernel fast path grant exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON
(what loading needs, measured: tests/offload/test_engine_errors.py) and keep every other one
dropped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CAPS = ["BPF", "NET_ADMIN", "PERFMON"]


def test_the_offload_dataplane_turns_it_on_with_three_capabilities() -> None:
    dp = yaml.safe_load((REPO / "deploy/stunner-operator/offload/dataplane.yaml").read_text())
    spec = dp["spec"]
    assert dp["kind"] == "Dataplane" and dp["metadata"]["name"] == "stunner-dp-offload"
    assert spec["offloadEngine"] == "TC" and spec["offloadInterfaces"] == []
    caps = spec["containerSecurityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": CAPS}
    assert spec["containerSecurityContext"]["allowPrivilegeEscalation"] is False


def test_the_offload_component_renders(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: CI must render the kustomizations")
        pytest.skip("kubectl is not installed")
    base = os.path.relpath(REPO / "deploy/kubernetes", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "components": [f"{base}/components/offload"],
            }
        )
    )
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    [dep] = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]["securityContext"]
    assert container["capabilities"] == {"drop": ["ALL"], "add": CAPS}
    assert pod["securityContext"]["runAsUser"] == 0
