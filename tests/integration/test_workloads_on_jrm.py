"""The workloads as pods on a real JRM against the real control plane: the stream sender and receiver
(plain manifests and the Helm chart), the receiver's thread switch (control endpoint and Deployment
rollout), and the load balancer following a Service through scale-up and scale-down and following an
EndpointSlice.

The JRM runs in per-pod address mode, so every pod has its own loopback address (127.x.y.z) and the
replicas of a Deployment share a port. All traffic goes to 127.0.0.0/8; the EndpointSlice test uses
TEST-NET addresses (192.0.2.0/24) that only appear in the balancer's backend list, never contacted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client, KubeConfig
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, Pod, Secret, ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice

from jiriaf.devcluster.cluster import free_port
from jiriaf.workloads.manifests import for_local_jrm, load_documents
from support import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KUBECONFIG_SECRET = "jiriaf-workloads-kubeconfig"


@pytest.fixture()
def client(kubeconfig: Path) -> Client:
    return Client(KubeConfig.from_file(kubeconfig), field_manager="jiriaf-tests")


@pytest.fixture()
def ns(client: Client, kubeconfig: Path) -> Iterator[str]:
    """A namespace holding the kubeconfig Secret the workloads read (JRM pods have no SA token)."""
    name = f"w-{uuid.uuid4().hex[:8]}"
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    eventually(lambda: client.get(ServiceAccount, "default", namespace=name), what="default ServiceAccount")
    client.create(
        Secret(
            metadata=ObjectMeta(name=KUBECONFIG_SECRET, namespace=name),
            data={"config": base64.b64encode(kubeconfig.read_bytes()).decode()},
        )
    )
    yield name
    client.delete(Namespace, name)


@pytest.fixture()
def node(jrm_factory: Callable[..., Any], client: Client) -> Any:
    jrm = jrm_factory(JIRIAF_ADDRESS_MODE="per-pod").start()
    jrm.wait_ready(client)
    return jrm


def apply(client: Client, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        client.create(from_dict(doc))


def ready_pod(client: Client, ns: str, selector: dict[str, Any], timeout: float = 120) -> Any:
    """The one Ready pod matching ``selector`` (with an address)."""

    def check() -> Any:
        listed: list[Any] = list(client.list(Pod, namespace=ns, labels=selector))
        pods = [p for p in listed if p.metadata.deletionTimestamp is None]
        ready = [
            p
            for p in pods
            if p.status.podIP
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return ready[0] if len(ready) == 1 and len(pods) == 1 else None

    return eventually(check, timeout=timeout, what=f"one Ready pod {selector} in {ns}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body: bytes = resp.read()
        return body.decode()


def post_json(url: str, body: Any) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def stream_ports() -> dict[int, int]:
    return {7000: free_port(), 8080: free_port(), 8081: free_port()}


# ------------------------------------------------------------------------------------------ stream


def test_stream_manifests_run_as_two_pods_and_events_flow(client: Client, ns: str, node: Any) -> None:
    ports = stream_ports()
    docs = for_local_jrm(
        load_documents(sorted((REPO / "deploy" / "stream").glob("*.yaml"))),
        python=sys.executable,
        namespace=ns,
        node_name=node.node_name,
        ports=ports,
    )
    apply(client, docs)
    receiver = ready_pod(client, ns, {"app.kubernetes.io/component": "receiver"})
    sender = ready_pod(client, ns, {"app.kubernetes.io/component": "sender"})
    assert receiver.status.podIP != sender.status.podIP  # per-pod addresses
    assert receiver.status.podIP.startswith("127.")
    base = f"http://{receiver.status.podIP}:{ports[8080]}"
    # the sender found the receiver through the apiserver (Service -> pods) and events flow
    status = eventually(
        lambda: (s := get_json(base + "/status"))["processed"] >= 50 and s, timeout=120, what="50 events"
    )
    assert status["threads"] == 16 and status["dropped"] == 0
    metrics = get_text(base + "/metrics")
    assert metric(metrics, "jiriaf_stream_processed_total") >= 50
    assert metric(metrics, "jiriaf_stream_arrivals_total") >= metric(metrics, "jiriaf_stream_processed_total")
    assert metric(metrics, "jiriaf_stream_event_latency_seconds_count") >= 50
    assert metric(metrics, "jiriaf_stream_threads") == 16
    sender_status = get_json(f"http://{sender.status.podIP}:{ports[8081]}/status")
    assert sender_status["connected"] is True
    assert sender_status["target"] == f"{receiver.status.podIP}:{ports[7000]}"
    # the twin's runtime switch: no restart, same pod
    assert post_json(base + "/control", {"threads": 32})["threads"] == 32
    eventually(lambda: get_json(base + "/status")["alive_threads"] == 32, timeout=30, what="32 workers")
    assert metric(get_text(base + "/metrics"), "jiriaf_stream_threads") == 32
    again: Any = client.get(Pod, receiver.metadata.name, namespace=ns)
    assert again.status.containerStatuses[0].restartCount == 0


def helm() -> str:
    found = os.environ.get("JIRIAF_HELM") or shutil.which("helm")
    if not found:
        pytest.skip("helm is not installed (.ci/run installs it with 'go install helm.sh/helm/v3/cmd/helm')")
    return found


def test_stream_chart_installs_and_a_threads_rollout_reaches_the_receiver(
    client: Client, ns: str, node: Any, kubeconfig: Path
) -> None:
    binary = helm()
    ports = stream_ports()
    chart = REPO / "deploy" / "charts" / "jiriaf-stream"
    settings = {
        "python": sys.executable,
        "receiver.port": ports[7000],
        "receiver.httpPort": ports[8080],
        "sender.httpPort": ports[8081],
        "sender.rate": 80,
        "nodeSelector.kubernetes\\.io/hostname": node.node_name,
    }
    argv = [binary, "install", "demo", str(chart), "--namespace", ns, "--kubeconfig", str(kubeconfig)]
    for key, value in settings.items():
        argv += ["--set-string" if key == "python" else "--set", f"{key}={value}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    try:
        receiver = ready_pod(client, ns, {"app.kubernetes.io/component": "receiver"})
        base = f"http://{receiver.status.podIP}:{ports[8080]}"
        eventually(lambda: get_json(base + "/status")["processed"] > 0, timeout=120, what="events processed")
        assert get_json(base + "/status")["threads"] == 16
        # the twin's other actuator: patch THREADS in the Deployment (a Recreate rollout)
        client.patch(
            Deployment,
            "demo-jiriaf-stream-receiver",
            {"spec": {"template": {"spec": {"containers": [{"name": "receiver", "env": [
                {"name": "THREADS", "value": "32"}]}]}}}},
            namespace=ns,
        )  # fmt: skip
        fresh = eventually(
            lambda: (
                (
                    p := ready_pod(client, ns, {"app.kubernetes.io/component": "receiver"}, timeout=5)
                ).metadata.name
                != receiver.metadata.name
                and p
            ),
            timeout=180,
            what="the rolled-out receiver pod",
        )
        fresh_base = f"http://{fresh.status.podIP}:{ports[8080]}"
        eventually(lambda: get_json(fresh_base + "/status")["threads"] == 32, timeout=60, what="32 threads")
        # the sender follows the new receiver pod and events flow again
        eventually(
            lambda: get_json(fresh_base + "/status")["processed"] > 0, timeout=120, what="events again"
        )
    finally:
        subprocess.run(
            [binary, "uninstall", "demo", "--namespace", ns, "--kubeconfig", str(kubeconfig)],
            capture_output=True,
            timeout=120,
            check=False,
        )


# ------------------------------------------------------------------------------------------ balancer


def answers_from(url: str, n: int) -> set[str]:
    """The pod names that answered ``n`` requests through the balancer."""
    return {get_text(url).split()[0] for _ in range(n)}


def test_load_balancer_follows_the_service_through_scale_up_and_down(
    client: Client, ns: str, node: Any
) -> None:
    ports = {8080: free_port(), 8090: free_port()}
    docs = for_local_jrm(
        load_documents(
            [REPO / "deploy" / "hpa" / f for f in ("rbac.yaml", "http-server.yaml", "load-balancer.yaml")]
        ),
        python=sys.executable,
        namespace=ns,
        node_name=node.node_name,
        ports=ports,
        env={"WORK_MS": "1"},
    )
    apply(client, docs)
    lb = ready_pod(client, ns, {"app": "http-lb"})
    lb_url = f"http://{lb.status.podIP}:{ports[8090]}"

    def backends() -> list[str]:
        return [f"{b['address']}:{b['port']}" for b in get_json(lb_url + "/-/backends")["backends"]]

    eventually(lambda: len(backends()) == 1, timeout=120, what="one backend")
    assert len(answers_from(lb_url + "/", 5)) == 1

    client.patch(Deployment, "http-server", {"spec": {"replicas": 3}}, namespace=ns)
    eventually(lambda: len(backends()) == 3, timeout=120, what="three backends after scale-up")
    assert all(b.startswith("127.") and b.endswith(f":{ports[8080]}") for b in backends())
    names = answers_from(lb_url + "/", 9)  # round-robin: three requests per replica
    listed: list[Any] = list(client.list(Pod, namespace=ns, labels={"app": "http-server"}))
    pods = {p.metadata.name for p in listed}
    assert names == pods and len(names) == 3

    client.patch(Deployment, "http-server", {"spec": {"replicas": 1}}, namespace=ns)
    eventually(lambda: len(backends()) == 1, timeout=120, what="one backend after scale-down")
    survivors = answers_from(lb_url + "/", 6)
    assert len(survivors) == 1 and survivors <= names
    metrics = get_text(lb_url + "/-/metrics")
    assert metric(metrics, "jiriaf_lb_backends") == 1
    assert metric(metrics, "jiriaf_lb_backend_changes_total") >= 3


def test_load_balancer_follows_an_endpointslice(
    client: Client, ns: str, kubeconfig: Path, tmp_path: Path
) -> None:
    apply(
        client,
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "external", "namespace": ns},
                "spec": {"ports": [{"name": "http", "port": 80}]},  # no selector: slices are ours
            }
        ],
    )

    def slice_of(*endpoints: tuple[str, bool]) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "external-1",
                "namespace": ns,
                "labels": {
                    "kubernetes.io/service-name": "external",
                    "endpointslice.kubernetes.io/managed-by": "jiriaf-tests",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": r}} for a, r in endpoints],
        }

    apply(client, [slice_of(("192.0.2.10", True), ("192.0.2.11", False))])
    port = free_port()
    log = tmp_path / "lb.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "jiriaf.workloads.loadbalancer",
                "--service", "external", "--namespace", ns, "--kubeconfig", str(kubeconfig),
                "--host", "127.0.0.1", "--port", str(port),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/-/backends"

        def backends() -> list[str]:
            return [f"{b['address']}:{b['port']}" for b in get_json(url)["backends"]]

        eventually(lambda: backends() == ["192.0.2.10:8080"], timeout=60, what="the ready endpoint")
        client.patch(
            EndpointSlice,
            "external-1",
            {
                "endpoints": slice_of(("192.0.2.10", True), ("192.0.2.11", True), ("192.0.2.12", True))[
                    "endpoints"
                ]
            },
            namespace=ns,
        )
        eventually(lambda: len(backends()) == 3, timeout=60, what="three endpoints after the change")
        client.delete(EndpointSlice, "external-1", namespace=ns)
        eventually(lambda: backends() == [], timeout=60, what="no endpoints after deletion")
        # with no backend the balancer answers 503 itself (nothing is sent anywhere)
        with pytest.raises(urllib.error.HTTPError) as info:
            get_text(f"http://127.0.0.1:{port}/")
        assert info.value.code == 503
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        print(f"[loadbalancer] log:\n{log.read_text()[-3000:]}")
    assert proc.returncode == 0
