"""The paper's HPA experiment on a JRM against the real controller-manager and metrics-server.

``deploy/hpa`` runs on a JRM in per-pod address mode: the CPU-burning http-server Deployment with an
autoscaling/v2 HPA at 30% CPU, and the load balancer in front of it. Load from the load generator
through the balancer makes the HPA scale the Deployment up; after the load stops it scales back to
one replica (the session's controller-manager runs with a 20 s downscale stabilisation window and a
5 s sync period). CPU usage reaches the HPA through the JRM's ``/metrics/resource`` and
metrics-server. Load and replicas are bounded (4 replicas, 15 requests/s of 10 ms CPU each).
"""

from __future__ import annotations

import base64
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client, KubeConfig
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, Secret, ServiceAccount

from jiriaf.devcluster.cluster import free_port
from jiriaf.kube.raw import raw_client
from jiriaf.workloads.hpa_experiment import HpaRecorder, LoadProcess, format_timeline, hpa_documents
from support import eventually

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
MAX_REPLICAS = 4


@pytest.fixture()
def client(kubeconfig: Path) -> Client:
    return Client(KubeConfig.from_file(kubeconfig), field_manager="jiriaf-tests")


@pytest.fixture()
def ns(client: Client, kubeconfig: Path) -> Iterator[str]:
    name = f"hpa-{uuid.uuid4().hex[:8]}"
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    eventually(lambda: client.get(ServiceAccount, "default", namespace=name), what="default ServiceAccount")
    client.create(
        Secret(
            metadata=ObjectMeta(name="jiriaf-workloads-kubeconfig", namespace=name),
            data={"config": base64.b64encode(kubeconfig.read_bytes()).decode()},
        )
    )
    yield name
    client.delete(Namespace, name)


def test_hpa_scales_http_servers_on_a_jrm_up_under_load_and_back_down(
    client: Client, ns: str, kubeconfig: Path, jrm_factory: Callable[..., Any], tmp_path: Path
) -> None:
    jrm = jrm_factory(JIRIAF_ADDRESS_MODE="per-pod", JIRIAF_METRICS_INTERVAL="2").start()
    jrm.wait_ready(client)
    ports = {8080: free_port(), 8090: free_port()}
    docs = hpa_documents(
        REPO / "deploy" / "hpa",
        python=sys.executable,
        namespace=ns,
        node_name=jrm.node_name,
        ports=ports,
        work_ms=10,
        max_replicas=MAX_REPLICAS,
    )
    for doc in docs:
        client.create(from_dict(doc))

    def lb_address() -> str | None:
        pods: list[Any] = list(client.list(Pod, namespace=ns, labels={"app": "http-lb"}))
        ready = [
            p
            for p in pods
            if p.status.podIP
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return f"http://{ready[0].status.podIP}:{ports[8090]}" if ready else None

    lb = eventually(lb_address, timeout=120, what="the load balancer Ready")
    assert lb.startswith("http://127.")
    recorder = HpaRecorder(client, raw_client(kubeconfig), ns)
    # the HPA has read the idle pod's CPU before the load starts
    eventually(
        lambda: recorder.sample("idle").utilization is not None,
        timeout=180,
        interval=5,
        what="the HPA measuring CPU",
    )
    assert recorder.samples[-1].current == 1

    load = LoadProcess(f"{lb}/", rate=15, concurrency=4, duration=600, log=tmp_path / "load.log")
    try:
        eventually(
            lambda: (recorder.sample("load").ready or 0) >= 2,
            timeout=300,
            interval=5,
            what="the HPA scaling the Deployment up",
        )
        # keep the load a little longer, so the timeline shows the CPU spread over the replicas
        recorder.record("load", seconds=45)
    finally:
        summary = load.stop()
    assert summary.get("answered", 0) > 0
    peak = recorder.max_replicas()
    assert 2 <= peak <= MAX_REPLICAS
    # the scale-up came from CPU above the 30% target, measured through the JRM and metrics-server
    under_load = [s.utilization for s in recorder.samples if s.phase == "load" and s.utilization is not None]
    assert max(under_load) > 30
    eventually(
        lambda: (s := recorder.sample("cool-down")).current == 1 and s.desired == 1,
        timeout=300,
        interval=5,
        what="the HPA scaling back down to one replica",
    )
    assert (recorder.samples[-1].utilization or 0) < 30
    print(format_timeline(recorder.samples))
    print(f"load: {summary}")
