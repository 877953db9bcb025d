"""The monitor: a workflow's state from Kubernetes (pods, restarts, events, Jobs) and its metrics
from Prometheus (PromQL over HTTP: CPU, memory and any query the request names), or from the
Kubernetes metrics API when no Prometheus is configured. Each sample becomes a ``workflow_status``
row; the reconcile loop reads the phase it gives and the inactivity it finds.

The summaries and decisions are pure functions over the API's JSON (unit-tested); :class:`Sampler`
does the I/O.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx2

from jiriaf.errors import UserError
from jiriaf.jcs.workflows import list_pods, selector
from jiriaf.jrm.environment import parse_quantity
from jiriaf.kube.patching import ApiError, check
from jiriaf.twin.live import parse_prometheus_value

DEFAULT_CPU_QUERY = 'sum(rate(jiriaf_container_cpu_seconds_total{namespace="$namespace",pod=~"$pods"}[1m]))'
DEFAULT_MEMORY_QUERY = 'sum(jiriaf_container_memory_working_set_bytes{namespace="$namespace",pod=~"$pods"})'
LONG_RUNNING_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})


# ----------------------------------------------------------------------------- pure summaries


@dataclass(frozen=True)
class PodSummary:
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    restarts: int = 0
    names: tuple[str, ...] = ()
    nodes: frozenset[str] = frozenset()
    addresses: tuple[str, ...] = ()  # IPs of running pods
    bare_phases: tuple[str, ...] = ()  # phases of pods no controller owns
    problems: tuple[str, ...] = ()  # "pod/container: Reason" of waiting or failing containers


def summarize_pods(pods: Iterable[Mapping[str, Any]]) -> PodSummary:
    counts = {"Pending": 0, "Running": 0, "Succeeded": 0, "Failed": 0}
    restarts = 0
    names: list[str] = []
    nodes: set[str] = set()
    addresses: list[str] = []
    bare: list[str] = []
    problems: list[str] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue  # going away: neither progress nor failure
        phase = status.get("phase") or "Pending"
        counts[phase if phase in counts else "Pending"] += 1
        names.append(meta.get("name", ""))
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            nodes.add(node)
        if phase == "Running" and status.get("podIP"):
            addresses.append(status["podIP"])
        if not meta.get("ownerReferences"):
            bare.append(phase)
        for cs in status.get("containerStatuses") or []:
            restarts += int(cs.get("restartCount") or 0)
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            reason = waiting.get("reason")
            if reason and reason not in ("ContainerCreating", "PodInitializing"):
                problems.append(f"{meta.get('name')}/{cs.get('name')}: {reason}")
            term = state.get("terminated") or {}
            if term and term.get("exitCode", 0) != 0:
                problems.append(
                    f"{meta.get('name')}/{cs.get('name')}: {term.get('reason') or 'Error'} "
                    f"(exit {term.get('exitCode')})"
                )
    return PodSummary(
        total=sum(counts.values()),
        pending=counts["Pending"],
        running=counts["Running"],
        succeeded=counts["Succeeded"],
        failed=counts["Failed"],
        restarts=restarts,
        names=tuple(sorted(names)),
        nodes=frozenset(nodes),
        addresses=tuple(addresses),
        bare_phases=tuple(bare),
        problems=tuple(problems),
    )


def job_state(job: Mapping[str, Any]) -> str:
    """``complete``, ``failed`` or ``active`` from a Job's conditions."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "complete"
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    return "active"


def workflow_phase(kinds: Iterable[str], pods: PodSummary, job_states: Sequence[str]) -> str:
    """``starting``, ``running``, ``succeeded`` or ``failed``.

    A workflow of Jobs and bare Pods ends when all of them have ended; one with a Deployment,
    StatefulSet or ReplicaSet runs until it is stopped (by its user, inactivity or walltime).
    A failed Job or a failed bare Pod fails the workflow.
    """
    kinds = set(kinds)
    if "failed" in job_states or "Failed" in pods.bare_phases:
        return "failed"
    finite = not (kinds & LONG_RUNNING_KINDS) and ("Job" in kinds or "Pod" in kinds)
    if finite:
        jobs_done = all(s == "complete" for s in job_states) and (bool(job_states) or "Job" not in kinds)
        pods_done = all(p == "Succeeded" for p in pods.bare_phases)
        has_bare_pods = "Pod" in kinds
        if jobs_done and pods_done and (pods.bare_phases or not has_bare_pods):
            return "succeeded"
    if pods.running > 0:
        return "running"
    return "starting"


def is_active(cpu_cores: float | None, idle_cpu_cores: float, activity: float | None) -> bool | None:
    """Whether a sample shows work: the request's activity query > 0, or CPU above the idle
    threshold; None when neither was measured."""
    if activity is not None and activity > 0:
        return True
    if cpu_cores is not None and cpu_cores > idle_cpu_cores:
        return True
    if activity is None and cpu_cores is None:
        return None
    return False


def pods_regex(names: Iterable[str]) -> str:
    """A PromQL regex matching exactly these pod names (one that matches nothing when empty)."""
    parts = [n.replace(".", "[.]") for n in names if n]
    return "|".join(parts) if parts else "^$"


def substitute(query: str, *, namespace: str, pods: Iterable[str], request_id: int) -> str:
    """``$namespace``, ``$pods`` (a regex) and ``$request`` in a PromQL template."""
    return (
        query.replace("$namespace", namespace)
        .replace("$pods", pods_regex(pods))
        .replace("$request", str(request_id))
    )


def sum_pod_metrics(items: Iterable[Mapping[str, Any]]) -> tuple[float, float]:
    """Total CPU (cores) and memory (bytes) of ``metrics.k8s.io`` PodMetrics items."""
    cpu = 0.0
    mem = 0.0
    for item in items:
        for c in item.get("containers") or []:
            usage = c.get("usage") or {}
            cpu += float(parse_quantity(usage.get("cpu", "0")))
            mem += float(parse_quantity(usage.get("memory", "0")))
    return cpu, mem


# ----------------------------------------------------------------------------- I/O


async def prometheus_query(url: str, query: str, timeout: float = 10.0) -> float:
    """The value of an instant query that yields one number (UserError with the reason otherwise).
    An empty result (no series yet) is 0 for aggregations such as ``sum``."""
    endpoint = f"{url.rstrip('/')}/api/v1/query"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(endpoint, params={"query": query}) as resp,
        ):
            if resp.content_type != "application/json":
                raise UserError(f"Prometheus at {url} answered HTTP {resp.status}")
            doc = await resp.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UserError(f"cannot reach Prometheus at {url}: {exc or type(exc).__name__}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if (
        isinstance(doc, dict)
        and doc.get("status") == "success"
        and isinstance(data, dict)
        and data.get("resultType") == "vector"
        and data.get("result") == []
    ):
        return 0.0
    return parse_prometheus_value(doc, query)


@dataclass
class Sample:
    """One look at a workflow."""

    phase: str
    pods: PodSummary
    cpu_cores: float | None = None
    memory_bytes: float | None = None
    activity: float | None = None
    metrics: dict[str, float | str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        parts = list(self.pods.problems[:5]) + self.events[:5] + self.errors[:5]
        return "; ".join(parts)[:2000]


class Sampler:
    """Reads a workflow's pods, Jobs, Events and metrics."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        prometheus_url: str | None = None,
        cpu_query: str = DEFAULT_CPU_QUERY,
        memory_query: str = DEFAULT_MEMORY_QUERY,
    ) -> None:
        self.client = client
        self.prometheus_url = prometheus_url
        self.cpu_query = cpu_query
        self.memory_query = memory_query

    async def sample(
        self,
        *,
        request_id: int,
        owner: str,
        namespace: str,
        kinds: Iterable[str],
        metrics: Mapping[str, str],
        activity_query: str | None,
    ) -> Sample:
        pods_json = await list_pods(self.client, namespace, owner)
        pods = summarize_pods(pods_json)
        jobs = await self._job_states(namespace, owner) if "Job" in set(kinds) else []
        out = Sample(phase=workflow_phase(kinds, pods, jobs), pods=pods)
        out.events = await self._warnings(namespace, set(pods.names))
        if self.prometheus_url:
            await self._prometheus(out, request_id, namespace, pods.names, metrics, activity_query)
        else:
            await self._metrics_api(out, namespace, owner)
        return out

    async def _job_states(self, namespace: str, owner: str) -> list[str]:
        body = check(
            await self.client.get(
                f"/apis/batch/v1/namespaces/{namespace}/jobs?labelSelector=" + selector(owner)
            )
        )
        return [job_state(j) for j in body.get("items") or []]

    async def _warnings(self, namespace: str, pod_names: set[str]) -> list[str]:
        if not pod_names:
            return []
        try:
            body = check(
                await self.client.get(
                    f"/api/v1/namespaces/{namespace}/events?fieldSelector="
                    + quote("involvedObject.kind=Pod,type=Warning")
                )
            )
        except (ApiError, httpx2.HTTPError):
            return []
        items = [
            e for e in body.get("items") or [] if (e.get("involvedObject") or {}).get("name") in pod_names
        ]
        items.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", reverse=True)
        return [
            f"{e['involvedObject']['name']}: {e.get('reason')}: {e.get('message', '')[:200]}"
            for e in items[:5]
        ]

    async def _prometheus(
        self,
        out: Sample,
        request_id: int,
        namespace: str,
        pods: Sequence[str],
        metrics: Mapping[str, str],
        activity_query: str | None,
    ) -> None:
        assert self.prometheus_url is not None
        url = self.prometheus_url

        def q(template: str) -> str:
            return substitute(template, namespace=namespace, pods=pods, request_id=request_id)

        names = ["cpu", "memory", *(["activity"] if activity_query else []), *metrics]
        queries = [q(self.cpu_query), q(self.memory_query)]
        if activity_query:
            queries.append(q(activity_query))
        queries += [q(m) for m in metrics.values()]
        results = await asyncio.gather(*(prometheus_query(url, x) for x in queries), return_exceptions=True)
        for i, (name, res) in enumerate(zip(names, results, strict=True)):
            if isinstance(res, BaseException):
                out.errors.append(f"{name}: {res}")
                if i >= 2 + (1 if activity_query else 0):
                    out.metrics[name] = f"error: {res}"
                continue
            value = float(res)
            if i == 0:
                out.cpu_cores = value
            elif i == 1:
                out.memory_bytes = value
            elif activity_query and i == 2:
                out.activity = value
            else:
                out.metrics[name] = value if math.isfinite(value) else str(value)

    async def _metrics_api(self, out: Sample, namespace: str, owner: str) -> None:
        try:
            body = check(
                await self.client.get(
                    f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods?labelSelector={selector(owner)}"
                )
            )
        except (ApiError, httpx2.HTTPError) as exc:
            out.errors.append(f"metrics API: {exc}")
            return
        items = body.get("items") or []
        if items:
            out.cpu_cores, out.memory_bytes = sum_pod_metrics(items)
