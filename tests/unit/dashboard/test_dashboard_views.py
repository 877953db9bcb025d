"""jiriaf.dashboard.views: Kubernetes nodes/pods/Deployments and JCS rows -> what the dashboard shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jiriaf.dashboard import views as v
from jiriaf.jrm.node import WALLTIME_TAINT

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def node(
    name: str,
    labels: dict[str, str] | None = None,
    ready: str | None = "True",
    reason: str = "KubeletReady",
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    conditions = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready, "reason": reason})
    return {
        "metadata": {"name": name, "labels": labels if labels is not None else {"jiriaf.site": "local"}},
        "spec": {"taints": taints or []},
        "status": {"conditions": conditions},
    }


def pod(node_name: str | None, phase: str = "Running") -> dict[str, Any]:
    spec = {"nodeName": node_name} if node_name else {}
    return {"spec": spec, "status": {"phase": phase}}


# ----------------------------------------------------------------------------- nodes


def test_jrm_nodes_are_those_with_a_jiriaf_site_or_nodetype_label() -> None:
    assert v.is_jrm_node(node("a", {"jiriaf.site": "perlmutter"}))
    assert v.is_jrm_node(node("b", {"jiriaf.nodetype": "cpu"}))
    assert not v.is_jrm_node(node("c", {"kubernetes.io/hostname": "c"}))
    assert not v.is_jrm_node({"metadata": {"name": "d"}})
    assert not v.is_jrm_node({"metadata": {"name": "e", "labels": None}})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3600", 3600),
        ("0", 0),
        (" 42 ", 42),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        (None, None),
    ],
)
def test_alivetime_label_is_whole_seconds_or_nothing(value: Any, expected: int | None) -> None:
    assert v.parse_alivetime(value) == expected


def test_ready_condition_reads_status_and_reason() -> None:
    assert v.ready_condition(node("a")) == (True, "KubeletReady")
    assert v.ready_condition(node("a", ready="False", reason="WalltimeEnding")) == (False, "WalltimeEnding")
    assert v.ready_condition(node("a", ready="Unknown", reason="NodeStatusUnknown")) == (
        False,
        "NodeStatusUnknown",
    )
    assert v.ready_condition(node("a", ready=None)) == (False, "NoReadyCondition")
    assert v.ready_condition({"metadata": {"name": "x"}}) == (False, "NoReadyCondition")


def test_pods_per_node_counts_only_bound_unfinished_pods() -> None:
    pods = [
        pod("a"),
        pod("a", "Pending"),
        pod("a", "Succeeded"),
        pod("a", "Failed"),
        pod("b", "Unknown"),
        pod(None, "Pending"),
    ]
    assert v.pods_per_node(pods) == {"a": 2, "b": 1}


def test_node_views_keep_jrm_nodes_sorted_with_their_facts() -> None:
    nodes = [
        node("zeta", {"jiriaf.site": "nersc", "jiriaf.nodetype": "gpu", "jiriaf.alivetime": "120"}),
        node("control", {"node-role.kubernetes.io/control-plane": ""}),
        node(
            "alpha",
            {"jiriaf.site": "local", "jiriaf.nodetype": "cpu"},
            ready="False",
            reason="WalltimeEnding",
            taints=[dict(WALLTIME_TAINT)],
        ),
    ]
    views = v.node_views(nodes, [pod("zeta"), pod("zeta"), pod("control"), pod("alpha", "Succeeded")])
    assert [n.name for n in views] == ["alpha", "zeta"]
    alpha, zeta = views
    assert (alpha.site, alpha.nodetype, alpha.ready, alpha.ready_reason) == (
        "local",
        "cpu",
        False,
        "WalltimeEnding",
    )
    assert alpha.draining and alpha.pods == 0 and alpha.alivetime_s is None
    assert (zeta.site, zeta.nodetype, zeta.ready, zeta.pods, zeta.alivetime_s) == (
        "nersc",
        "gpu",
        True,
        2,
        120,
    )
    assert not zeta.draining


def test_other_taints_do_not_mean_draining() -> None:
    view = v.node_view(node("a", taints=[{"key": "virtual-kubelet.io/provider", "effect": "NoSchedule"}]), 0)
    assert not view.draining


# ----------------------------------------------------------------------------- deployments


def test_deployment_view_reads_spec_and_status() -> None:
    dep = {
        "metadata": {"namespace": "ns", "name": "web"},
        "spec": {"replicas": 3},
        "status": {"readyReplicas": 2, "availableReplicas": 2, "updatedReplicas": 3},
    }
    view = v.deployment_view(dep)
    assert (view.namespace, view.name, view.replicas) == ("ns", "web", 3)
    assert (view.ready_replicas, view.available_replicas, view.updated_replicas) == (2, 2, 3)


def test_deployment_view_defaults_unset_replicas_to_one_and_missing_status_to_zero() -> None:
    view = v.deployment_view({"metadata": {"namespace": "ns", "name": "web"}, "spec": {}})
    assert view.replicas == 1
    assert (view.ready_replicas, view.available_replicas, view.updated_replicas) == (0, 0, 0)
    zero = v.deployment_view(
        {"metadata": {"name": "w"}, "spec": {"replicas": 0}, "status": {"readyReplicas": True}}
    )
    assert zero.replicas == 0 and zero.ready_replicas == 0


def test_deployment_refs_are_the_applied_deployments_in_order_once() -> None:
    applied = [
        {"kind": "Deployment", "namespace": "ns1", "name": "a"},
        {"kind": "Service", "namespace": "ns1", "name": "svc"},
        {"kind": "Deployment", "namespace": "ns2", "name": "b"},
        {"kind": "Deployment", "namespace": "ns1", "name": "a"},  # repeated
        {"kind": "Deployment", "namespace": "ns1"},  # no name
        {"kind": "Deployment", "namespace": "", "name": "c"},
        {"kind": "Deployment", "name": "d"},  # no namespace
        {"kind": "StatefulSet", "namespace": "ns1", "name": "db"},
        "Deployment/x",
        None,
    ]
    assert v.deployment_refs(applied) == [("ns1", "a"), ("ns2", "b")]
    assert v.deployment_refs([]) == []


# ----------------------------------------------------------------------------- JCS rows


@dataclass
class Sample:
    id: int
    at: datetime
    pods_running: int = 0
    cpu_cores: float | None = None
    memory_bytes: float | None = None
    metrics: Any = field(default_factory=dict)


def test_metric_series_are_oldest_first_and_bounded() -> None:
    rows = [Sample(i, T0 + timedelta(seconds=10 * i), pods_running=i) for i in range(10)]
    rows.reverse()
    series = v.metric_series(rows, limit=4)
    assert [s.name for s in series] == ["pods running"]
    pods = series[0]
    assert pods.unit == "pods"
    assert pods.points == [((T0 + timedelta(seconds=10 * i)).timestamp(), float(i)) for i in range(6, 10)]


def test_metric_series_include_cpu_memory_and_numeric_user_metrics_only() -> None:
    rows = [
        Sample(
            1, T0, 1, cpu_cores=0.5, memory_bytes=2 * 2**20, metrics={"lq": 3, "rate": 100.0, "note": "x"}
        ),
        Sample(
            2,
            T0 + timedelta(seconds=5),
            2,
            cpu_cores=None,
            memory_bytes=4 * 2**20,
            metrics={"lq": float("nan")},
        ),
        Sample(3, T0 + timedelta(seconds=9), 2, cpu_cores=0.25, metrics={"lq": 5, "flag": True}),
        Sample(4, T0 + timedelta(seconds=12), 2, metrics=None),
    ]
    series = {s.name: s for s in v.metric_series(rows)}
    # fixed series first, then user metrics by name; text, booleans and NaN are no data points
    assert list(series) == ["pods running", "cpu", "memory", "lq", "rate"]
    assert [p[1] for p in series["cpu"].points] == [0.5, 0.25]
    assert [p[1] for p in series["memory"].points] == [2.0, 4.0]
    assert series["memory"].unit == "MiB"
    assert [p[1] for p in series["lq"].points] == [3.0, 5.0]
    assert [p[1] for p in series["rate"].points] == [100.0]
    assert [p[1] for p in series["pods running"].points] == [1.0, 2.0, 2.0, 2.0]


def test_metric_series_of_nothing_is_empty() -> None:
    assert v.metric_series([]) == []
