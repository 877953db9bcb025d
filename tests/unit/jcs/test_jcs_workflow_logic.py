"""Pure workflow logic of the JCS: pinning objects to the lease's nodes, pod summaries, the phase of
a workflow, activity, PromQL templates, metrics sums, request specs and durations."""

from __future__ import annotations

import copy
from datetime import UTC
from typing import Any

import pytest
from pydantic import ValidationError

from jiriaf.jcs.monitor import (
    PodSummary,
    is_active,
    job_state,
    pods_regex,
    substitute,
    sum_pod_metrics,
    summarize_pods,
    workflow_phase,
)
from jiriaf.jcs.schemas import ActionCall, RequestSpec, parse_duration
from jiriaf.jcs.workflows import collection_path, load_documents, render

pytestmark = pytest.mark.unit

DEPLOY: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"tier": "front"}, "resourceVersion": "12"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "nodeName": "somewhere",
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "jiriaf.nodetype", "operator": "In", "values": ["cpu"]}
                                    ]
                                },
                                {
                                    "matchExpressions": [
                                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["x"]}
                                    ]
                                },
                            ]
                        }
                    }
                },
                "containers": [{"name": "c", "image": "i"}],
            },
        },
    },
    "status": {"replicas": 3},
}


# ----------------------------------------------------------------------------- render


def test_render_pins_pods_to_the_lease_nodes_in_every_term() -> None:
    original = copy.deepcopy(DEPLOY)
    [obj] = render([DEPLOY], owner="ab12-r7", request_id=7, namespace="team", nodes=["n2", "n1"])
    assert original == DEPLOY  # input untouched
    assert obj["metadata"]["namespace"] == "team"
    assert obj["metadata"]["labels"] == {
        "tier": "front",
        "jiriaf.io/request": "7",
        "jiriaf.io/workflow": "ab12-r7",
        "app.kubernetes.io/managed-by": "jiriaf-jcs",
    }
    assert "resourceVersion" not in obj["metadata"] and "status" not in obj
    spec = obj["spec"]["template"]["spec"]
    assert "nodeName" not in spec
    assert obj["spec"]["template"]["metadata"]["labels"] == {
        "app": "web",
        "jiriaf.io/request": "7",
        "jiriaf.io/workflow": "ab12-r7",
    }
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    pin = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1", "n2"]}
    assert terms == [
        {"matchExpressions": [{"key": "jiriaf.nodetype", "operator": "In", "values": ["cpu"]}, pin]},
        {"matchExpressions": [pin]},
    ]
    assert spec["tolerations"] == [
        {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_render_pods_jobs_and_plain_objects() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {"template": {"spec": {}}},
    }
    cm: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c"},
        "data": {"a": "b"},
    }
    p, j, c = render([pod, job, cm], owner="o", request_id=1, namespace="default", nodes=["n"])
    assert p["metadata"]["labels"]["jiriaf.io/request"] == "1"
    assert p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n"]}]}
        ]
    }
    assert j["spec"]["template"]["metadata"]["labels"] == {
        "jiriaf.io/request": "1",
        "jiriaf.io/workflow": "o",
    }
    assert "affinity" in j["spec"]["template"]["spec"]
    assert c == {
        **cm,
        "metadata": {**cm["metadata"], "namespace": "default", "labels": c["metadata"]["labels"]},
    }
    assert "spec" not in c


def test_render_refuses_other_namespaces_kinds_and_no_nodes() -> None:
    with pytest.raises(ValueError, match="not in namespace default"):
        render(
            [{**DEPLOY, "metadata": {"name": "w", "namespace": "kube-system"}}],
            owner="o",
            request_id=1,
            namespace="default",
            nodes=["n"],
        )
    with pytest.raises(ValueError, match="kind 'ClusterRole' is not allowed"):
        render(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": "x"},
                }
            ],
            owner="o",
            request_id=1,
            namespace="default",
            nodes=["n"],
        )
    with pytest.raises(ValueError, match="lease's nodes"):
        render([DEPLOY], owner="o", request_id=1, namespace="default", nodes=[])


def test_paths_and_documents() -> None:
    assert collection_path("Pod", "a") == "/api/v1/namespaces/a/pods"
    assert collection_path("Deployment", "a") == "/apis/apps/v1/namespaces/a/deployments"
    assert (
        collection_path("HorizontalPodAutoscaler", "a")
        == "/apis/autoscaling/v2/namespaces/a/horizontalpodautoscalers"
    )
    text = "---\nkind: ConfigMap\n---\n\n---\nkind: List\nitems:\n- kind: Pod\n- kind: Service\n"
    assert [d["kind"] for d in load_documents(text)] == ["ConfigMap", "Pod", "Service"]


# ----------------------------------------------------------------------------- monitor


def pod(
    name: str,
    phase: str,
    *,
    owner: bool = True,
    restarts: int = 0,
    waiting: str | None = None,
    exit_code: int | None = None,
    node: str = "n1",
    ip: str = "127.0.0.1",
    deleting: bool = False,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if waiting:
        state = {"waiting": {"reason": waiting}}
    elif exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}}
    meta: dict[str, Any] = {"name": name}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet"}]
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {
            "phase": phase,
            "podIP": ip,
            "containerStatuses": [{"name": "c", "restartCount": restarts, "state": state}],
        },
    }


def test_summarize_pods() -> None:
    s = summarize_pods(
        [
            pod("a", "Running", restarts=2),
            pod("b", "Pending", waiting="ImagePullBackOff", node=""),
            pod("c", "Pending", waiting="ContainerCreating"),
            pod("d", "Succeeded", owner=False, exit_code=0, node="n2"),
            pod("e", "Failed", owner=False, exit_code=3),
            pod("f", "Running", deleting=True),
            pod("g", "Unknown"),
        ]
    )
    assert (s.total, s.pending, s.running, s.succeeded, s.failed, s.restarts) == (6, 3, 1, 1, 1, 2)
    assert s.names == ("a", "b", "c", "d", "e", "g")
    assert s.nodes == frozenset({"n1", "n2"})
    assert s.addresses == ("127.0.0.1",)
    assert s.bare_phases == ("Succeeded", "Failed")
    assert s.problems == ("b/c: ImagePullBackOff", "e/c: Error (exit 3)")


def test_job_state() -> None:
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "complete"
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "failed"
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "False"}]}}) == "active"
    assert job_state({}) == "active"


@pytest.mark.parametrize(
    ("kinds", "pods", "jobs", "phase"),
    [
        (["Job"], PodSummary(), [], "starting"),
        (["Job"], PodSummary(total=1, running=1), ["active"], "running"),
        (["Job", "ConfigMap"], PodSummary(total=1, succeeded=1), ["complete"], "succeeded"),
        (["Job"], PodSummary(total=2, failed=1, running=1), ["failed"], "failed"),
        (["Pod"], PodSummary(), [], "starting"),
        (["Pod"], PodSummary(total=1, succeeded=1, bare_phases=("Succeeded",)), [], "succeeded"),
        (
            ["Pod"],
            PodSummary(total=2, running=1, succeeded=1, bare_phases=("Succeeded", "Running")),
            [],
            "running",
        ),
        (["Pod"], PodSummary(total=1, failed=1, bare_phases=("Failed",)), [], "failed"),
        (["Deployment", "Job"], PodSummary(total=1, succeeded=1), ["complete"], "starting"),
        (["Deployment"], PodSummary(total=2, running=2), [], "running"),
        (["Service"], PodSummary(), [], "starting"),
    ],
)
def test_workflow_phase(kinds: list[str], pods: PodSummary, jobs: list[str], phase: str) -> None:
    assert workflow_phase(kinds, pods, jobs) == phase


@pytest.mark.parametrize(
    ("cpu", "activity", "active"),
    [
        (None, None, None),
        (0.5, None, True),
        (0.001, None, False),
        (0.001, 3.0, True),
        (None, 0.0, False),
        (None, 1, True),
    ],
)
def test_activity(cpu: float | None, activity: float | None, active: bool | None) -> None:
    assert is_active(cpu, 0.01, activity) is active


def test_promql_templates() -> None:
    assert pods_regex(["web-1", "a.b"]) == "web-1|a[.]b"
    assert pods_regex([]) == "^$"
    q = substitute(
        'sum(x{namespace="$namespace",pod=~"$pods",r="$request"})', namespace="ns", pods=["p"], request_id=4
    )
    assert q == 'sum(x{namespace="ns",pod=~"p",r="4"})'


def test_metrics_api_sums() -> None:
    items = [
        {
            "containers": [
                {"usage": {"cpu": "250m", "memory": "1Mi"}},
                {"usage": {"cpu": "500000000n", "memory": "1024Ki"}},
            ]
        },
        {"containers": [{"usage": {"cpu": "1", "memory": "0"}}]},
    ]
    assert sum_pod_metrics(items) == (1.75, 2 * 2**20)


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90),
        ("3600", 3600),
        ("1:30:00", 5400),
        ("05:00", 300),
        ("1-02:00:00", 93600),
        ("90m", 5400),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1.5h", 5400),
        (" 45 s ", 45),
    ],
)
def test_durations(value: object, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "1:99:00", True, None, "h"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_request_spec_checks() -> None:
    base: dict[str, Any] = {"name": "a", "walltime": "1h", "workflow": {"manifests": [DEPLOY]}}
    spec = RequestSpec.model_validate({**base, "deadline": "2030-01-01T00:00:00"})
    assert spec.deadline is not None and spec.deadline.tzinfo is UTC and spec.walltime == 3600
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sites": ["a", "a"]}, "a site appears twice"),
        ({"actions": [{"name": "x", "kind": "env", "deployment": "d", "env": "E"}] * 2}, "same name"),
        ({"actions": [{"name": "scale", "kind": "env", "deployment": "d", "env": "E"}]}, "built-in action"),
        ({"namespace": "other"}, "is in namespace"),
        ({"workflow": {"manifests": [DEPLOY, DEPLOY]}}, "appears twice"),
        ({"inactivity_timeout": "5s"}, "at least 10 s"),
        ({"actions": [{"name": "h", "kind": "http", "url": "http://x/", "port": 80}]}, "not both"),
        (
            {
                "workflow": {
                    "manifests": [{"apiVersion": "v1", "kind": "Deployment", "metadata": {"name": "d"}}]
                }
            },
            "needs apiVersion 'apps/v1'",
        ),
    ]
    for changes, words in cases:
        body = {**base, **changes}
        if changes.get("namespace") == "other":
            body["workflow"] = {"manifests": [{**DEPLOY, "metadata": {"name": "w", "namespace": "default"}}]}
        with pytest.raises(ValidationError, match=words):
            RequestSpec.model_validate(body)


def test_action_call_keeps_its_parameters() -> None:
    call = ActionCall.model_validate(
        {"action": "set-threads", "threads": 32, "target": {"env": "T"}, "reason": "r"}
    )
    assert (call.param("threads"), call.param("target"), call.param("nope"), call.reason) == (
        32,
        {"env": "T"},
        None,
        "r",
    )
