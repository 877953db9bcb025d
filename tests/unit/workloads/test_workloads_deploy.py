"""The deploy/ files: plain manifests (stream, hpa) and the jiriaf-stream Helm chart.

Every workload's command is checked against the program it runs (the module exists and its
argument parser accepts the arguments), Services against the ports of the pods they select, and
pods for the JIRIAF placement and Prometheus annotations. The chart is linted and rendered with
``helm`` (the real binary) under several value sets. :func:`for_local_jrm` is tested here too.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from jiriaf.workloads.manifests import find, for_local_jrm, load_documents

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "charts" / "jiriaf-stream"
TOLERATION = {
    "key": "virtual-kubelet.io/provider",
    "operator": "Equal",
    "value": "mock",
    "effect": "NoSchedule",
}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def pod_templates(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"] for d in docs if d.get("kind") in WORKLOADS]


def check_workloads(docs: list[dict[str, Any]]) -> None:
    """The checks every set of objects (plain or rendered) must pass."""
    templates = pod_templates(docs)
    assert templates
    for tpl in templates:
        spec, meta = tpl["spec"], tpl["metadata"]
        assert TOLERATION in spec["tolerations"]
        assert spec["nodeSelector"]["type"] == "virtual-kubelet"
        annotations = meta.get("annotations") or {}
        for container in spec["containers"]:
            command = [*container["command"], *(container.get("args") or [])]
            assert command[1] == "-m" and command[2].startswith("jiriaf.workloads."), command
            module = importlib.import_module(command[2])
            module.parser().parse_args(command[3:])  # raises UserError on a wrong flag or value
            ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
            assert "http" in ports
            probe = container["readinessProbe"]["httpGet"]
            assert probe["port"] == "http"
            if annotations.get("prometheus.io/scrape") == "true":
                assert int(annotations["prometheus.io/port"]) == ports["http"]
                assert annotations["prometheus.io/path"] in ("/metrics", "/-/metrics")
            names = {e["name"] for e in container.get("env") or []}
            assert "POD_IP" in names
    for svc in (d for d in docs if d.get("kind") == "Service"):
        selected = [
            t
            for t in templates
            if all(t["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())
        ]
        assert len(selected) == 1, svc["metadata"]["name"]
        container_ports = {p["name"] for c in selected[0]["spec"]["containers"] for p in c.get("ports") or []}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in container_ports
    for tpl in templates:
        secret_volumes = [v for v in tpl["spec"].get("volumes") or [] if "secret" in v]
        env = {e["name"]: e.get("value") for c in tpl["spec"]["containers"] for e in c.get("env") or []}
        if secret_volumes:
            mount = tpl["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
            assert env["KUBECONFIG"].startswith(mount + "/")


# ---------------------------------------------------------------------------------------- plain


def test_stream_manifests() -> None:
    docs = load_documents(sorted((DEPLOY / "stream").glob("*.yaml")))
    check_workloads(docs)
    receiver = find(docs, "Deployment", "stream-receiver")
    assert receiver["spec"]["strategy"]["type"] == "Recreate"
    env = {e["name"]: e.get("value") for e in receiver["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["THREADS"] == "16"
    sender = find(docs, "Deployment", "stream-sender")
    args = sender["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--service=stream-receiver" in args and "--source=pods" in args
    assert sender["spec"]["template"]["spec"]["serviceAccountName"] == "jiriaf-workloads"
    rules = find(docs, "Role", "jiriaf-workloads-endpoints-reader")["rules"]
    assert {r for rule in rules for r in rule["resources"]} == {"services", "pods", "endpointslices"}


def test_hpa_manifests_are_the_papers() -> None:
    docs = load_documents(sorted((DEPLOY / "hpa").glob("*.yaml")))
    check_workloads(docs)
    hpa = find(docs, "HorizontalPodAutoscaler", "http-server-hpa")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "http-server",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 30}}
    server = find(docs, "Deployment", "http-server")
    container = server["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "100m"  # utilisation is relative to it
    lb = find(docs, "Deployment", "http-lb")
    assert "--service=http-server" in lb["spec"]["template"]["spec"]["containers"][0]["args"]
    assert (DEPLOY / "hpa" / "add-load.sh").stat().st_mode & 0o111


def test_for_local_jrm_adapts_interpreter_ports_node_and_namespace() -> None:
    docs = load_documents(sorted((DEPLOY / "hpa").glob("*.yaml")))
    out = for_local_jrm(
        docs,
        python="/opt/py/bin/python3.11",
        namespace="t1",
        node_name="jrm-a",
        ports={8080: 18080, 8090: 18090},
        env={"WORK_MS": "3"},
    )
    assert docs[0].get("metadata", {}).get("namespace") is None  # the input is not modified
    assert all(d["metadata"]["namespace"] == "t1" for d in out)
    binding = find(out, "RoleBinding", "jiriaf-workloads-endpoints-reader")
    assert binding["subjects"][0]["namespace"] == "t1"
    server = find(out, "Deployment", "http-server")["spec"]["template"]
    container = server["spec"]["containers"][0]
    assert container["command"][0] == "/opt/py/bin/python3.11"
    assert container["args"] == ["--port=18080"]
    assert container["ports"][0]["containerPort"] == 18080
    assert {"name": "WORK_MS", "value": "3"} in container["env"]
    assert server["metadata"]["annotations"]["prometheus.io/port"] == "18080"
    assert server["spec"]["nodeSelector"]["kubernetes.io/hostname"] == "jrm-a"
    lb = find(out, "Deployment", "http-lb")["spec"]["template"]["spec"]["containers"][0]
    assert "--port=18090" in lb["args"] and "--service=http-server" in lb["args"]
    svc = find(out, "Service", "http-lb")["spec"]["ports"][0]
    assert (svc["port"], svc["targetPort"]) == (18090, "http")  # named target ports stay named
    assert find(out, "Service", "http-server")["spec"]["ports"][0]["port"] == 80  # not in the mapping


def test_renumbering_touches_whole_port_numbers_only() -> None:
    doc = {
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "template": {
                "metadata": {},
                "spec": {"containers": [{"name": "c", "command": ["python3"], "args": [
                    "--port=8080", "--target=host:8080", "--other=80801", "--n=18080", "8080"]}]},
            }
        },
    }  # fmt: skip
    (out,) = for_local_jrm([doc], python="py", namespace="n", ports={8080: 9000})
    assert out["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--port=9000",
        "--target=host:9000",
        "--other=80801",
        "--n=18080",
        "8080",
    ]


# ---------------------------------------------------------------------------------------- chart


def helm() -> str:
    found = os.environ.get("JIRIAF_HELM") or shutil.which("helm")
    if not found:
        pytest.skip("helm is not installed (.ci/run installs it with 'go install helm.sh/helm/v3/cmd/helm')")
    return found


def render(*sets: str) -> list[dict[str, Any]]:
    argv = [helm(), "template", "rel", str(CHART), "--namespace", "stream"]
    for s in sets:
        argv += ["--set", s]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_chart_lints() -> None:
    out = subprocess.run(
        [helm(), "lint", str(CHART)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_chart_defaults_render_the_papers_receiver_and_a_discovering_sender() -> None:
    docs = render()
    check_workloads(docs)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == [
        "Deployment/rel-jiriaf-stream-receiver",
        "Deployment/rel-jiriaf-stream-sender",
        "Role/rel-jiriaf-stream-endpoints-reader",
        "RoleBinding/rel-jiriaf-stream-endpoints-reader",
        "Service/rel-jiriaf-stream-receiver",
        "Service/rel-jiriaf-stream-sender",
        "ServiceAccount/rel-jiriaf-stream",
    ]
    receiver = find(docs, "Deployment", "rel-jiriaf-stream-receiver")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert {"name": "THREADS", "value": "16"} in receiver["env"]
    assert "--own-ms=48" in receiver["args"] and "--contention-ms=3" in receiver["args"]
    assert "--fixed-service-times" not in receiver["args"]
    sender = find(docs, "Deployment", "rel-jiriaf-stream-sender")["spec"]["template"]["spec"]
    args = sender["containers"][0]["args"]
    assert "--service=rel-jiriaf-stream-receiver" in args and "--rate=150" in args and "--regular" not in args
    assert sender["volumes"][0]["secret"]["secretName"] == "jiriaf-workloads-kubeconfig"
    binding = find(docs, "RoleBinding", "rel-jiriaf-stream-endpoints-reader")
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "rel-jiriaf-stream",
        "namespace": "stream",
    }


def test_chart_values_change_what_runs() -> None:
    docs = render(
        "receiver.threads=32",
        "receiver.paused=true",
        "receiver.fixedServiceTimes=true",
        "sender.target=10.1.2.3:7000",
        "sender.schedule=paper:10",
        "sender.poisson=false",
        "rbac.create=false",
        "metrics.scrape=false",
    )
    check_workloads(docs)
    assert not any(d["kind"] in ("Role", "RoleBinding", "ServiceAccount") for d in docs)
    receiver = find(docs, "Deployment", "rel-jiriaf-stream-receiver")["spec"]["template"]
    assert {"name": "THREADS", "value": "32"} in receiver["spec"]["containers"][0]["env"]
    assert "--paused" in receiver["spec"]["containers"][0]["args"]
    assert "--fixed-service-times" in receiver["spec"]["containers"][0]["args"]
    assert "annotations" not in receiver["metadata"]
    sender = find(docs, "Deployment", "rel-jiriaf-stream-sender")["spec"]["template"]["spec"]
    args = sender["containers"][0]["args"]
    assert "--target=10.1.2.3:7000" in args and "--schedule=paper:10" in args and "--regular" in args
    assert not any(a.startswith(("--service", "--rate")) for a in args)
    assert "volumes" not in sender and "serviceAccountName" not in sender  # a direct target needs no API


def test_chart_in_cluster_discovery_and_no_sender() -> None:
    docs = render("discovery.kubeconfigSecret=", "discovery.source=endpointslices")
    sender = find(docs, "Deployment", "rel-jiriaf-stream-sender")["spec"]["template"]["spec"]
    assert "volumes" not in sender and sender["serviceAccountName"] == "rel-jiriaf-stream"
    assert "--source=endpointslices" in sender["containers"][0]["args"]
    assert not any(e["name"] == "KUBECONFIG" for e in sender["containers"][0]["env"])
    only_receiver = render("sender.enabled=false")
    assert not any("sender" in d["metadata"]["name"] for d in only_receiver)
