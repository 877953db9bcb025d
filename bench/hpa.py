"""The paper's HPA experiment on a JRM: replicas and CPU against time, as a table and a PNG.

    python bench/hpa.py [--rate 15] [--work-ms 10] [--load-seconds 120] [--max-replicas 4] [--out hpa.png]

Starts a local control plane in a temporary directory (controller-manager with a 20 s downscale
stabilisation window and a 5 s HPA sync period, as the tests use), one JRM in per-pod address mode,
and ``deploy/hpa`` on it (CPU-burning http-server, autoscaling/v2 HPA at 30% CPU, load balancer).
It samples the idle system, sends ``--rate`` requests/s of ``--work-ms`` ms CPU each through the
balancer for ``--load-seconds``, then records the cool-down until the HPA is back at one replica
(at most ``--cooldown-seconds``). Prints the timeline and the load summary, and saves the plot.
Bounded: one JRM, at most ``--max-replicas`` replicas, a few minutes. Everything it starts is
stopped by pid at the end.

The numbers to read are relative: the CPU per replica against the 30% target, the replicas the HPA
chose against ``ceil(offered CPU / (30% of the request))``, and the time from the load's start to
the scale-up and from its end to the scale-down.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from lightkube import Client, KubeConfig
from lightkube.codecs import from_dict
from lightkube.models.core_v1 import NodeStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Pod, Secret, ServiceAccount

from jiriaf.devcluster.cluster import LocalCluster, free_port
from jiriaf.kube.raw import raw_client
from jiriaf.workloads.hpa_experiment import (
    HpaRecorder,
    LoadProcess,
    format_timeline,
    hpa_documents,
    plot_timeline,
)

REPO = Path(__file__).resolve().parents[1]
CPU_REQUEST_M = 100.0  # deploy/hpa/http-server.yaml
TARGET = 30


def wait(predicate: object, timeout: float, what: str, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(every)
    raise SystemExit(f"error: timed out after {timeout:.0f}s waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rate", type=float, default=15.0, help="requests per second during the load")
    ap.add_argument("--work-ms", type=float, default=10.0, help="CPU ms per request")
    ap.add_argument("--load-seconds", type=float, default=120.0, help="length of the load phase")
    ap.add_argument("--cooldown-seconds", type=float, default=180.0, help="longest cool-down recorded")
    ap.add_argument("--max-replicas", type=int, default=4, help="the HPA's maxReplicas")
    ap.add_argument("--out", type=Path, default=Path("hpa.png"), help="where the plot goes")
    args = ap.parse_args()
    if not (0 < args.rate <= 200 and 0 < args.work_ms <= 100 and 0 < args.load_seconds <= 600):
        raise SystemExit("error: keep it small: rate <= 200/s, work-ms <= 100, load-seconds <= 600")
    if not 1 <= args.max_replicas <= 10:
        raise SystemExit("error: max-replicas must be between 1 and 10")

    with tempfile.TemporaryDirectory(prefix="jiriaf-bench-hpa-") as tmp:
        work = Path(tmp)
        cluster = LocalCluster(
            work / "cluster",
            extra_args={
                "kube-controller-manager": [
                    "--horizontal-pod-autoscaler-downscale-stabilization=20s",
                    "--horizontal-pod-autoscaler-sync-period=5s",
                ]
            },
            progress=lambda m: print(f"[cluster] {m}", flush=True),
        )
        jrm: subprocess.Popen[bytes] | None = None
        try:
            kubeconfig = cluster.up()
            client = Client(KubeConfig.from_file(kubeconfig), field_manager="jiriaf-bench")
            node = f"jrm-hpa-{uuid.uuid4().hex[:4]}"
            env = {
                **os.environ,
                "NODENAME": node,
                "KUBECONFIG": str(kubeconfig),
                "VKUBELET_POD_IP": "127.0.0.1",
                "KUBELET_PORT": str(free_port()),
                "JIRIAF_WORKDIR": str(work / node),
                "JIRIAF_ADDRESS_MODE": "per-pod",
                "JIRIAF_METRICS_INTERVAL": "2",
            }
            with (work / "jrm.log").open("wb") as log:
                jrm = subprocess.Popen(
                    [sys.executable, "-m", "jiriaf.cli", "jrm", "run", "--log-level", "WARNING"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            wait(
                lambda: any(
                    c.type == "Ready" and c.status == "True"
                    for c in (client.get(Node, node).status or NodeStatus()).conditions or []
                ),
                120,
                "the JRM node Ready",
            )
            ns = "hpa"
            client.create(Namespace(metadata=ObjectMeta(name=ns)))
            wait(
                lambda: client.get(ServiceAccount, "default", namespace=ns), 60, "the default ServiceAccount"
            )
            client.create(
                Secret(
                    metadata=ObjectMeta(name="jiriaf-workloads-kubeconfig", namespace=ns),
                    data={"config": base64.b64encode(kubeconfig.read_bytes()).decode()},
                )
            )
            ports = {8080: free_port(), 8090: free_port()}
            for doc in hpa_documents(
                REPO / "deploy" / "hpa",
                python=sys.executable,
                namespace=ns,
                node_name=node,
                ports=ports,
                work_ms=args.work_ms,
                max_replicas=args.max_replicas,
            ):
                client.create(from_dict(doc))

            lb_url: list[str] = []

            def lb_ready() -> bool:
                for p in client.list(Pod, namespace=ns, labels={"app": "http-lb"}):
                    st = p.status
                    if (
                        st
                        and st.podIP
                        and any(c.type == "Ready" and c.status == "True" for c in st.conditions or [])
                    ):
                        lb_url.append(f"http://{st.podIP}:{ports[8090]}/")
                        return True
                return False

            wait(lb_ready, 120, "the load balancer Ready")
            recorder = HpaRecorder(client, raw_client(kubeconfig), ns)
            print("[bench] waiting for the HPA's first CPU measurement", flush=True)
            wait(
                lambda: recorder.sample("idle").utilization is not None, 180, "the HPA measuring CPU", every=5
            )
            recorder.record("idle", seconds=10)
            what = f"{args.rate:g} requests/s x {args.work_ms:g} ms CPU for {args.load_seconds:g} s"
            print(f"[bench] load: {what}", flush=True)
            load = LoadProcess(lb_url[0], args.rate, 4, args.load_seconds + 60, work / "load.log")
            load_start = recorder.samples[-1].t
            try:
                recorder.record("load", seconds=args.load_seconds)
            finally:
                summary = load.stop()
            load_end = recorder.samples[-1].t
            print("[bench] cool-down", flush=True)
            end = time.monotonic() + args.cooldown_seconds
            while time.monotonic() < end:
                s = recorder.sample("cool-down")
                if s.current == 1 and s.desired == 1 and s.t - load_end > 10:
                    break
                time.sleep(5)
        finally:
            if jrm is not None and jrm.poll() is None:
                jrm.send_signal(signal.SIGTERM)
                try:
                    jrm.wait(60)
                except subprocess.TimeoutExpired:
                    jrm.kill()
                    jrm.wait()
            cluster.down()

    samples = recorder.samples
    print()
    print(format_timeline(samples))
    offered_m = args.rate * args.work_ms  # CPU millicores the load asks for
    expected = min(args.max_replicas, math.ceil(offered_m / (CPU_REQUEST_M * TARGET / 100.0)))
    up = next((s.t for s in samples if s.phase == "load" and (s.desired or 0) > 1), None)
    down = next((s.t for s in samples if s.phase == "cool-down" and s.desired == 1), None)
    peak = recorder.max_replicas()
    print()
    share = offered_m / CPU_REQUEST_M * 100
    print(f"offered CPU                 {offered_m:.0f} m ({share:.0f}% of one request)")
    rule = f"ceil(offered / 30% of request), max {args.max_replicas}"
    print(f"replicas: peak / expected   {peak} / {expected} ({rule})")
    print(f"scale-up after load start   {'-' if up is None else f'{up - load_start:.0f} s'}")
    print(f"scale-down after load end   {'-' if down is None else f'{down - load_end:.0f} s'}"
          " (20 s stabilisation window)")  # fmt: skip
    answered = summary.get("answered", 0)
    p50, p99 = 1000 * (summary.get("p50_s") or 0), 1000 * (summary.get("p99_s") or 0)
    print(f"load: {answered} answered, {summary.get('errors', 0)} errors, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    path = plot_timeline(
        samples, args.out, TARGET, f"HPA on a JRM: {args.rate:g} req/s x {args.work_ms:g} ms CPU"
    )
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
