"""The paper's HPA experiment (section 4.4.5) on JRM nodes: deploy, load, record, plot.

The objects are ``deploy/hpa`` (the CPU-burning ``http-server`` Deployment and Service, the
``http-server-hpa`` autoscaling/v2 HPA at 30% CPU, and the ``http-lb`` load balancer), adapted to a
local JRM by :func:`jiriaf.workloads.manifests.for_local_jrm`. Load comes from
``python -m jiriaf.workloads.loadgen`` through the balancer. :class:`HpaRecorder` samples the
HPA's status, the Deployment and the pods' CPU from the metrics API into a timeline that
:func:`format_timeline` prints and :func:`plot_timeline` draws (PNG, matplotlib Agg).

Used by ``tests/system/test_hpa.py`` and ``bench/hpa.py``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx2
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler

from jiriaf.jrm.environment import parse_quantity
from jiriaf.workloads.manifests import Doc, find, for_local_jrm, load_documents

HPA_FILES = ("rbac.yaml", "http-server.yaml", "hpa.yaml", "load-balancer.yaml")
HPA_NAME = "http-server-hpa"
DEPLOYMENT = "http-server"
SELECTOR = "app=http-server"


def hpa_documents(
    deploy_dir: Path,
    *,
    python: str,
    namespace: str,
    node_name: str | None,
    ports: Mapping[int, int],
    work_ms: float,
    max_replicas: int,
) -> list[Doc]:
    """``deploy/hpa`` adapted to a local JRM, with the per-request CPU and the replica ceiling set."""
    docs = for_local_jrm(
        load_documents([deploy_dir / f for f in HPA_FILES]),
        python=python,
        namespace=namespace,
        node_name=node_name,
        ports=ports,
        env={"WORK_MS": f"{work_ms:g}"},
    )
    find(docs, "HorizontalPodAutoscaler", HPA_NAME)["spec"]["maxReplicas"] = max_replicas
    return docs


@dataclass
class HpaSample:
    """One row of the timeline."""

    t: float  # seconds since the recorder started
    phase: str  # what the load did: idle, load, cool-down
    desired: int | None  # HPA status.desiredReplicas
    current: int | None  # HPA status.currentReplicas
    ready: int | None  # Deployment status.readyReplicas
    utilization: int | None  # HPA's measured average CPU, % of the request
    pod_cpu_m: float | None  # the pods' CPU from the metrics API, millicores summed


def _pod_cpu_millicores(raw: httpx2.Client, namespace: str, selector: str) -> float | None:
    resp = raw.get(
        f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods", params={"labelSelector": selector}
    )
    if resp.status_code != 200:
        return None
    items = resp.json().get("items") or []
    if not items:
        return None
    total = 0.0
    for item in items:
        for container in item.get("containers") or []:
            total += float(parse_quantity(str((container.get("usage") or {}).get("cpu", "0")))) * 1000.0
    return total


class HpaRecorder:
    """Samples the experiment's state; keeps every sample."""

    def __init__(self, client: Client, raw: httpx2.Client, namespace: str) -> None:
        self.client = client
        self.raw = raw
        self.namespace = namespace
        self.t0 = time.monotonic()
        self.samples: list[HpaSample] = []

    def sample(self, phase: str) -> HpaSample:
        hpa = self.client.get(HorizontalPodAutoscaler, HPA_NAME, namespace=self.namespace)
        dep = self.client.get(Deployment, DEPLOYMENT, namespace=self.namespace)
        status = hpa.status
        utilization = None
        for m in (status.currentMetrics if status else None) or []:
            if m.type == "Resource" and m.resource is not None and m.resource.name == "cpu":
                utilization = m.resource.current.averageUtilization
        try:
            cpu = _pod_cpu_millicores(self.raw, self.namespace, SELECTOR)
        except (httpx2.HTTPError, ValueError):
            cpu = None
        row = HpaSample(
            t=round(time.monotonic() - self.t0, 1),
            phase=phase,
            desired=status.desiredReplicas if status else None,
            current=status.currentReplicas if status else None,
            ready=(dep.status.readyReplicas or 0) if dep.status else None,
            utilization=utilization,
            pod_cpu_m=cpu,
        )
        self.samples.append(row)
        return row

    def record(self, phase: str, seconds: float, every: float = 5.0) -> None:
        """Sample every ``every`` seconds for ``seconds`` (pacing only; nothing is timed)."""
        end = time.monotonic() + seconds
        while True:
            self.sample(phase)
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(every, left))

    def max_replicas(self) -> int:
        return max((s.current or 0 for s in self.samples), default=0)


class LoadProcess:
    """``python -m jiriaf.workloads.loadgen`` against the balancer, stopped by pid."""

    def __init__(self, url: str, rate: float, concurrency: int, duration: float, log: Path) -> None:
        self.log = log
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jiriaf.workloads.loadgen",
                    url,
                    "--rate",
                    f"{rate:g}",
                    "--concurrency",
                    str(concurrency),
                    "--duration",
                    f"{duration:g}",
                    "--json",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stop the load (SIGTERM: the generator prints its summary) and return the summary."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for line in reversed(self.log.read_text().splitlines()):
            if line.startswith("{"):
                summary: dict[str, Any] = json.loads(line)
                return summary
        return {}


def format_timeline(samples: Sequence[HpaSample]) -> str:
    """The timeline as a text table."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.0f}" if isinstance(value, float) else str(value)

    header = ("t [s]", "phase", "desired", "current", "ready", "cpu [% req]", "pods cpu [m]")
    rows = [
        (
            cell(s.t),
            s.phase,
            cell(s.desired),
            cell(s.current),
            cell(s.ready),
            cell(s.utilization),
            cell(s.pod_cpu_m),
        )
        for s in samples
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def timeline_records(samples: Sequence[HpaSample]) -> list[dict[str, Any]]:
    return [asdict(s) for s in samples]


def plot_timeline(samples: Sequence[HpaSample], path: Path, target: int = 30, title: str = "") -> Path:
    """Replicas (desired, ready) and CPU utilisation against time, load phases shaded; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ts = [s.t for s in samples]
    ax.step(ts, [s.desired if s.desired is not None else float("nan") for s in samples], where="post",
            label="desired replicas", color="tab:blue")  # fmt: skip
    ax.step(ts, [s.ready if s.ready is not None else float("nan") for s in samples], where="post",
            label="ready replicas", color="tab:cyan", linestyle="--")  # fmt: skip
    ax.set_xlabel("time [s]")
    ax.set_ylabel("replicas")
    ax.set_ylim(bottom=0)
    cpu = ax.twinx()
    cpu.plot(ts, [s.utilization if s.utilization is not None else float("nan") for s in samples],
             color="tab:red", marker=".", label="CPU [% of request]")  # fmt: skip
    cpu.axhline(target, color="tab:red", linestyle=":", linewidth=1, label=f"target {target}%")
    cpu.set_ylabel("average CPU [% of request]")
    cpu.set_ylim(bottom=0)
    start = None
    for s in samples:
        if s.phase == "load" and start is None:
            start = s.t
        if s.phase != "load" and start is not None:
            ax.axvspan(start, s.t, color="orange", alpha=0.15)
            start = None
    if start is not None and samples:
        ax.axvspan(start, samples[-1].t, color="orange", alpha=0.15)
    handles = ax.get_legend_handles_labels()[0] + cpu.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + cpu.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title or "HPA on JRM nodes: replicas and CPU (load phase shaded)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
