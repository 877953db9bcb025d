"""The JRM's metrics on the kubelet port: ``/metrics/resource`` and ``/stats/summary`` in the
kubelet's formats (for metrics-server, ``kubectl top`` and HPAs) and ``/metrics`` for Prometheus
(the JRM's own health and per-container and per-process hardware metrics).

A :class:`Monitoring` samples the running containers every ``metrics_interval`` seconds in a worker
thread (:mod:`jiriaf.jrm.metrics`) and answers scrapes from the latest sample, so a scrape costs
the formatting only, also done in a worker thread. The families are built by pure functions
(:func:`resource_families`, :func:`hardware_families`, :func:`health_families`,
:func:`stats_summary`). See ``docs/metrics.md`` for every metric name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from jiriaf import __version__
from jiriaf.jrm.environment import parse_quantity
from jiriaf.jrm.metrics import ContainerRef, ContainerUsage, ProcessReading, Sample, Sampler
from jiriaf.jrm.runtime.processes import container_marker

if TYPE_CHECKING:
    from jiriaf.jrm.pods import PodController
    from jiriaf.jrm.server import KubeletServer
    from jiriaf.jrm.settings import JRMSettings

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what the kubelet sends and scrapers parse
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTAINER_LABELS = ("namespace", "pod", "container", "pgid")
PROCESS_LABELS = (*CONTAINER_LABELS, "pid", "name")


class _Families:
    """A collector that returns families built beforehand (one registry per scrape)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def render_families(families: Iterable[Metric], *collectors: Any) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


# ------------------------------------------------------------------------- /metrics/resource (pure)


def resource_families(sample: Sample) -> list[Metric]:
    """The kubelet's resource metrics with millisecond timestamps, as metrics-server parses them."""
    ts = sample.timestamp
    node_cpu = CounterMetricFamily(
        "node_cpu_usage_seconds",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    )
    node_cpu.add_metric([], sample.node.cpu_seconds, timestamp=ts)
    node_mem = GaugeMetricFamily(
        "node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes"
    )
    node_mem.add_metric([], sample.node.working_set, timestamp=ts)
    labels = ["container", "pod", "namespace"]
    c_cpu = CounterMetricFamily(
        "container_cpu_usage_seconds",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        labels=labels,
    )
    c_mem = GaugeMetricFamily(
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        labels=labels,
    )
    c_start = GaugeMetricFamily(
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        labels=labels,
    )
    p_cpu = CounterMetricFamily(
        "pod_cpu_usage_seconds",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        labels=["pod", "namespace"],
    )
    p_mem = GaugeMetricFamily(
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod in bytes",
        labels=["pod", "namespace"],
    )
    for (namespace, pod, _uid), containers in sample.by_pod().items():
        for c in containers:
            values = [c.ref.container, pod, namespace]
            c_cpu.add_metric(values, c.cpu_seconds, timestamp=ts)
            c_mem.add_metric(values, max(1, c.working_set), timestamp=ts)
            c_start.add_metric(values, c.ref.started_at, timestamp=ts)
        p_cpu.add_metric([pod, namespace], sum(c.cpu_seconds for c in containers), timestamp=ts)
        p_mem.add_metric([pod, namespace], max(1, sum(c.working_set for c in containers)), timestamp=ts)
    error = GaugeMetricFamily(
        "resource_scrape_error", "[STABLE] 1 if there was an error while getting container metrics"
    )
    error.add_metric([], 0)
    return [c_cpu, c_mem, c_start, node_cpu, node_mem, p_cpu, p_mem, error]


# ----------------------------------------------------------------------------- /metrics (pure)


def _container_values(c: ContainerUsage) -> list[str]:
    return [c.ref.namespace, c.ref.pod, c.ref.container, str(c.ref.pgid or "")]


def _process_values(c: ContainerUsage, p: ProcessReading) -> list[str]:
    return [c.ref.namespace, c.ref.pod, c.ref.container, str(p.pgid), str(p.pid), p.name]


def hardware_families(sample: Sample) -> list[Metric]:
    """Per-container and per-process hardware metrics, and the node's (JRM plus containers)."""
    cl, pl = list(CONTAINER_LABELS), list(PROCESS_LABELS)

    def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=labels)

    def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    c_cpu = counter(
        "jiriaf_container_cpu_seconds",
        "CPU time of the container's processes, with reaped children and ended processes",
        [*cl, "mode"],
    )
    c_rss = gauge("jiriaf_container_memory_rss_bytes", "Resident memory of the container's processes", cl)
    c_ws = gauge(
        "jiriaf_container_memory_working_set_bytes",
        "Working set of the container (sum of RSS, or its cgroup's usage minus inactive files)",
        cl,
    )
    c_pss = gauge("jiriaf_container_memory_pss_bytes", "Proportional set size (PSS) of the container", cl)
    c_threads = gauge("jiriaf_container_threads", "Threads of the container's processes", cl)
    c_fds = gauge("jiriaf_container_open_fds", "Open file descriptors of the container's processes", cl)
    c_procs = gauge("jiriaf_container_processes", "Live processes of the container", cl)
    c_read = counter("jiriaf_container_read_bytes", "Bytes the container read from storage", cl)
    c_write = counter("jiriaf_container_write_bytes", "Bytes the container wrote to storage", cl)
    c_ctx = counter(
        "jiriaf_container_context_switches", "Context switches of the container's processes", [*cl, "kind"]
    )
    c_start = gauge("jiriaf_container_start_time_seconds", "Start of the container's current run", cl)
    p_cpu = counter("jiriaf_process_cpu_seconds", "CPU time of the process itself", [*pl, "mode"])
    p_rss = gauge("jiriaf_process_memory_rss_bytes", "Resident memory of the process", pl)
    p_pss = gauge("jiriaf_process_memory_pss_bytes", "Proportional set size (PSS) of the process", pl)
    p_threads = gauge("jiriaf_process_threads", "Threads of the process", pl)
    p_fds = gauge("jiriaf_process_open_fds", "Open file descriptors of the process", pl)
    p_read = counter("jiriaf_process_read_bytes", "Bytes the process read from storage", pl)
    p_write = counter("jiriaf_process_write_bytes", "Bytes the process wrote to storage", pl)
    p_ctx = counter("jiriaf_process_context_switches", "Context switches of the process", [*pl, "kind"])
    p_start = gauge("jiriaf_process_start_time_seconds", "Start time of the process", pl)
    for c in sample.containers:
        v = _container_values(c)
        k = c.counters
        c_cpu.add_metric([*v, "user"], k.cpu_user)
        c_cpu.add_metric([*v, "system"], k.cpu_system)
        c_rss.add_metric(v, c.rss)
        c_ws.add_metric(v, c.working_set)
        c_pss.add_metric(v, c.pss)
        c_threads.add_metric(v, c.threads)
        c_fds.add_metric(v, c.open_fds)
        c_procs.add_metric(v, len(c.processes))
        c_read.add_metric(v, k.read_bytes)
        c_write.add_metric(v, k.write_bytes)
        c_ctx.add_metric([*v, "voluntary"], k.ctx_voluntary)
        c_ctx.add_metric([*v, "involuntary"], k.ctx_involuntary)
        c_start.add_metric(v, c.ref.started_at)
        for p in c.processes:
            pv = _process_values(c, p)
            p_cpu.add_metric([*pv, "user"], p.cpu_user)
            p_cpu.add_metric([*pv, "system"], p.cpu_system)
            p_rss.add_metric(pv, p.rss)
            p_pss.add_metric(pv, p.pss)
            p_threads.add_metric(pv, p.threads)
            p_fds.add_metric(pv, p.open_fds)
            p_read.add_metric(pv, p.read_bytes)
            p_write.add_metric(pv, p.write_bytes)
            p_ctx.add_metric([*pv, "voluntary"], p.ctx_voluntary)
            p_ctx.add_metric([*pv, "involuntary"], p.ctx_involuntary)
            p_start.add_metric(pv, p.started_at)
    n_cpu = CounterMetricFamily("jiriaf_node_cpu_seconds", "CPU time of the JRM and its containers")
    n_cpu.add_metric([], sample.node.cpu_seconds)
    n_ws = GaugeMetricFamily("jiriaf_node_memory_working_set_bytes", "Working set of the JRM and containers")
    n_ws.add_metric([], sample.node.working_set)
    n_rss = GaugeMetricFamily("jiriaf_node_memory_rss_bytes", "Resident memory of the JRM and containers")
    n_rss.add_metric([], sample.node.rss)
    return [
        c_cpu, c_rss, c_ws, c_pss, c_threads, c_fds, c_procs, c_read, c_write, c_ctx, c_start,
        p_cpu, p_rss, p_pss, p_threads, p_fds, p_read, p_write, p_ctx, p_start,
        n_cpu, n_ws, n_rss,
    ]  # fmt: skip


@dataclass(frozen=True)
class Health:
    """The JRM's own state at one moment (counters are cumulative since the JRM started)."""

    address_mode: str
    start_time: float
    pods_by_phase: Mapping[str, int] = field(default_factory=dict)
    containers_started: int = 0
    container_failures: int = 0
    container_restarts: int = 0
    api_errors: int = 0
    watch_relists: int = 0
    status_patches: int = 0
    sample_duration: float | None = None
    sample_timestamp: float | None = None
    sampled_processes: int = 0


def health_families(h: Health) -> list[Metric]:
    """The JRM's health: pods by phase, starts, failures, restarts, API errors, relists, sampling."""
    info = GaugeMetricFamily(
        "jiriaf_jrm_info",
        "The JRM: version and pod address mode (the scrape configuration adds the node label)",
        labels=["version", "address_mode"],
    )
    info.add_metric([__version__, h.address_mode], 1)
    start = GaugeMetricFamily("jiriaf_jrm_start_time_seconds", "When the JRM started")
    start.add_metric([], h.start_time)
    pods = GaugeMetricFamily("jiriaf_jrm_pods", "Pods on this node by phase", labels=["phase"])
    for phase in (*PHASES, *sorted(set(h.pods_by_phase) - set(PHASES))):
        pods.add_metric([phase], h.pods_by_phase.get(phase, 0))
    families: list[Metric] = [info, start, pods]
    counters = (
        ("jiriaf_jrm_container_starts", "Containers started (also restarts)", h.containers_started),
        ("jiriaf_jrm_container_failures", "Runs that failed (non-zero, no start)", h.container_failures),
        ("jiriaf_jrm_container_restarts", "Containers restarted by policy", h.container_restarts),
        ("jiriaf_jrm_api_errors", "Failed requests to the apiserver", h.api_errors),
        ("jiriaf_jrm_watch_relists", "Relists of the pod watch", h.watch_relists),
        ("jiriaf_jrm_status_patches", "Pod status patches sent", h.status_patches),
    )
    for name, doc, value in counters:
        fam = CounterMetricFamily(name, doc)
        fam.add_metric([], value)
        families.append(fam)
    if h.sample_duration is not None:
        dur = GaugeMetricFamily("jiriaf_jrm_sample_duration_seconds", "Time the last metrics sample took")
        dur.add_metric([], h.sample_duration)
        at = GaugeMetricFamily("jiriaf_jrm_sample_timestamp_seconds", "When the last sample was taken")
        at.add_metric([], h.sample_timestamp or 0.0)
        procs = GaugeMetricFamily("jiriaf_jrm_sampled_processes", "Container processes in the last sample")
        procs.add_metric([], h.sampled_processes)
        families += [dur, at, procs]
    return families


# ---------------------------------------------------------------------------- /stats/summary (pure)


def _time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _cpu(ts: float, seconds: float, rate: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"time": _time(ts), "usageCoreNanoSeconds": round(seconds * 1e9)}
    if rate is not None:
        out["usageNanoCores"] = round(rate * 1e9)
    return out


def _memory(ts: float, working_set: int, rss: int, available: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": _time(ts),
        "usageBytes": max(working_set, rss),
        "workingSetBytes": working_set,
        "rssBytes": rss,
    }
    if available is not None:
        out["availableBytes"] = max(0, available - working_set)
    return out


@dataclass(frozen=True)
class SummaryContext:
    """What the summary needs besides the sample (gathered on the event loop)."""

    node_name: str
    memory_capacity: int | None = None
    pod_start_times: Mapping[str, float] = field(default_factory=dict)  # pod uid -> epoch
    fs: Mapping[str, int] | None = None  # capacityBytes, availableBytes, usedBytes, inodes...
    rlimit: Mapping[str, int] | None = None  # maxpid, curproc


def stats_summary(sample: Sample, ctx: SummaryContext) -> dict[str, Any]:
    """The kubelet's ``/stats/summary`` (stats/v1alpha1) from a sample."""
    ts = sample.timestamp
    node_stats = sample.node
    node: dict[str, Any] = {
        "nodeName": ctx.node_name,
        "startTime": _time(node_stats.start_time),
        "cpu": _cpu(ts, node_stats.cpu_seconds, node_stats.cpu_rate),
        "memory": _memory(ts, node_stats.working_set, node_stats.rss, ctx.memory_capacity),
        "systemContainers": [],
    }
    if node_stats.jrm is not None:
        jrm = node_stats.jrm
        node["systemContainers"].append(
            {
                "name": "kubelet",
                "startTime": _time(node_stats.start_time),
                "cpu": _cpu(ts, jrm.cpu_user + jrm.cpu_system, None),
                "memory": _memory(ts, jrm.rss, jrm.rss),
            }
        )
    if ctx.fs:
        node["fs"] = {"time": _time(ts), **ctx.fs}
    if ctx.rlimit:
        node["rlimit"] = {"time": _time(ts), **ctx.rlimit}
    pods = []
    for (namespace, pod, uid), containers in sample.by_pod().items():
        start = ctx.pod_start_times.get(uid) or min(c.ref.started_at for c in containers)
        cpu = sum(c.cpu_seconds for c in containers)
        rates = [c.cpu_rate for c in containers]
        rate = None if any(r is None for r in rates) else sum(r for r in rates if r is not None)
        pods.append(
            {
                "podRef": {"name": pod, "namespace": namespace, "uid": uid},
                "startTime": _time(start),
                "containers": [
                    {
                        "name": c.ref.container,
                        "startTime": _time(c.ref.started_at),
                        "cpu": _cpu(ts, c.cpu_seconds, c.cpu_rate),
                        "memory": _memory(ts, c.working_set, c.rss),
                    }
                    for c in containers
                ],
                "cpu": _cpu(ts, cpu, rate),
                "memory": _memory(ts, sum(c.working_set for c in containers), sum(c.rss for c in containers)),
                "process_stats": {"process_count": sum(len(c.processes) for c in containers)},
            }
        )
    return {"node": node, "pods": pods}


# ------------------------------------------------------------------------------------------ wiring


def running_containers(pods: PodController) -> list[ContainerRef]:
    """The running containers of the controller's pods (call on the event loop)."""
    refs = []
    for worker in list(pods.workers.values()):
        for cs in worker.containers.values():
            facts = cs.facts
            if facts is None or not facts.running or facts.started_at is None:
                continue
            key = worker.key(cs.name)
            refs.append(
                ContainerRef(
                    namespace=worker.namespace,
                    pod=worker.name,
                    pod_uid=worker.uid,
                    container=cs.name,
                    marker=container_marker(key),
                    started_at=facts.started_at,
                    pgid=facts.pgid,
                )
            )
    return refs


def _filesystem(path: str) -> dict[str, int] | None:
    try:
        usage = shutil.disk_usage(path)
        vfs = os.statvfs(path)
    except OSError:
        return None
    return {
        "capacityBytes": usage.total,
        "availableBytes": usage.free,
        "usedBytes": usage.used,
        "inodes": vfs.f_files,
        "inodesFree": vfs.f_ffree,
        "inodesUsed": vfs.f_files - vfs.f_ffree,
    }


def _rlimit() -> dict[str, int] | None:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            maxpid = int(f.read().strip())
        curproc = sum(1 for name in os.listdir("/proc") if name.isdigit())  # noqa: PTH208
    except (OSError, ValueError):
        return None
    return {"maxpid": maxpid, "curproc": curproc}


class Monitoring:
    """Samples the containers of one JRM and serves the three metrics endpoints."""

    def __init__(
        self,
        settings: JRMSettings,
        pods: PodController,
        *,
        api_errors: Callable[[], int] | None = None,
        relists: Callable[[], int] | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        self.settings = settings
        self.pods = pods
        self.interval = settings.metrics_interval
        self.sampler = sampler or Sampler()
        self.latest: Sample | None = None
        self.started_at = time.time()
        self._api_errors = api_errors or (lambda: 0)
        self._relists = relists or (lambda: 0)
        self._lock = asyncio.Lock()
        self.reconcile = Histogram(
            "jiriaf_jrm_reconcile_duration_seconds",
            "Time one reconciliation (sync) of a pod took",
            buckets=RECONCILE_BUCKETS,
            registry=None,
        )
        self.process = ProcessCollector(namespace="", registry=None)
        pods.sync_observer = self.reconcile.observe
        self.memory_capacity: int | None = None
        with contextlib.suppress(ValueError):
            self.memory_capacity = int(parse_quantity(settings.memory))

    # ------------------------------------------------------------------------------- sampling
    async def refresh(self) -> Sample:
        """Take a sample now (one at a time) and keep it as the latest."""
        async with self._lock:
            refs = running_containers(self.pods)
            sample = await asyncio.to_thread(self.sampler.sample, refs)
            self.latest = sample
            return sample

    async def current(self) -> Sample:
        """The latest sample (taken now if there is none yet)."""
        return self.latest if self.latest is not None else await self.refresh()

    async def run(self) -> None:
        """Sample every ``metrics_interval`` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("metrics sample failed")
            await asyncio.sleep(self.interval)

    def health(self) -> Health:
        latest = self.latest
        pods = self.pods
        return Health(
            address_mode=self.settings.address_mode,
            start_time=self.started_at,
            pods_by_phase=pods.counts_by_phase(),
            containers_started=pods.containers_started,
            container_failures=pods.container_failures,
            container_restarts=pods.container_restarts,
            api_errors=pods.api_errors + self._api_errors(),
            watch_relists=self._relists(),
            status_patches=pods.status_patches,
            sample_duration=latest.duration if latest else None,
            sample_timestamp=latest.timestamp if latest else None,
            sampled_processes=latest.process_count if latest else 0,
        )

    # ------------------------------------------------------------------------------- rendering
    def render_metrics(self, sample: Sample, health: Health) -> bytes:
        """The ``/metrics`` body (blocking; pure apart from the JRM's own process collector)."""
        return render_families(
            [*health_families(health), *hardware_families(sample)], self.reconcile, self.process
        )

    @staticmethod
    def render_resource(sample: Sample) -> bytes:
        return render_families(resource_families(sample))

    # -------------------------------------------------------------------------------- handlers
    def add_routes(self, server: KubeletServer) -> None:
        server.add_route("GET", "/metrics", self._metrics)
        server.add_route("GET", "/metrics/resource", self._resource)
        server.add_route("GET", "/stats/summary", self._summary)

    @staticmethod
    def _text(request: web.Request, body: bytes) -> web.Response:
        response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()
        return response

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        sample = await self.current()
        body = await asyncio.to_thread(self.render_metrics, sample, self.health())
        return self._text(request, body)

    async def _resource(self, request: web.Request) -> web.StreamResponse:
        sample = await self.current()
        body = await asyncio.to_thread(self.render_resource, sample)
        return self._text(request, body)

    async def _summary(self, request: web.Request) -> web.StreamResponse:
        sample = await self.current()
        starts = {uid: w.start_time for uid, w in list(self.pods.workers.items()) if w.start_time}
        fs, rlimit = await asyncio.to_thread(lambda: (_filesystem(str(self.settings.pod_root)), _rlimit()))
        ctx = SummaryContext(
            node_name=self.settings.node_name,
            memory_capacity=self.memory_capacity,
            pod_start_times=starts,
            fs=fs,
            rlimit=rlimit,
        )
        return web.json_response(stats_summary(sample, ctx))
