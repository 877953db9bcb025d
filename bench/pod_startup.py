"""Pod create -> Running latency and pods/s for bursts of pods on one JRM, against kwok's fake
kubelet on the same control plane (the floor: what the apiserver and scheduler cost alone).

    python bench/pod_startup.py [--bursts 10,100,500] [--keep-cluster]

Starts a local control plane in a temporary directory, one JRM (``jiriaf jrm run``) and one
kwok-managed fake node, then for each burst size creates that many ``sleep`` pods for each node
(through the scheduler, by nodeSelector), measures from the moment each create call returned to
the moment the watch shows the pod Running, and prints a table with p50/p99, pods/s and the
JRM/kwok ratios. Everything it starts is stopped at the end. Absolute numbers vary between
machines; the ratios are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
from rich.console import Console
from rich.table import Table

from jiriaf.devcluster import build
from jiriaf.devcluster.cluster import LocalCluster, free_port
from jiriaf.kube.patching import MERGE, ApiError, create, delete, patch
from jiriaf.kube.raw import async_raw_client

console = Console()
TOLERATIONS = [
    {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"},
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def wait_node_ready(client: Any, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await client.get(f"/api/v1/nodes/{name}")
        if resp.status_code == 200:
            conds = resp.json().get("status", {}).get("conditions") or []
            taints = resp.json().get("spec", {}).get("taints") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) and not any(
                t["key"].startswith("node.kubernetes.io/") for t in taints
            ):
                return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"node {name} not ready after {timeout}s")


async def create_namespace(client: Any, ns: str) -> None:
    """Create ``ns`` and wait for its default service account (pods are refused until it exists)."""
    await create(
        client, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    )
    for _ in range(200):
        if (await client.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default")).status_code == 200:
            return
        await asyncio.sleep(0.1)


def sleep_pod(ns: str, name: str, node: str, **container: Any) -> dict[str, Any]:
    """A pod running ``sleep 3600`` on ``node`` (by hostname label), tolerating the JRM's taint."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": TOLERATIONS,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "sleep", "command": ["sleep", "3600"], **container}],
        },
    }


async def burst(client: Any, node: str, count: int) -> tuple[list[float], float]:
    """Create ``count`` pods for ``node``; return their create->Running latencies and the pods/s."""
    ns = f"bench-{node[:20]}-{count}-{uuid.uuid4().hex[:4]}"
    await create_namespace(client, ns)
    created: dict[str, float] = {}
    running: dict[str, float] = {}
    done = asyncio.Event()

    async def watch() -> None:
        """Record when each pod is first seen Running; a broken stream resumes where it stopped."""
        version = ""
        while True:
            params = {"watch": "1", "timeoutSeconds": "600", "allowWatchBookmarks": "true"}
            if version:
                params["resourceVersion"] = version
            try:
                async with client.stream(
                    "GET", f"/api/v1/namespaces/{ns}/pods", params=params, timeout=None
                ) as resp:
                    async for line in resp.aiter_lines():
                        if not line:
                            continue
                        event = json.loads(line)
                        obj = event.get("object", {})
                        if event.get("type") == "ERROR":  # 410 Gone: start again from now
                            version = ""
                            break
                        version = obj.get("metadata", {}).get("resourceVersion") or version
                        name = obj.get("metadata", {}).get("name")
                        if obj.get("status", {}).get("phase") == "Running" and name not in running:
                            running[name] = time.monotonic()
                            if len(running) == count:
                                done.set()
                                return
            except (httpx2.HTTPError, json.JSONDecodeError) as exc:
                console.print(f"[yellow]watch of {ns} broke ({exc!r}); resuming[/yellow]")
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    sem = asyncio.Semaphore(16)

    async def make(i: int) -> None:
        name = f"p{i}"
        body = sleep_pod(ns, name, node, resources={"requests": {"cpu": "1m", "memory": "1Mi"}})
        async with sem:
            await create(client, f"/api/v1/namespaces/{ns}/pods", body)
            created[name] = time.monotonic()

    start = time.monotonic()
    await asyncio.gather(*(make(i) for i in range(count)))
    try:
        await asyncio.wait_for(done.wait(), timeout=600)
    except TimeoutError:
        missing = count - len(running)
        raise SystemExit(f"error: {missing} of {count} pods on {node} not Running after 600 s") from None
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
    latencies = [running[n] - created[n] for n in created if n in running]
    rate = count / (max(running.values()) - start)
    await delete(client, f"/api/v1/namespaces/{ns}")
    return latencies, rate


async def wait_namespaces_gone(client: Any, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = (await client.get("/api/v1/namespaces")).json().get("items", [])
        if not any(i["metadata"]["name"].startswith("bench-") for i in items):
            return
        await asyncio.sleep(1)


async def run_sleep_pods(kubeconfig: Path, node: str, ns: str, count: int, timeout: float = 600) -> float:
    """Create namespace ``ns`` with ``count`` sleep pods for ``node``, wait until all run; return the
    seconds from the first create to all Running."""
    client = async_raw_client(kubeconfig, timeout=60)
    try:
        await create_namespace(client, ns)
        sem = asyncio.Semaphore(16)

        async def make(i: int) -> None:
            async with sem:
                await create(client, f"/api/v1/namespaces/{ns}/pods", sleep_pod(ns, f"p{i}", node))

        start = time.monotonic()
        await asyncio.gather(*(make(i) for i in range(count)))
        while time.monotonic() < start + timeout:
            items = (await client.get(f"/api/v1/namespaces/{ns}/pods")).json().get("items", [])
            if sum(1 for p in items if p.get("status", {}).get("phase") == "Running") == count:
                return time.monotonic() - start
            await asyncio.sleep(1)
        raise RuntimeError(f"not all {count} pods on {node} Running after {timeout:.0f} s")
    finally:
        await client.aclose()


async def delete_namespace(kubeconfig: Path, ns: str, wait: bool = False) -> None:
    """Delete ``ns``; with ``wait``, until no bench namespace is left."""
    client = async_raw_client(kubeconfig, timeout=60)
    try:
        await delete(client, f"/api/v1/namespaces/{ns}")
        if wait:
            await wait_namespaces_gone(client)
    finally:
        await client.aclose()


async def run(kubeconfig: Path, jrm_node: str, kwok_node: str, bursts: list[int]) -> list[dict[str, Any]]:
    client = async_raw_client(kubeconfig, timeout=60)
    rows = []
    try:
        await wait_node_ready(client, jrm_node)
        await wait_node_ready(client, kwok_node)
        for n in bursts:
            for target, node in (("kwok", kwok_node), ("jrm", jrm_node)):
                console.print(f"[cyan]•[/cyan] burst of {n} pods on {target}")
                lat, rate = await burst(client, node, n)
                rows.append(
                    {
                        "target": target,
                        "pods": n,
                        "p50": percentile(lat, 0.5),
                        "p99": percentile(lat, 0.99),
                        "mean": statistics.fmean(lat),
                        "rate": rate,
                    }
                )
                await wait_namespaces_gone(client)
    finally:
        await client.aclose()
    return rows


def kwok_node_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
        },
    }


async def register_kwok_node(kubeconfig: Path, name: str) -> None:
    client = async_raw_client(kubeconfig)
    try:
        with contextlib.suppress(ApiError):
            await create(client, "/api/v1/nodes", kwok_node_body(name))
        await patch(client, f"/api/v1/nodes/{name}/status", {"status": kwok_node_body(name)["status"]}, MERGE)
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bursts", default="10,100,500")
    parser.add_argument("--pods-capacity", type=int, default=600)
    args = parser.parse_args()
    bursts = [int(x) for x in args.bursts.split(",") if x]
    tmp = Path(tempfile.mkdtemp(prefix="jiriaf-bench-"))
    cluster = LocalCluster(tmp / "cluster", progress=lambda m: console.print(f"[cyan]•[/cyan] {m}"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        kubeconfig = cluster.up()
        kwok_bin = build.ensure_built(["kwok"], progress=lambda m: console.print(f"[cyan]•[/cyan] {m}"))[
            "kwok"
        ]
        jrm_node, kwok_node = "bench-jrm", "bench-kwok"
        asyncio.run(register_kwok_node(kubeconfig, kwok_node))
        procs.append(
            subprocess.Popen(
                [
                    str(kwok_bin),
                    f"--kubeconfig={kubeconfig}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    "--node-ip=127.0.0.1",
                    f"--server-address=127.0.0.1:{free_port()}",
                ],
                stdout=(tmp / "kwok.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        env = {
            **os.environ,
            "NODENAME": jrm_node,
            "KUBECONFIG": str(kubeconfig),
            "KUBELET_PORT": str(free_port()),
            "JIRIAF_WORKDIR": str(tmp / "jrm"),
            "JIRIAF_PODS": str(args.pods_capacity),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "jiriaf.cli", "jrm", "run", "--log-level", "WARNING"],
                env=env,
                stdout=(tmp / "jrm.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
        rows = asyncio.run(run(kubeconfig, jrm_node, kwok_node, bursts))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.down()
    table = Table(title="pod create -> Running (client-observed), one node each")
    for col in ("pods", "target", "p50 s", "p99 s", "pods/s", "p50 ratio jrm/kwok", "pods/s ratio jrm/kwok"):
        table.add_column(col, justify="right")
    for n in bursts:
        k = next(r for r in rows if r["pods"] == n and r["target"] == "kwok")
        j = next(r for r in rows if r["pods"] == n and r["target"] == "jrm")
        for r in (k, j):
            ratio = (f"{j['p50'] / k['p50']:.2f}", f"{j['rate'] / k['rate']:.2f}") if r is j else ("", "")
            table.add_row(
                str(n), r["target"], f"{r['p50']:.3f}", f"{r['p99']:.3f}", f"{r['rate']:.1f}", *ratio
            )
    console.print(table)
    console.print(f"logs: {tmp}")


if __name__ == "__main__":
    main()
