"""JRM metrics and pod addresses against the real control plane: ``kubectl top`` through the real
metrics-server and apiserver aggregation, ``/stats/summary`` and ``/metrics`` of a running JRM, and
the per-pod address mode (no port collisions, POD_IP, EndpointSlices, addresses kept across a JRM
restart).

Every server a pod starts binds a 127.0.0.0/8 address. The EndpointSlice test uses TEST-NET-1
addresses (192.0.2.0/24), which only appear in the API and are never contacted.
"""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from lightkube import Client
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Event, Pod
from lightkube.resources.discovery_v1 import EndpointSlice
from prometheus_client.parser import text_string_to_metric_families

from jiriaf.devcluster.build import kubectl
from jiriaf.monitor.prometheus import api_access_from_kubeconfig
from support import eventually, not_none

pytestmark = pytest.mark.integration

TOLERATION = {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}
PER_POD_CIDR = "127.91.0.0/16"


# --------------------------------------------------------------------------------------------- helpers


def apply(client: Client, ns: str, doc: dict[str, Any]) -> Any:
    doc.setdefault("metadata", {})["namespace"] = ns
    return client.create(from_dict(doc))


def pod_on(node: str, name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [TOLERATION],
            "containers": containers,
            **spec,
        },
    }


def deployment(node: str, name: str, replicas: int, container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [TOLERATION],
                    "containers": [container],
                },
            },
        },
    }


def running_pods(client: Client, ns: str, app: str, count: int, timeout: float = 120) -> list[Any]:
    def ready() -> list[Any] | None:
        pods = [
            p
            for p in client.list(Pod, namespace=ns, labels={"app": app})
            if not_none(p.status).phase == "Running" and not_none(p.status).podIP
        ]
        return pods if len(pods) == count else None

    return eventually(ready, timeout=timeout, what=f"{count} Running pods of {app}")


def kubectl_run(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl(), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def millicores(text: str) -> float:
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


def mebibytes(text: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text) / 2**20


class Kubelet:
    """HTTPS requests to a JRM's kubelet port with the admin client certificate of the kubeconfig."""

    def __init__(self, jrm: Any, kubeconfig: Path, secrets: Path) -> None:
        access = api_access_from_kubeconfig(kubeconfig, secrets)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the JRM's serving certificate is self-signed
        ctx.load_cert_chain(access.cert_file or "", access.key_file or "")
        self.client = httpx2.Client(
            base_url=f"https://127.0.0.1:{jrm.env['KUBELET_PORT']}", verify=ctx, timeout=30
        )

    def get(self, path: str) -> httpx2.Response:
        resp = self.client.get(path)
        assert resp.status_code == 200, resp.text
        return resp

    def families(self, path: str) -> dict[str, list[Any]]:
        return {f.name: f.samples for f in text_string_to_metric_families(self.get(path).text)}


@pytest.fixture()
def stress_node(jrm_factory: Callable[..., Any], client: Client, ns: str) -> Any:
    jrm = jrm_factory(JIRIAF_METRICS_INTERVAL="2").start()
    jrm.wait_ready(client)
    apply(
        client,
        ns,
        pod_on(
            jrm.node_name,
            "stress",
            [{"name": "stress", "image": "stress", "command": ["stress", "--cpu", "1"]}],
        ),
    )
    apply(
        client,
        ns,
        pod_on(
            jrm.node_name,
            "two",
            [
                {
                    "name": "work",
                    "image": "sh",
                    "command": ["sh", "-c", f"{sys.executable} -c 'while True: pass' & sleep 3600 & wait"],
                }
            ],
        ),
    )
    for name in ("stress", "two"):

        def running(n: str = name) -> bool:
            return not_none(client.get(Pod, n, namespace=ns).status).phase == "Running"

        eventually(running, timeout=90, what=f"{name} Running")
    return jrm


# ------------------------------------------------------------------------------------------ kubectl top


def test_kubectl_top_shows_the_stress_pod_and_its_node(stress_node: Any, ns: str, kubeconfig: Path) -> None:
    def top_pod() -> dict[str, tuple[float, float]] | None:
        r = kubectl_run(kubeconfig, "top", "pod", "-n", ns, "--no-headers")
        if r.returncode != 0:
            return None
        rows = {
            line.split()[0]: (millicores(line.split()[1]), mebibytes(line.split()[2]))
            for line in r.stdout.splitlines()
            if line.strip()
        }
        return rows if "stress" in rows and rows["stress"][0] >= 100 else None

    rows = eventually(top_pod, timeout=150, interval=3, what="kubectl top pod with the stress pod")
    cpu, memory = rows["stress"]
    assert 100 <= cpu <= 2100  # one hog on a shared machine: up to one core (plus rounding)
    assert 0 < memory < 512

    def top_node() -> tuple[float, float] | None:
        r = kubectl_run(kubeconfig, "top", "node", stress_node.node_name, "--no-headers")
        if r.returncode != 0:
            return None
        fields = r.stdout.split()
        return (millicores(fields[1]), mebibytes(fields[3])) if millicores(fields[1]) >= 100 else None

    node_cpu, node_memory = eventually(top_node, timeout=150, interval=3, what="kubectl top node")
    assert node_cpu >= 100 and node_memory > 0
    r = kubectl_run(kubeconfig, "top", "pod", "-n", ns, "--containers", "--no-headers")
    assert r.returncode == 0 and "stress" in r.stdout and "work" in r.stdout


# ---------------------------------------------------------------------------------- endpoints of the JRM


def test_stats_summary_has_real_node_pod_and_container_figures(
    stress_node: Any, ns: str, kubeconfig: Path, tmp_path: Path
) -> None:
    kubelet = Kubelet(stress_node, kubeconfig, tmp_path / "s")

    def summary() -> dict[str, Any] | None:
        s: dict[str, Any] = kubelet.get("/stats/summary").json()
        pods = {p["podRef"]["name"]: p for p in s["pods"] if p["podRef"]["namespace"] == ns}
        if "stress" in pods and pods["stress"]["cpu"].get("usageNanoCores", 0) > 0:
            return s
        return None

    s = eventually(summary, timeout=60, interval=1, what="a summary with the stress pod's CPU rate")
    node = s["node"]
    assert node["nodeName"] == stress_node.node_name
    assert node["cpu"]["usageCoreNanoSeconds"] > 0 and node["memory"]["workingSetBytes"] > 0
    assert node["fs"]["capacityBytes"] > 0 and node["rlimit"]["curproc"] > 0
    pods = {p["podRef"]["name"]: p for p in s["pods"] if p["podRef"]["namespace"] == ns}
    stress = pods["stress"]
    assert stress["cpu"]["usageNanoCores"] > 0.1e9
    (container,) = stress["containers"]
    assert container["name"] == "stress" and container["memory"]["workingSetBytes"] > 0
    assert stress["process_stats"]["process_count"] >= 3  # shim, stress, its hog
    assert pods["two"]["process_stats"]["process_count"] >= 4


def test_metrics_endpoint_reports_health_and_per_process_figures(
    stress_node: Any, client: Client, ns: str, kubeconfig: Path, tmp_path: Path
) -> None:
    apply(
        client,
        ns,
        pod_on(
            stress_node.node_name,
            "fails",
            [{"name": "c", "image": "sh", "command": ["sh", "-c", "exit 3"]}],
            restartPolicy="Never",
        ),
    )
    eventually(
        lambda: not_none(client.get(Pod, "fails", namespace=ns).status).phase == "Failed",
        timeout=60,
        what="pod fails",
    )
    kubelet = Kubelet(stress_node, kubeconfig, tmp_path / "s")

    def families() -> dict[str, list[Any]] | None:
        fams = kubelet.families("/metrics")
        procs = [
            s
            for s in fams["jiriaf_process_cpu_seconds"]
            if s.labels["pod"] == "two" and s.labels["mode"] == "user"
        ]
        return fams if any(s.value > 0.2 for s in procs) else None

    fams = eventually(
        families, timeout=60, interval=1, what="per-process CPU of the pod running two processes"
    )
    phases = {s.labels["phase"]: s.value for s in fams["jiriaf_jrm_pods"]}
    assert phases["Running"] == 2 and phases["Failed"] == 1
    assert fams["jiriaf_jrm_container_starts"][0].value == 3
    assert fams["jiriaf_jrm_container_failures"][0].value == 1
    assert fams["jiriaf_jrm_reconcile_duration_seconds"]  # the histogram
    count = next(s for s in fams["jiriaf_jrm_reconcile_duration_seconds"] if s.name.endswith("_count"))
    assert count.value > 0
    two = [
        s
        for s in fams["jiriaf_process_cpu_seconds"]
        if s.labels["pod"] == "two" and s.labels["mode"] == "user"
    ]
    by_pid = {s.labels["pid"]: (s.labels["name"], s.value) for s in two}
    names = sorted(n for n, _ in by_pid.values())
    assert "sleep" in names and any(n.startswith("python") for n in names) and len(by_pid) >= 4
    busy = [n for n, v in by_pid.values() if v > 0.2]
    assert busy and all(
        n.startswith("python") for n in busy
    )  # the CPU is the busy process's, not the sleeper's
    stress_pids = {s.labels["pid"] for s in fams["jiriaf_process_cpu_seconds"] if s.labels["pod"] == "stress"}
    assert stress_pids and stress_pids.isdisjoint(by_pid)
    containers = {
        (s.labels["pod"], s.labels["container"]) for s in fams["jiriaf_container_memory_working_set_bytes"]
    }
    assert {("stress", "stress"), ("two", "work")} <= containers
    resource = kubelet.families("/metrics/resource")
    cpu = {
        s.labels["pod"]: s.value
        for s in resource["container_cpu_usage_seconds"]
        if s.labels["namespace"] == ns
    }
    assert cpu["stress"] > 0 and cpu["two"] > 0 and "fails" not in cpu


# --------------------------------------------------------------------------------------- pod addresses

IP_SERVER = {
    "name": "web",
    "image": "python",
    "command": [
        "sh",
        "-c",
        'mkdir -p www && echo "$POD_IP" > www/ip && cd www && '
        f'exec {sys.executable} -m http.server --bind "$POD_IP" 18080',
    ],
    "ports": [{"containerPort": 18080, "name": "http"}],
}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:  # a 127.x address of a test pod
        return str(r.read().decode().strip())


def test_per_pod_addresses_let_replicas_share_a_port(
    jrm_factory: Callable[..., Any], client: Client, ns: str
) -> None:
    jrm = jrm_factory(JIRIAF_ADDRESS_MODE="per-pod", JIRIAF_POD_CIDR=PER_POD_CIDR).start()
    jrm.wait_ready(client)
    apply(client, ns, deployment(jrm.node_name, "web", 3, IP_SERVER))
    pods = running_pods(client, ns, "web", 3)
    ips = [p.status.podIP for p in pods]
    assert len(set(ips)) == 3
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(PER_POD_CIDR) for ip in ips)
    assert all(p.status.podIPs[0].ip == p.status.podIP for p in pods)
    # each replica listens on the same port of its own address and knows that address as $POD_IP
    for ip in ips:

        def serves_its_address(ip: str = ip) -> bool:
            return fetch(f"http://{ip}:18080/ip") == ip

        assert eventually(serves_its_address, timeout=30, what=f"server on {ip}")
    assert all(cs.restartCount == 0 for p in pods for cs in p.status.containerStatuses)


def test_shared_address_replicas_collide_on_a_port(
    jrm_factory: Callable[..., Any], client: Client, ns: str
) -> None:
    jrm = jrm_factory().start()  # shared mode: every pod has the node's address
    jrm.wait_ready(client)
    apply(client, ns, deployment(jrm.node_name, "web", 2, IP_SERVER))

    def collided() -> bool:
        pods = list(client.list(Pod, namespace=ns, labels={"app": "web"}))
        restarts = [cs.restartCount for p in pods for cs in not_none(p.status).containerStatuses or []]
        return (
            len(pods) == 2
            and {not_none(p.status).podIP for p in pods} == {"127.0.0.1"}
            and max(restarts or [0]) > 0
        )

    eventually(collided, timeout=90, what="the second replica failing to bind the shared address")
    assert fetch("http://127.0.0.1:18080/ip") == "127.0.0.1"


def test_endpoint_slices_list_one_endpoint_per_pod(
    jrm_factory: Callable[..., Any], client: Client, ns: str
) -> None:
    # TEST-NET-1 addresses: accepted by the apiserver, never contacted (the pods only sleep)
    jrm = jrm_factory(JIRIAF_ADDRESS_MODE="per-pod", JIRIAF_POD_CIDR="192.0.2.0/24").start()
    jrm.wait_ready(client)
    sleeper = {
        "name": "c",
        "image": "sleep",
        "command": ["sleep", "3600"],
        "ports": [{"containerPort": 8080, "name": "http"}],
    }
    apply(client, ns, deployment(jrm.node_name, "svc", 3, sleeper))
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc"},
        "spec": {"selector": {"app": "svc"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    apply(client, ns, service)
    pods = running_pods(client, ns, "svc", 3)

    def endpoints() -> dict[str | None, str] | None:
        slices = list(client.list(EndpointSlice, namespace=ns, labels={"kubernetes.io/service-name": "svc"}))
        eps = {
            not_none(e.targetRef).name: e.addresses[0]
            for s in slices
            for e in s.endpoints or []
            if not_none(e.conditions).ready
        }
        return eps if len(eps) == 3 else None

    eps = eventually(endpoints, timeout=60, what="three ready endpoints")
    assert eps == {p.metadata.name: p.status.podIP for p in pods}
    assert len(set(eps.values())) == 3 and all(ip.startswith("192.0.2.") for ip in eps.values())


def test_loopback_pod_addresses_are_refused_in_endpoint_slices(
    jrm_factory: Callable[..., Any], client: Client, ns: str
) -> None:
    """The finding docs/metrics.md reports: the apiserver rejects 127.0.0.0/8 in EndpointSlices."""
    jrm = jrm_factory(JIRIAF_ADDRESS_MODE="per-pod", JIRIAF_POD_CIDR=PER_POD_CIDR).start()
    jrm.wait_ready(client)
    sleeper = {
        "name": "c",
        "image": "sleep",
        "command": ["sleep", "3600"],
        "ports": [{"containerPort": 8080}],
    }
    apply(client, ns, deployment(jrm.node_name, "lo", 1, sleeper))
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "lo"},
        "spec": {"selector": {"app": "lo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    apply(client, ns, service)
    running_pods(client, ns, "lo", 1)

    def refused() -> bool:
        events = client.list(Event, namespace=ns, fields={"involvedObject.name": "lo"})
        return any(
            e.reason == "FailedToUpdateEndpointSlices" and "loopback" in (e.message or "") for e in events
        )

    eventually(refused, timeout=60, what="the EndpointSlice controller's loopback refusal")


def test_per_pod_address_survives_a_jrm_restart(
    jrm_factory: Callable[..., Any], client: Client, ns: str
) -> None:
    jrm = jrm_factory(JIRIAF_ADDRESS_MODE="per-pod", JIRIAF_POD_CIDR=PER_POD_CIDR).start()
    jrm.wait_ready(client)
    sleeper = {"name": "c", "image": "sleep", "command": ["sleep", "3600"]}
    apply(client, ns, pod_on(jrm.node_name, "keep", [sleeper]))
    ip = eventually(
        lambda: not_none(client.get(Pod, "keep", namespace=ns).status).podIP, timeout=60, what="an address"
    )
    jrm.kill9()
    again = type(jrm)(jrm.node_name, jrm.workdir, jrm.kubeconfig, jrm.log, jrm.env).start()
    try:
        again.wait_ready(client)
        apply(client, ns, pod_on(jrm.node_name, "new", [sleeper]))
        new_ip = eventually(
            lambda: not_none(client.get(Pod, "new", namespace=ns).status).podIP,
            timeout=60,
            what="an address for the new pod",
        )
        time.sleep(2)  # let the adopted pod's status settle
        keep = client.get(Pod, "keep", namespace=ns)
        status = not_none(keep.status)
        assert status.podIP == ip and not_none(status.containerStatuses)[0].restartCount == 0
        assert new_ip != ip
        stored = yaml.safe_load((jrm.workdir / ".addresses.json").read_text())
        assert stored["allocations"][not_none(keep.metadata).uid] == ip
    finally:
        assert again.terminate() == 0
