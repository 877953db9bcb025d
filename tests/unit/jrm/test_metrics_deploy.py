"""deploy/grafana, deploy/prometheus and deploy/servicemonitor: the files parse, the dashboard only
uses metrics the exporter produces, and the example configurations match the generator."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from jiriaf.jrm.exporter import Health, hardware_families, health_families
from jiriaf.jrm.metrics import ContainerRef, ContainerUsage, Counters, NodeUsage, ProcessReading, Sample
from jiriaf.monitor.prometheus import ApiAccess, prometheus_config, render_yaml

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def exported_names() -> set[str]:
    p = ProcessReading(
        pid=2, ppid=1, pgid=2, start_ticks=1, name="x", started_at=0.0, cpu_user=0.0, cpu_system=0.0
    )
    c = ContainerUsage(
        ref=ContainerRef("ns", "p", "u", "c", "u/c", 0.0, 2),
        timestamp=0.0,
        counters=Counters(),
        rss=1,
        pss=1,
        working_set=1,
        threads=1,
        open_fds=1,
        processes=(p,),
    )
    sample = Sample(0.0, 0.01, NodeUsage(0.0, 1.0, 1, 1, 0.0), (c,), 1)
    names = set()
    for fam in [*hardware_families(sample), *health_families(Health("shared", 0.0, sample_duration=0.1))]:
        names |= {s.name for s in fam.samples}
    return names | {f"jiriaf_jrm_reconcile_duration_seconds_{x}" for x in ("bucket", "sum", "count")}


def test_dashboard_uses_only_exported_metrics_and_defined_variables() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "jiriaf-dashboard.json").read_text())
    names = exported_names()
    variables = {v["name"] for v in dashboard["templating"]["list"]} | {"__rate_interval"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    functions = {"sum", "by", "rate", "histogram_quantile", "le", "node", "namespace", "pod", "container",
                 "pgid", "pid", "name", "phase"}  # fmt: skip
    for expr in exprs:
        used_vars = set(re.findall(r"\$(\w+)", expr))
        assert used_vars <= variables, expr
        without_strings = re.sub(r'"[^"]*"', "", expr)
        idents = {w for w in re.findall(r"[a-z_][a-z0-9_]*", without_strings) if w.startswith("jiriaf_")}
        assert idents and idents <= names, (expr, idents - names)
        assert set(re.findall(r"\b([a-z_]+)\s*\(", without_strings)) <= functions, expr
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_operator_examples() -> None:
    kinds = {f.name: [d["kind"] for d in docs(f)] for f in (DEPLOY / "servicemonitor").glob("*.yaml")}
    assert kinds == {
        "jrm-kubelet.yaml": ["ServiceMonitor"],
        "jrm-scrapeconfig.yaml": ["ScrapeConfig"],
        "app-podmonitor.yaml": ["PodMonitor"],
        "app-servicemonitor.yaml": ["Service", "ServiceMonitor"],
    }
    service, monitor = docs(DEPLOY / "servicemonitor" / "app-servicemonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    (scrape,) = docs(DEPLOY / "servicemonitor" / "jrm-scrapeconfig.yaml")
    assert scrape["spec"]["kubernetesSDConfigs"][0]["selectors"][0]["label"] == "type=virtual-kubelet"


def test_prometheus_rbac_grants_what_scraping_needs() -> None:
    role = next(d for d in docs(DEPLOY / "prometheus" / "rbac.yaml") if d["kind"] == "ClusterRole")
    granted = {
        (r.get("apiGroups", [""])[0], res, verb)
        for r in role["rules"]
        for res in r.get("resources", [])
        for verb in r["verbs"]
    }
    for needed in [
        ("", "nodes", "list"),
        ("", "pods", "watch"),
        ("", "nodes/metrics", "get"),
        ("", "nodes/stats", "get"),
    ]:
        assert needed in granted


def test_example_configurations_match_the_generator() -> None:
    token = ApiAccess(
        "https://apiserver.example:6443",
        ca_file="/etc/prometheus/jiriaf/ca.crt",
        token_file="/etc/prometheus/jiriaf/token",
    )
    k8s = (DEPLOY / "prometheus" / "prometheus-kubernetes-sd.example.yml").read_text()
    assert k8s.endswith(render_yaml(prometheus_config(token)))
    files = (DEPLOY / "prometheus" / "prometheus-file-sd.example.yml").read_text()
    assert files.endswith(
        render_yaml(prometheus_config(token, discovery="file", sd_dir=Path("/etc/prometheus/jiriaf/targets")))
    )
