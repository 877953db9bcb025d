"""A real Prometheus scrapes JRMs and their pods with the configuration ``jiriaf monitor
prometheus-config`` generates, once per discovery mechanism: Debian's package with the targets
``jiriaf monitor file-sd`` keeps current, and upstream Prometheus (built by ``jiriaf dev build``
from the Go module proxy with Kubernetes discovery) finding them through the apiserver.

Two JRMs: one in shared address mode runs a ``stress --cpu 1`` pod, a pod with two processes (one
busy, one sleeping) and two app pods that share the node's address and expose metrics on different
ports; one in per-pod address mode runs a Deployment of two app replicas on the same port. PromQL
answers per-container CPU of the stress pod, per-process CPU inside the two-process pod, every app
pod's own metrics, and every expression of the Grafana dashboard. Debian's Prometheus has no
Kubernetes service discovery (removed by the packagers), hence the upstream build for that variant.
All servers listen on 127.0.0.0/8.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import Client
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Pod

from jiriaf.devcluster import build
from jiriaf.devcluster.cluster import free_port
from jiriaf.monitor.prometheus_server import PrometheusServer, find_prometheus
from support import eventually, not_none

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
TOLERATION = {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}
MONITOR = [sys.executable, "-c", "from jiriaf.monitor.commands import app; app()"]

# a minimal app exporter: GET /metrics answers one gauge naming the pod that serves it
APP_EXPORTER = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('demo_app_up{source="%s"} 1\\n' % os.environ["HOSTNAME"]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ["POD_IP"], int(os.environ["PORT"])), H).serve_forever()
"""


def app_container(port: int, port_name: str = "metrics") -> dict[str, Any]:
    return {
        "name": "app",
        "image": "python",
        "command": [sys.executable, "-c", APP_EXPORTER],
        "env": [{"name": "PORT", "value": str(port)}],
        "ports": [{"containerPort": port, "name": port_name}],
    }


def on(node: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"nodeSelector": {"kubernetes.io/hostname": node}, "tolerations": [TOLERATION], **spec}


def create(client: Client, ns: str, doc: dict[str, Any]) -> None:
    doc.setdefault("metadata", {})["namespace"] = ns
    client.create(from_dict(doc))


def pod(
    node: str, name: str, containers: list[dict[str, Any]], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": on(node, {"containers": containers}),
    }


@pytest.fixture()
def monitor_dir(tmp_path: Path) -> Path:
    find_prometheus()  # a clear error naming the Debian package if it is missing
    return tmp_path / "prometheus"


@pytest.fixture()
def file_sd(monitor_dir: Path, kubeconfig: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``jiriaf monitor file-sd`` refreshing the target files every 2 s, stopped by pid at the end."""
    log = (monitor_dir.parent / "file-sd.log").open("wb")
    proc = subprocess.Popen(
        [
            *MONITOR,
            "file-sd",
            "--dir",
            str(monitor_dir / "targets"),
            "--interval",
            "2",
            "--kubeconfig",
            str(kubeconfig),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)
    log.close()


def promql_values(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}


@pytest.mark.parametrize("discovery", ["file", "kubernetes"])
def test_prometheus_scrapes_jrms_and_pods_with_the_generated_configuration(
    client: Client,
    ns: str,
    kubeconfig: Path,
    jrm_factory: Callable[..., Any],
    monitor_dir: Path,
    discovery: str,
    request: pytest.FixtureRequest,
) -> None:
    if discovery == "file":
        request.getfixturevalue("file_sd")  # keeps the target files current until the test ends
        binary = find_prometheus()
    else:
        binary = str(build.ensure_built(["prometheus"])["prometheus"])  # cached after the first build
    shared = jrm_factory(JIRIAF_METRICS_INTERVAL="2").start()
    per_pod = jrm_factory(
        JIRIAF_METRICS_INTERVAL="2", JIRIAF_ADDRESS_MODE="per-pod", JIRIAF_POD_CIDR="127.92.0.0/16"
    ).start()
    shared.wait_ready(client)
    per_pod.wait_ready(client)
    a = shared.node_name
    create(
        client,
        ns,
        pod(a, "stress", [{"name": "stress", "image": "stress", "command": ["stress", "--cpu", "1"]}]),
    )
    busy_then_sleep = f"{sys.executable} -c 'while True: pass' & sleep 3600 & wait"
    create(
        client, ns, pod(a, "two", [{"name": "work", "image": "sh", "command": ["sh", "-c", busy_then_sleep]}])
    )
    ports = (free_port(), free_port())  # the two shared-address pods need different ports
    create(client, ns, pod(a, "app-a", [app_container(ports[0])]))
    # the second declares its port by annotation rather than by name
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(ports[1])}
    create(client, ns, pod(a, "app-b", [app_container(ports[1], "http")], annotations))
    create(
        client,
        ns,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "replicas"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "replicas"}},
                "template": {
                    "metadata": {"labels": {"app": "replicas"}},
                    "spec": on(per_pod.node_name, {"containers": [app_container(19100)]}),
                },
            },
        },
    )

    def all_running() -> bool:
        pods = list(client.list(Pod, namespace=ns))
        return len(pods) == 6 and all(not_none(p.status).phase == "Running" for p in pods)

    eventually(all_running, timeout=120, what="six Running pods")

    config = monitor_dir / "prometheus.yml"
    gen = subprocess.run(
        [
            *MONITOR,
            "prometheus-config",
            "--kubeconfig",
            str(kubeconfig),
            "-o",
            str(config),
            "--discovery",
            discovery,
            "--scrape-interval",
            "2s",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gen.returncode == 0, gen.stderr
    if discovery == "file":
        promtool = ["promtool", "check", "config", str(config)]
        check = subprocess.run(promtool, capture_output=True, text=True, timeout=60, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        eventually(
            lambda: (monitor_dir / "targets" / "jiriaf-pods.json").exists(), timeout=30, what="target files"
        )
    else:
        assert "kubernetes_sd_configs" in config.read_text()

    server = PrometheusServer(config, monitor_dir / "run", free_port(), binary=binary)
    server.start()
    try:
        ours = _check_queries(server, ns, shared.node_name, per_pod.node_name)
        # each target came from the discovery under test
        meta = "__meta_kubernetes_" if discovery == "kubernetes" else "__meta_filepath"
        assert all(any(k.startswith(meta) for k in t["discoveredLabels"]) for t in ours), ours
    finally:
        server.stop()


def _check_queries(server: PrometheusServer, ns: str, node_a: str, node_b: str) -> list[dict[str, Any]]:
    """Check the targets and the answers; return the targets of this test's JRMs and pods."""

    def healthy_targets() -> list[dict[str, Any]] | None:
        ours = [
            t
            for t in server.targets()
            if t["labels"].get("node") in (node_a, node_b) or t["labels"].get("namespace") == ns
        ]
        jobs = sorted(t["labels"]["job"] for t in ours if t["health"] == "up")
        want = ["jiriaf-jrm"] * 2 + ["jiriaf-jrm-resource"] * 2 + ["jiriaf-pods"] * 4
        return ours if jobs == want else None

    ours: list[dict[str, Any]] = eventually(
        healthy_targets, timeout=120, interval=2, what="every JRM and app target up"
    )

    # per-container CPU of the stress pod
    stress_cpu = (
        f'sum by (pod) (rate(jiriaf_container_cpu_seconds_total{{namespace="{ns}", pod="stress"}}[20s]))'
    )
    cpu = eventually(
        lambda: r if (r := server.query(stress_cpu)) and float(r[0]["value"][1]) > 0.1 else None,
        timeout=90,
        interval=2,
        what="stress CPU",
    )
    assert float(cpu[0]["value"][1]) < 2.1
    # the kubelet-compatible figures too (scraped with their own timestamps)
    resource = server.query(f'container_cpu_usage_seconds_total{{namespace="{ns}", pod="stress"}}')
    assert resource and float(resource[0]["value"][1]) > 0 and resource[0]["metric"]["node"] == node_a

    # per-process CPU inside the pod that runs two processes
    per_process = f'rate(jiriaf_process_cpu_seconds_total{{namespace="{ns}", pod="two", mode="user"}}[20s])'

    def processes() -> dict[str, tuple[str, float]] | None:
        rows = {
            r["metric"]["pid"]: (r["metric"]["name"], float(r["value"][1])) for r in server.query(per_process)
        }
        busy = [n for n, v in rows.values() if v > 0.1]
        return rows if len(rows) >= 4 and busy else None

    rows = eventually(processes, timeout=90, interval=2, what="per-process CPU of the two-process pod")
    busy = {n for n, v in rows.values() if v > 0.1}
    assert all(n.startswith("python") for n in busy)
    assert any(n == "sleep" and v == 0.0 for n, v in rows.values())
    labels = {k for r in server.query(per_process) for k in r["metric"]}
    assert {"namespace", "pod", "container", "pgid", "pid", "name", "node"} <= labels

    # every app pod scraped at its own address and port: two share the node address, two replicas one port
    apps = server.query(f'demo_app_up{{namespace="{ns}"}}')
    sources = {r["metric"]["pod"]: (r["metric"]["source"], r["metric"]["instance"]) for r in apps}
    assert (
        sorted(sources) == sorted(["app-a", "app-b", *[p for p in sources if p.startswith("replicas-")]])
        and len(sources) == 4
    )
    assert all(source == name for name, (source, _) in sources.items())  # each target reached its own pod
    instances = [inst for _, inst in sources.values()]
    assert len(set(instances)) == 4
    replica_hosts = {
        inst.rsplit(":", 1)[0] for name, (_, inst) in sources.items() if name.startswith("replicas-")
    }
    assert len(replica_hosts) == 2 and all(h.startswith("127.92.") for h in replica_hosts)

    # the JRMs' own health
    running = promql_values(server.query('jiriaf_jrm_pods{phase="Running"}'))
    by_node = {dict(k)["node"]: v for k, v in running.items() if dict(k)["node"] in (node_a, node_b)}
    assert by_node == {node_a: 4.0, node_b: 2.0}

    # every dashboard expression is valid PromQL over metrics that exist
    dashboard = json.loads((REPO / "deploy" / "grafana" / "jiriaf-dashboard.json").read_text())
    answered = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\$__rate_interval", "20s", target["expr"])
            expr = (
                expr.replace('"$node"', f'"{node_a}|{node_b}"')
                .replace('"$namespace"', f'"{ns}"')
                .replace('"$pod"', '".*"')
            )
            answered += bool(server.query(expr))  # raises on a PromQL error
    assert answered >= 15
    return ours


def test_generated_kubernetes_discovery_config_is_complete(kubeconfig: Path, tmp_path: Path) -> None:
    """The Kubernetes-discovery variant (for upstream Prometheus builds) names the apiserver and files."""
    out = tmp_path / "k8s" / "prometheus.yml"
    gen = subprocess.run(
        [*MONITOR, "prometheus-config", "--kubeconfig", str(kubeconfig), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gen.returncode == 0, gen.stderr
    config = yaml.safe_load(out.read_text())
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    for job in config["scrape_configs"]:
        sd = job["kubernetes_sd_configs"][0]
        assert sd["api_server"] == server
        for key in ("ca_file", "cert_file", "key_file"):
            assert Path(sd["tls_config"][key]).is_file()
