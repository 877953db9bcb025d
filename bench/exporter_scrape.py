"""Scrape time of a JRM's ``/metrics`` and ``/metrics/resource`` with 200 running pods, against the
same JRM empty (the baseline, measured in the same run), and a check that the answers are complete.

    python bench/exporter_scrape.py [--pods 200] [--scrapes 30] [--interval 5]

Starts a local control plane in a temporary directory and one JRM (``jiriaf jrm run``); scrapes both
endpoints ``--scrapes`` times with the admin client certificate while the JRM has no pods, then
creates ``--pods`` ``sleep`` pods, waits until all run and a sample covers them, checks that every
pod's container is in both answers with non-zero CPU and memory (and twice as many processes: shim
and sleep), and scrapes again. Prints a table with p50/p99 scrape times, body sizes and the ratios
to the baseline, plus the JRM's sampling time and its CPU use while idle with the pods. Everything it
starts is stopped at the end; it exits non-zero if an answer was incomplete.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
import psutil
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from jiriaf.devcluster.cluster import LocalCluster, free_port
from jiriaf.monitor.prometheus import api_access_from_kubeconfig
from pod_startup import delete_namespace, percentile, run_sleep_pods

console = Console()
ENDPOINTS = ("/metrics", "/metrics/resource", "/stats/summary")


def kubelet_client(kubeconfig: Path, port: int, secrets: Path) -> httpx2.Client:
    access = api_access_from_kubeconfig(kubeconfig, secrets)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the JRM's serving certificate is self-signed
    ctx.load_cert_chain(access.cert_file or "", access.key_file or "")
    return httpx2.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=60)


def scrape(client: httpx2.Client, path: str, count: int) -> dict[str, float]:
    times, sizes = [], []
    for _ in range(count):
        start = time.perf_counter()
        resp = client.get(path, headers={"Accept-Encoding": "identity"})
        times.append(time.perf_counter() - start)
        resp.raise_for_status()
        sizes.append(len(resp.content))
    return {"p50": percentile(times, 0.5), "p99": percentile(times, 0.99), "bytes": statistics.fmean(sizes)}


def families(client: httpx2.Client, path: str) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(client.get(path).text)}


def check_complete(client: httpx2.Client, ns: str, pods: int) -> list[str]:
    """What is missing or wrong in the answers (empty when complete)."""
    problems = []
    res = families(client, "/metrics/resource")
    cpu = {
        s.labels["pod"]: s.value for s in res["container_cpu_usage_seconds"] if s.labels["namespace"] == ns
    }
    mem = {
        s.labels["pod"]: s.value
        for s in res["container_memory_working_set_bytes"]
        if s.labels["namespace"] == ns
    }
    start = {s.labels["pod"] for s in res["container_start_time_seconds"] if s.labels["namespace"] == ns}
    if len(cpu) != pods or len(mem) != pods or len(start) != pods:
        problems.append(f"/metrics/resource has {len(cpu)} cpu, {len(mem)} memory, {len(start)} start series")
    if any(v <= 0 for v in [*cpu.values(), *mem.values()]):
        problems.append("/metrics/resource has a zero CPU or memory figure")
    met = families(client, "/metrics")
    procs = [
        s
        for s in met["jiriaf_process_cpu_seconds"]
        if s.labels["namespace"] == ns and s.labels["mode"] == "user"
    ]
    if len({s.labels["pid"] for s in procs}) != 2 * pods:
        problems.append(
            f"/metrics has {len({s.labels['pid'] for s in procs})} processes, expected {2 * pods}"
        )
    running = [s.value for s in met["jiriaf_jrm_pods"] if s.labels["phase"] == "Running"]
    if running != [pods]:
        problems.append(f"/metrics reports {running} Running pods")
    summary = client.get("/stats/summary").json()
    if len([p for p in summary["pods"] if p["podRef"]["namespace"] == ns]) != pods:
        problems.append("/stats/summary lacks pods")
    return problems


def gauge(client: httpx2.Client, name: str) -> float:
    samples = families(client, "/metrics").get(name) or []
    return samples[0].value if samples else float("nan")


def wait_sampled(client: httpx2.Client, processes: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gauge(client, "jiriaf_jrm_sampled_processes") >= processes:
            return
        time.sleep(1)
    raise RuntimeError(f"no sample with {processes} processes after {timeout:.0f}s")


def idle_cpu(pid: int, seconds: float = 10) -> float:
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    return (after.user + after.system - before.user - before.system) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--interval", type=float, default=5.0, help="the JRM's metrics_interval")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the pods to run")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jiriaf-bench-scrape-"))
    cluster = LocalCluster(tmp / "cluster", progress=lambda m: console.print(f"[cyan]•[/cyan] {m}"))
    jrm: subprocess.Popen[bytes] | None = None
    rows: dict[tuple[str, str], dict[str, float]] = {}
    extra: dict[str, float] = {}
    problems: list[str] = []
    try:
        kubeconfig = cluster.up()
        node, port = "bench-scrape", free_port()
        env = {
            **os.environ,
            "NODENAME": node,
            "KUBECONFIG": str(kubeconfig),
            "KUBELET_PORT": str(port),
            "VKUBELET_POD_IP": "127.0.0.1",
            "JIRIAF_WORKDIR": str(tmp / "jrm"),
            "JIRIAF_PODS": str(args.pods + 10),
            "JIRIAF_METRICS_INTERVAL": str(args.interval),
        }
        jrm = subprocess.Popen(
            [sys.executable, "-m", "jiriaf.cli", "jrm", "run", "--log-level", "WARNING"],
            env=env,
            stdout=(tmp / "jrm.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        client = kubelet_client(kubeconfig, port, tmp / "secrets")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.get("/healthz").raise_for_status()
                break
            except httpx2.HTTPError:
                if time.monotonic() > deadline or jrm.poll() is not None:
                    raise RuntimeError(f"the JRM did not come up; see {tmp / 'jrm.log'}") from None
                time.sleep(0.5)
        wait_sampled(client, 0)
        console.print(f"[cyan]•[/cyan] baseline: {args.scrapes} scrapes of an empty JRM")
        for path in ENDPOINTS:
            rows[("empty", path)] = scrape(client, path, args.scrapes)
        extra["empty sample s"] = gauge(client, "jiriaf_jrm_sample_duration_seconds")
        extra["empty idle CPU cores"] = idle_cpu(jrm.pid)
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        console.print(f"[cyan]•[/cyan] creating {args.pods} sleep pods")
        extra["pods Running after s"] = asyncio.run(
            run_sleep_pods(kubeconfig, node, ns, args.pods, args.timeout)
        )
        wait_sampled(client, 2 * args.pods)
        time.sleep(args.interval + 1)  # a sample in which every pod had been running for a while
        problems = check_complete(client, ns, args.pods)
        console.print(f"[cyan]•[/cyan] {args.scrapes} scrapes with {args.pods} pods")
        for path in ENDPOINTS:
            rows[(f"{args.pods} pods", path)] = scrape(client, path, args.scrapes)
        extra[f"{args.pods} pods sample s"] = gauge(client, "jiriaf_jrm_sample_duration_seconds")
        extra[f"{args.pods} pods idle CPU cores"] = idle_cpu(jrm.pid)
        asyncio.run(delete_namespace(kubeconfig, ns))
    finally:
        if jrm is not None:
            jrm.terminate()
            try:
                jrm.wait(120)
            except subprocess.TimeoutExpired:
                jrm.kill()
                jrm.wait()
        cluster.down()
    table = Table(
        title=f"JRM exporter scrape time (p50/p99 of {args.scrapes} scrapes, sampling every {args.interval}s)"
    )
    for col in ("JRM", "endpoint", "p50 ms", "p99 ms", "KiB", "p50 ratio to empty"):
        table.add_column(col, justify="right")
    for (state, path), r in rows.items():
        base = rows[("empty", path)]
        ratio = "" if state == "empty" else f"{r['p50'] / base['p50']:.1f}"
        table.add_row(
            state, path, f"{r['p50'] * 1000:.1f}", f"{r['p99'] * 1000:.1f}", f"{r['bytes'] / 1024:.1f}", ratio
        )
    console.print(table)
    for key, value in extra.items():
        console.print(f"{key}: {value:.3f}")
    if problems:
        for p in problems:
            console.print(f"[red]incomplete:[/red] {p}")
    else:
        console.print(
            f"[green]complete:[/green] all {args.pods} pods in /metrics, /metrics/resource and /stats/summary"
        )
    console.print(f"logs: {tmp}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
