"""deploy/grafana/stunner-dp.json: a Grafana 10+ dashboard that imports (valid JSON, datasource
input, sane layout), and whose every query names a metric stunner-dp exports: the names come
from a real `stunnerd -u 2` scrape plus the metrics the STUNner reference lists (some of them,
e.g. the cluster counters, appear only once traffic has flowed)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from stunner_dp.testing import free_port

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "stunner-dp.json"
# stunner-reference.md, "Metrics": what the platform's dashboards and scaler expect
REFERENCE_METRICS = {
    "stunner_listener_packets_total",
    "stunner_listener_bytes_total",
    "stunner_listener_connections_total",
    "stunner_listener_connections",
    "stunner_cluster_packets_total",
    "stunner_cluster_bytes_total",
    "stunner_allocations_active",
    "stunner_bytes_received_total",
    "stunner_bytes_sent_total",
    "stunner_connections_total",
}


def load() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboard_imports_into_grafana_10() -> None:
    dash = load()
    assert dash["schemaVersion"] >= 36  # Grafana 9.0+ schema, current in 10.x
    assert dash["uid"] and dash["title"]
    assert dash.get("id") is None  # an export for import carries no database id
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dash):
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_covers_the_issue() -> None:
    """Allocations, packets and bytes per listener and cluster, connections, auth failures and
    worker health each have a panel."""
    exprs = " ".join(t["expr"] for p in panels(load()) for t in p.get("targets", []))
    for metric in (
        "stunner_allocations_active",
        "stunner_listener_packets_total",
        "stunner_listener_bytes_total",
        "stunner_cluster_packets_total",
        "stunner_cluster_bytes_total",
        "stunner_listener_connections",
        "stunner_auth_failures_total",
        "stunner_workers",
        "stunner_worker_restarts_total",
    ):
        assert re.search(rf"\b{metric}\b", exprs), metric


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Metric names on a real /metrics of `stunnerd -u 2` (the supervisor and its workers)."""
    tmp = tmp_path_factory.mktemp("grafana")
    turn, metrics, health = free_port(), free_port(udp=False), free_port(udp=False)
    config = {
        "version": "v1",
        "admin": {
            "name": "grafana-test",
            "metrics_endpoint": f"http://127.0.0.1:{metrics}/metrics",
            "healthcheck_endpoint": f"http://127.0.0.1:{health}",
        },
        "auth": {"type": "static", "credentials": {"username": "u", "password": "p"}},
        "listeners": [
            {"name": "udp", "protocol": "TURN-UDP", "address": "127.0.0.1", "port": turn}
        ],
        "clusters": [],
    }
    cfg = tmp / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = (tmp / "log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stunner_dp.cli", "-u", "2", "-c", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp / "log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2) as r:
                    text = r.read().decode()
                if "stunner_worker_info" in text:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert "stunner_allocations_active" in text, (tmp / "log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_every_query_names_an_exported_metric(exported: set[str]) -> None:
    known = exported | REFERENCE_METRICS
    dash = load()
    queries = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    queries += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    for expr in queries:
        names = set(re.findall(r"\b(?:stunner|process|python)_[a-z0-9_]+\b", expr))
        assert names, f"{expr}: names no stunner-dp metric"
        unknown = names - known
        assert not unknown, f"{expr}: not exported: {sorted(unknown)}"
