"""What the dashboard shows, as plain models, and the pure functions that build them.

Sites, pilots, status samples and events are shown as the JCS API shows them (its schemas); what
only the dashboard has is here: JRM nodes and Deployments read from Kubernetes, metric series, the
twin's latest decision, and the summary that holds it all. Inputs are Kubernetes objects as JSON
dicts and the central service's rows; nothing here does I/O. Times are aware UTC datetimes (ISO 8601
in JSON); chart points are (epoch seconds, value) pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from jiriaf.dashboard.twinstate import TwinDecision
from jiriaf.jcs.schemas import EventView, PilotView, SiteView, StatusView
from jiriaf.jrm.node import WALLTIME_TAINT

SITE_LABEL = "jiriaf.site"
NODETYPE_LABEL = "jiriaf.nodetype"
ALIVETIME_LABEL = "jiriaf.alivetime"
TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})
SERIES_POINTS = 60  # samples kept per metric series


# ----------------------------------------------------------------------------- models


class NodeView(BaseModel):
    name: str
    site: str
    nodetype: str
    ready: bool
    ready_reason: str
    draining: bool
    pods: int
    alivetime_s: int | None = Field(description="remaining walltime from the jiriaf.alivetime label")


class DeploymentView(BaseModel):
    namespace: str
    name: str
    replicas: int
    ready_replicas: int
    available_replicas: int
    updated_replicas: int


class SeriesView(BaseModel):
    name: str
    unit: str
    points: list[tuple[float, float]]


class TwinView(BaseModel):
    at: datetime | None
    likely_state: str
    decision: TwinDecision


class WorkflowView(BaseModel):
    id: int
    name: str
    user: str
    namespace: str
    state: str
    outcome: str | None
    nodes: int
    node_type: str
    walltime_s: int
    reason: str
    created_at: datetime | None
    started_at: datetime | None
    status: StatusView | None
    deployments: list[DeploymentView]
    series: list[SeriesView]
    twin: TwinView | None


class Summary(BaseModel):
    generated_at: datetime = Field(description="server time when the summary was made")
    user: str
    admin: bool
    sites: list[SiteView]
    nodes: list[NodeView]
    pilots: list[PilotView]
    workflows: list[WorkflowView]
    events: list[EventView]
    kubernetes_error: str | None = Field(description="why nodes/deployments could not be read, if so")


# ----------------------------------------------------------------------------- Kubernetes objects


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels if isinstance(labels, Mapping) else {}


def is_jrm_node(node: Mapping[str, Any]) -> bool:
    """A node that a JRM registered (it carries the JIRIAF site or node-type label)."""
    labels = _labels(node)
    return SITE_LABEL in labels or NODETYPE_LABEL in labels


def parse_alivetime(value: Any) -> int | None:
    """Seconds from a ``jiriaf.alivetime`` label value; None when absent or not a whole number."""
    if not isinstance(value, str) or not value.strip().isdigit():
        return None
    return int(value.strip())


def ready_condition(node: Mapping[str, Any]) -> tuple[bool, str]:
    """(Ready?, reason) from the node's Ready condition; a node without one is not ready."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True", str(cond.get("reason") or "")
    return False, "NoReadyCondition"


def pods_per_node(pods: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """How many pods that have not finished are bound to each node."""
    counts: Counter[str] = Counter()
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if node and phase not in TERMINAL_POD_PHASES:
            counts[str(node)] += 1
    return counts


def node_view(node: Mapping[str, Any], pods: int) -> NodeView:
    labels = _labels(node)
    ready, reason = ready_condition(node)
    taints = (node.get("spec") or {}).get("taints") or []
    return NodeView(
        name=str((node.get("metadata") or {}).get("name", "")),
        site=str(labels.get(SITE_LABEL, "")),
        nodetype=str(labels.get(NODETYPE_LABEL, "")),
        ready=ready,
        ready_reason=reason,
        draining=any(isinstance(t, Mapping) and t.get("key") == WALLTIME_TAINT["key"] for t in taints),
        pods=pods,
        alivetime_s=parse_alivetime(labels.get(ALIVETIME_LABEL)),
    )


def node_views(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> list[NodeView]:
    """The JRM nodes, by name, each with its count of unfinished pods."""
    counts = pods_per_node(pods)
    views = [
        node_view(n, counts[str((n.get("metadata") or {}).get("name", ""))]) for n in nodes if is_jrm_node(n)
    ]
    return sorted(views, key=lambda v: v.name)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def deployment_view(dep: Mapping[str, Any]) -> DeploymentView:
    meta = dep.get("metadata") or {}
    spec = dep.get("spec") or {}
    status = dep.get("status") or {}
    replicas = spec.get("replicas")
    return DeploymentView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        replicas=1 if replicas is None else _count(replicas),  # the API's default when unset
        ready_replicas=_count(status.get("readyReplicas")),
        available_replicas=_count(status.get("availableReplicas")),
        updated_replicas=_count(status.get("updatedReplicas")),
    )


def deployment_refs(applied_objects: Sequence[Any]) -> list[tuple[str, str]]:
    """(namespace, name) of each Deployment among a workflow's applied objects (the JCS's
    ``{"kind", "namespace", "name"}`` refs), in order, without repeats; anything else is skipped."""
    refs: list[tuple[str, str]] = []
    for item in applied_objects:
        if not isinstance(item, Mapping) or item.get("kind") != "Deployment":
            continue
        namespace, name = item.get("namespace"), item.get("name")
        if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
            continue
        if (namespace, name) not in refs:
            refs.append((namespace, name))
    return refs


# ----------------------------------------------------------------------------- status samples


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def metric_series(rows: Sequence[Any], limit: int = SERIES_POINTS) -> list[SeriesView]:
    """Time series of a workflow's status samples (oldest first, at most ``limit`` points each):
    pods running, CPU cores and memory when sampled, then every numeric user metric by name."""
    recent = sorted(rows, key=lambda r: (r.at, r.id))[-limit:]
    fixed: list[tuple[str, str, Any]] = [
        ("pods running", "pods", lambda r: r.pods_running),
        ("cpu", "cores", lambda r: r.cpu_cores),
        ("memory", "MiB", lambda r: None if r.memory_bytes is None else r.memory_bytes / 2**20),
    ]
    out: list[SeriesView] = []
    for name, unit, read in fixed:
        points = [(r.at.timestamp(), v) for r in recent if (v := _finite(read(r))) is not None]
        if points:
            out.append(SeriesView(name=name, unit=unit, points=points))
    names = sorted({k for r in recent if isinstance(r.metrics, Mapping) for k in r.metrics})
    for name in names:
        points = [
            (r.at.timestamp(), v)
            for r in recent
            if isinstance(r.metrics, Mapping) and (v := _finite(r.metrics.get(name))) is not None
        ]
        if points:
            out.append(SeriesView(name=str(name), unit="", points=points))
    return out
