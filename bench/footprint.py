"""What a JRM costs: its own memory and CPU at idle and with many pods, and what many JRM nodes cost
the control plane, each against kwok's fake kubelet measured in the same run.

    python bench/footprint.py [--pods 0,50,200] [--nodes 1,4,8] [--window 20]

Part 1 (pods): one JRM (``jiriaf jrm run``) and one kwok-managed node on a local control plane.
For each pod count, that many ``sleep`` pods are created for each node and run; then, over
``--window`` seconds, the agent process's resident memory (RSS, the agent alone: the pods' own
processes are not counted) and CPU (user + system time over the window) are read with psutil.

Part 2 (nodes): for each node count K, K JRM processes register K Nodes and keep their Leases and
status; over the window, the kube-apiserver's CPU and the agents' summed CPU and RSS are read. The
baseline is K nodes held by one kwok process. The ratios are the result: absolute numbers vary
between machines. Everything runs on 127.0.0.1 and is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from jiriaf.devcluster import build
from jiriaf.devcluster.cluster import LocalCluster, free_port
from jiriaf.kube.patching import delete
from jiriaf.kube.raw import async_raw_client
from pod_startup import delete_namespace, register_kwok_node, run_sleep_pods, wait_node_ready

console = Console()
MIB = 1024 * 1024


def say(message: str) -> None:
    console.print(f"[cyan]•[/cyan] {message}")


def usage(groups: dict[str, Sequence[psutil.Process]], window: float) -> dict[str, tuple[float, float]]:
    """Per group: (CPU % of one core over the same ``window`` seconds, RSS MiB at its end), summed."""

    def cpu(procs: Sequence[psutil.Process]) -> float:
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))

    before, start = {g: cpu(ps) for g, ps in groups.items()}, time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - start
    return {
        g: (100.0 * (cpu(ps) - before[g]) / elapsed, sum(p.memory_info().rss for p in ps) / MIB)
        for g, ps in groups.items()
    }


class Agents:
    """The JRM and kwok processes of one part, stopped by pid at the end."""

    def __init__(self, tmp: Path, kubeconfig: Path) -> None:
        self.tmp = tmp
        self.kubeconfig = kubeconfig
        self.procs: list[subprocess.Popen[bytes]] = []

    def jrm(self, node: str, pods: int = 110) -> psutil.Process:
        env = {
            **os.environ,
            "NODENAME": node,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBELET_PORT": str(free_port()),
            "JIRIAF_WORKDIR": str(self.tmp / node),
            "JIRIAF_PODS": str(pods),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "jiriaf.cli", "jrm", "run", "--log-level", "WARNING"],
            env=env,
            stdout=(self.tmp / f"{node}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return psutil.Process(proc.pid)

    def kwok(self, nodes: Sequence[str]) -> psutil.Process:
        binary = build.ensure_built(["kwok"], progress=say)["kwok"]
        for node in nodes:
            asyncio.run(register_kwok_node(self.kubeconfig, node))
        proc = subprocess.Popen(
            [
                str(binary),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
            stdout=(self.tmp / f"kwok-{len(self.procs)}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return psutil.Process(proc.pid)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


async def nodes_ready(kubeconfig: Path, names: Sequence[str]) -> None:
    client = async_raw_client(kubeconfig, timeout=60)
    try:
        for name in names:
            await wait_node_ready(client, name, timeout=300)
    finally:
        await client.aclose()


async def delete_nodes(kubeconfig: Path, names: Sequence[str]) -> None:
    client = async_raw_client(kubeconfig, timeout=60)
    try:
        for name in names:
            await delete(client, f"/api/v1/nodes/{name}")
    finally:
        await client.aclose()


def part_pods(tmp: Path, kubeconfig: Path, counts: Sequence[int], window: float) -> list[dict[str, Any]]:
    agents = Agents(tmp / "pods", kubeconfig)
    agents.tmp.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    try:
        targets = {
            "kwok": ("fp-kwok", agents.kwok(["fp-kwok"])),
            "jrm": ("fp-jrm", agents.jrm("fp-jrm", 1000)),
        }
        asyncio.run(nodes_ready(kubeconfig, [node for node, _ in targets.values()]))
        for count in counts:
            for target, (node, proc) in targets.items():
                say(f"{count} pods on {target}")
                ns = f"bench-{uuid.uuid4().hex[:6]}" if count else None
                if ns:
                    asyncio.run(run_sleep_pods(kubeconfig, node, ns, count))
                time.sleep(min(5.0, window))  # let the start-up work settle
                cpu, rss = usage({"agent": [proc]}, window)["agent"]
                rows.append({"pods": count, "target": target, "cpu": cpu, "rss": rss})
                if ns:
                    asyncio.run(delete_namespace(kubeconfig, ns, wait=True))
        asyncio.run(delete_nodes(kubeconfig, [node for node, _ in targets.values()]))
    finally:
        agents.stop()
    return rows


def part_nodes(
    tmp: Path, kubeconfig: Path, apiserver: psutil.Process, counts: Sequence[int], window: float
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for k in counts:
        for target in ("kwok", "jrm"):
            agents = Agents(tmp / f"nodes-{target}-{k}", kubeconfig)
            agents.tmp.mkdir(parents=True)
            names = [f"fn-{target}-{k}-{i}" for i in range(k)]
            try:
                say(f"{k} nodes held by {target}")
                procs = [agents.kwok(names)] if target == "kwok" else [agents.jrm(n) for n in names]
                asyncio.run(nodes_ready(kubeconfig, names))
                time.sleep(min(5.0, window))
                measured = usage({"apiserver": [apiserver], "agents": procs}, window)
                api_cpu, (agent_cpu, agent_rss) = measured["apiserver"][0], measured["agents"]
                rows.append(
                    {
                        "nodes": k,
                        "target": target,
                        "api_cpu": api_cpu,
                        "agent_cpu": agent_cpu,
                        "rss": agent_rss,
                    }
                )
            finally:
                agents.stop()
                asyncio.run(delete_nodes(kubeconfig, names))
    return rows


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", default="0,50,200", help="pod counts for part 1")
    parser.add_argument("--nodes", default="1,4,8", help="node counts for part 2")
    parser.add_argument("--window", type=float, default=20.0, help="seconds each figure is measured over")
    args = parser.parse_args()
    try:
        pods = [int(x) for x in args.pods.split(",") if x]
        nodes = [int(x) for x in args.nodes.split(",") if x]
    except ValueError:
        raise SystemExit("error: --pods and --nodes are comma-separated integers") from None
    if not all(0 <= p <= 1000 for p in pods) or not all(1 <= n <= 64 for n in nodes) or args.window <= 0:
        raise SystemExit("error: pods 0-1000, nodes 1-64 and a positive window")
    tmp = Path(tempfile.mkdtemp(prefix="jiriaf-bench-footprint-"))
    cluster = LocalCluster(tmp / "cluster", progress=say)
    try:
        kubeconfig = cluster.up()
        apiserver = psutil.Process(cluster.state().processes["kube-apiserver"].pid)
        pod_rows = part_pods(tmp, kubeconfig, pods, args.window)
        node_rows = part_nodes(tmp, kubeconfig, apiserver, nodes, args.window)
    finally:
        cluster.down()

    table = Table(title=f"agent footprint with N pods (agent process only, CPU over {args.window:g} s)")
    for col in ("pods", "target", "RSS MiB", "CPU %", "RSS ratio jrm/kwok", "CPU ratio jrm/kwok"):
        table.add_column(col, justify="right")
    for count in pods:
        k = next(r for r in pod_rows if r["pods"] == count and r["target"] == "kwok")
        j = next(r for r in pod_rows if r["pods"] == count and r["target"] == "jrm")
        table.add_row(str(count), "kwok", f"{k['rss']:.0f}", f"{k['cpu']:.2f}", "", "")
        table.add_row(
            str(count),
            "jrm",
            f"{j['rss']:.0f}",
            f"{j['cpu']:.2f}",
            ratio(j["rss"], k["rss"]),
            ratio(j["cpu"], k["cpu"]),
        )
    console.print(table)

    table = Table(title="K idle nodes: what they cost the apiserver and the agents")
    for col in (
        "nodes",
        "target",
        "apiserver CPU %",
        "agents CPU %",
        "agents RSS MiB",
        "apiserver CPU ratio jrm/kwok",
    ):
        table.add_column(col, justify="right")
    for n in nodes:
        kw = next(r for r in node_rows if r["nodes"] == n and r["target"] == "kwok")
        jr = next(r for r in node_rows if r["nodes"] == n and r["target"] == "jrm")
        for r in (kw, jr):
            extra = ratio(jr["api_cpu"], kw["api_cpu"]) if r is jr else ""
            table.add_row(
                str(n), r["target"], f"{r['api_cpu']:.1f}", f"{r['agent_cpu']:.2f}", f"{r['rss']:.0f}", extra
            )
    console.print(table)
    console.print(f"logs: {tmp}")


if __name__ == "__main__":
    main()
