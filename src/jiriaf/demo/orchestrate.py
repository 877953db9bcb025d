"""``jiriaf demo``: the paper's proof of concept on one machine.

1. a real local control plane (etcd, apiserver, scheduler, controller-manager, metrics-server);
2. the central service (JCS) with its embedded SQLite database and a local site (PSI/J local
   executor), plus Prometheus when it is installed;
3. a request for the stream workflow (sender -> FIFO -> receiver with 16 threads) on two JRM
   nodes: the JCS matches it, launches a pilot whose two JRMs join the cluster, and applies the
   workflow pinned to them;
4. the arrival rate ramps low -> high -> low; every step the digital twin reads the queue length,
   estimates the load state and, when its recommendation changes, switches the receiver between
   16 and 32 threads through the JCS's control action;
5. a Rich view shows nodes (with remaining walltime), pods, queue, rates and each twin decision;
6. at the end a report (summary table and PNG plot) is written and everything is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from jiriaf.devcluster.cluster import LocalCluster, free_port
from jiriaf.errors import UserError
from jiriaf.kube.patching import ApiError, create
from jiriaf.kube.raw import async_raw_client

NAMESPACE = "demo"
REPO_DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
LOW_RATE, HIGH_RATE = 100.0, 166.0


def demo_directory() -> Path:
    base = os.environ.get("JIRIAF_DEMO_DIR") or str(Path.home() / ".local" / "share" / "jiriaf" / "demo")
    return Path(base)


def rate_schedule(steps: int, low: float = LOW_RATE, high: float = HIGH_RATE) -> list[float]:
    """Low for the first quarter, high for the next 40 %, low again for the rest."""
    up, down = max(1, round(steps * 0.25)), max(2, round(steps * 0.65))
    return [high if up <= i < down else low for i in range(steps)]


def parse_gauge(text: str, name: str) -> float | None:
    """The sum of a metric's samples in Prometheus text exposition (None when absent)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            try:
                total += float(line.rsplit(" ", 1)[-1])
                seen = True
            except ValueError:
                continue
    return total if seen else None


@dataclass
class Processes:
    """Child processes the demo started, stopped by pid at the end."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        fh = log.open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.procs.append((name, proc))

    def stop(self) -> None:
        # each child leads its own session: signal the whole group, so grandchildren (Prometheus under
        # 'jiriaf monitor prometheus-run') end with it
        for _, proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):  # whatever of the group is left
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stream_manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in ("receiver.yaml", "sender.yaml"):
        path = REPO_DEPLOY / "stream" / name
        if not path.exists():
            raise UserError(f"{path} is missing: run the demo from a clone of the jiriaf repository")
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for doc in docs:  # the JCS pins pods to the lease's nodes; the demo does not need the selector
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if spec is not None:
            spec.pop("nodeSelector", None)
    return docs


def stream_request(walltime: int) -> dict[str, Any]:
    """The workflow request the demo files."""
    return {
        "name": "stream",
        "namespace": NAMESPACE,
        "nodes": 2,
        "cpus_per_node": 1,
        "memory_mb_per_node": 512,
        "node_type": "cpu",
        "walltime": walltime,
        "workflow": {"manifests": _stream_manifests()},
        "actions": [
            {
                "name": "set-threads",
                "kind": "http",
                "service": "stream-receiver",
                "port": 8080,
                "path": "/control",
                "param": "threads",
            },
            {
                "name": "set-rate",
                "kind": "http",
                "service": "stream-sender",
                "port": 8081,
                "path": "/control",
                "param": "rate",
            },
        ],
    }


class DemoView:
    """The terminal view, rebuilt every step."""

    def __init__(self) -> None:
        self.nodes: list[tuple[str, str, str, int]] = []
        self.pods: list[tuple[str, str, str]] = []
        self.rows: list[tuple[str, ...]] = []
        self.status = "starting"

    def render(self) -> Group:
        nodes = Table(title="JRM nodes", expand=True)
        for col in ("node", "ready", "walltime left", "pods"):
            nodes.add_column(col)
        for name, ready, left, count in self.nodes:
            nodes.add_row(name, ready, left, str(count))
        pod_table = Table(title="pods", expand=True)
        for col in ("pod", "phase", "node"):
            pod_table.add_column(col)
        for pod_row in self.pods:
            pod_table.add_row(*pod_row)
        steps = Table(title="stream and digital twin (latest steps)", expand=True)
        for col in ("t s", "rate set", "processed/s", "queue", "threads", "P(high)", "twin", "action"):
            steps.add_column(col, justify="right")
        for row in self.rows[-12:]:
            steps.add_row(*row)
        return Group(f"[bold]jiriaf demo[/bold] — {self.status}", nodes, pod_table, steps)


class Demo:
    """Runs the whole demo; :meth:`run` returns the report path."""

    def __init__(self, duration: float, keep: bool, step_seconds: float = 5.0) -> None:
        self.duration = duration
        self.keep = keep
        self.step = step_seconds
        self.dir = demo_directory()
        self.console = Console()
        self.procs = Processes()
        self.cluster = LocalCluster(self.dir / "cluster", progress=self.say)
        self.view = DemoView()

    def say(self, msg: str) -> None:
        self.console.print(f"[cyan]•[/cyan] {msg}", highlight=False)

    # ------------------------------------------------------------------ set-up
    def _token(self, env: dict[str, str]) -> str:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "jiriaf.jcs",
                "token",
                "create",
                "--user",
                "demo",
                "--admin",
                "--label",
                "jiriaf demo",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        found = re.search(r"\b(jcs_[A-Za-z0-9_\-]+)", res.stdout)
        if res.returncode != 0 or not found:
            raise UserError(f"could not create a JCS token: {res.stderr.strip() or res.stdout.strip()}")
        return found.group(1)

    def _start_prometheus(self, kubeconfig: Path) -> str | None:
        """Debian's Prometheus (when installed), scraping the JRMs and the pods through file discovery
        kept current by ``jiriaf monitor file-sd``."""
        if shutil.which("prometheus") is None:
            self.say("Prometheus not installed: the demo reads the receiver's metrics directly")
            return None
        pdir = self.dir / "prometheus"
        pdir.mkdir(exist_ok=True)
        cli = [sys.executable, "-m", "jiriaf.cli", "monitor"]
        res = subprocess.run(
            [
                *cli,
                "prometheus-config",
                "--output",
                str(pdir / "prometheus.yml"),
                "--kubeconfig",
                str(kubeconfig),
                "--discovery",
                "file",
                "--sd-dir",
                str(pdir / "sd"),
                "--scrape-interval",
                "5s",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            self.say(f"Prometheus not started: {res.stderr.strip()[:200]}")
            return None
        port = free_port()
        self.procs.start(
            "file-sd",
            [*cli, "file-sd", "--dir", str(pdir / "sd"), "--kubeconfig", str(kubeconfig), "--interval", "5"],
            pdir / "file-sd.log",
        )
        self.procs.start(
            "prometheus",
            [
                *cli,
                "prometheus-run",
                "--config",
                str(pdir / "prometheus.yml"),
                "--data-dir",
                str(pdir / "data"),
                "--port",
                str(port),
            ],
            pdir / "run.log",
        )
        url = f"http://127.0.0.1:{port}"
        self.say(f"Prometheus: {url}")
        return url

    async def _workloads_access(self, kube: httpx2.AsyncClient, kubeconfig: Path) -> None:
        """A fresh namespace, the workloads' ServiceAccount/Role and a kubeconfig Secret with its token."""
        # objects of an earlier run (the cluster's data is kept between runs) would clash with this one
        stale = (await kube.get("/api/v1/nodes", params={"labelSelector": "jiriaf.site=demo-local"})).json()
        for node in stale.get("items", []):
            await kube.delete(f"/api/v1/nodes/{node['metadata']['name']}")
        if (await kube.delete(f"/api/v1/namespaces/{NAMESPACE}")).status_code == 200:
            self.say(f"removing namespace {NAMESPACE} of an earlier run")
            deadline = time.monotonic() + 180
            while (await kube.get(f"/api/v1/namespaces/{NAMESPACE}")).status_code != 404:
                if time.monotonic() > deadline:
                    raise UserError(f"namespace {NAMESPACE} of an earlier run is still terminating")
                await asyncio.sleep(1)
        with contextlib.suppress(ApiError):
            await create(
                kube,
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            )
        server = self.cluster.server_url()
        for doc in yaml.safe_load_all((REPO_DEPLOY / "stream" / "rbac.yaml").read_text()):
            if not doc:
                continue
            doc.setdefault("metadata", {})["namespace"] = NAMESPACE
            group_version = doc["apiVersion"]
            plural = {"ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings"}[
                doc["kind"]
            ]
            base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
            with contextlib.suppress(ApiError):
                await create(kube, f"{base}/namespaces/{NAMESPACE}/{plural}", doc)
        sa = next(
            d["metadata"]["name"]
            for d in yaml.safe_load_all((REPO_DEPLOY / "stream" / "rbac.yaml").read_text())
            if d and d["kind"] == "ServiceAccount"
        )
        tok = await create(
            kube,
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{sa}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": int(self.duration) + 3600},
            },
        )
        import base64

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "sa",
            "clusters": [
                {
                    "name": "c",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(
                            self.cluster.ca_cert.read_bytes()
                        ).decode(),
                    },
                }
            ],
            "users": [{"name": sa, "user": {"token": tok["status"]["token"]}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa, "namespace": NAMESPACE}}],
        }
        with contextlib.suppress(ApiError):
            await create(
                kube,
                f"/api/v1/namespaces/{NAMESPACE}/secrets",
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "jiriaf-workloads-kubeconfig"},
                    "stringData": {"config": yaml.safe_dump(config)},
                },
            )

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.say(f"demo directory: {self.dir}")
        try:
            kubeconfig = self.cluster.up()
            return asyncio.run(self._run(kubeconfig))
        finally:
            if self.keep:
                self.say(
                    "--keep: everything stays up; stop with 'jiriaf dev cluster down --dir "
                    f"{self.cluster.directory}' and kill the JCS (pids in {self.dir / 'pids'})"
                )
                (self.dir / "pids").write_text("\n".join(f"{n} {p.pid}" for n, p in self.procs.procs))
            else:
                self.procs.stop()
                self.cluster.down()
                self.say("stopped everything the demo started")

    async def _run(self, kubeconfig: Path) -> Path:
        env = {
            **os.environ,
            "JIRIAF_JCS_DB": f"sqlite:///{self.dir / 'jcs.sqlite'}",
            "JIRIAF_DATA_DIR": str(self.dir / "data"),
        }
        (self.dir / "jcs.sqlite").unlink(missing_ok=True)  # a fresh database per run
        sites = {
            "sites": {
                "demo-local": {
                    "executor": "local",
                    "kind": "local",
                    "max_nodes": 2,
                    "control_plane": {"kubeconfig": str(kubeconfig), "node_ip": "127.0.0.1"},
                    "environment": {
                        "env": {"JIRIAF_ADDRESS_MODE": "per-pod"},
                        "workdir": str(self.dir / "jrm"),
                    },
                    "jrm": {"nodetype": "cpu"},
                }
            }
        }
        sites_file = self.dir / "sites.yaml"
        sites_file.write_text(yaml.safe_dump(sites))
        token = self._token(env)
        prom_url = self._start_prometheus(kubeconfig)
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "jiriaf.jcs",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--kubeconfig",
            str(kubeconfig),
            "--sites",
            str(sites_file),
            "--reconcile-interval",
            "2",
            "--monitor-interval",
            "5",
            "--pilot-idle-timeout",
            "30",
            "--pilot-registry",
            str(self.dir / "pilots"),
        ]
        if prom_url:
            argv += ["--prometheus-url", prom_url]
        self.procs.start("jcs", argv, self.dir / "jcs.log", env)
        jcs = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(base_url=jcs, headers=headers, timeout=30, trust_env=False) as api:
            await self._wait_http(api, "/healthz", "the JCS")
            self.say(f"JCS and dashboard: {jcs}/ui/ (token in {self.dir / 'token'})")
            token_file = self.dir / "token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            kube = async_raw_client(kubeconfig)
            req_id: int | None = None
            try:
                await self._workloads_access(kube, kubeconfig)
                walltime = int(self.duration) + 900
                resp = await api.post("/api/v1/requests", json=stream_request(walltime))
                if resp.status_code != 201:
                    raise UserError(
                        f"the JCS refused the demo's request: {resp.status_code} {resp.text[:300]}"
                    )
                req_id = resp.json()["id"]
                self.say(f"request {req_id} filed: stream workflow on 2 JRM nodes")
                await self._wait_running(api, kube, req_id)
                samples = await self._loop(api, kube, req_id, prom_url)
                from jiriaf.demo.report import write_report

                report_dir = self.dir / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
                report = write_report(
                    samples, report_dir, "jiriaf demo: stream workflow steered by the digital twin"
                )
                return report
            finally:
                if not self.keep:
                    await self._end_request_and_pilots(api, req_id)
                await kube.aclose()

    async def _end_request_and_pilots(self, api: httpx2.AsyncClient, req_id: int | None) -> None:
        """Cancel the request and stop every pilot, so no JRM outlives the demo."""
        with contextlib.suppress(httpx2.HTTPError):
            if req_id is not None:
                await api.post(f"/api/v1/requests/{req_id}/cancel")
                await self._wait_ended(api, req_id)
            pilots = (await api.get("/api/v1/pilots")).json()
            live = [p for p in pilots if p.get("state") not in ("stopped", "failed")]
            for p in live:
                await api.post(f"/api/v1/pilots/{p['id']}/stop")
            deadline = time.monotonic() + 180
            while live and time.monotonic() < deadline:
                states = {p["id"]: p.get("state") for p in (await api.get("/api/v1/pilots")).json()}
                live = [p for p in live if states.get(p["id"]) not in ("stopped", "failed")]
                await asyncio.sleep(1)
            self.say("pilots stopped" if not live else f"pilots still stopping: {[p['id'] for p in live]}")

    async def _wait_http(self, api: httpx2.AsyncClient, path: str, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx2.HTTPError):
                if (await api.get(path)).status_code == 200:
                    return
            if any(p.poll() is not None for _, p in self.procs.procs):
                raise UserError(f"{what} exited; log in {self.dir}")
            await asyncio.sleep(0.5)
        raise UserError(f"{what} did not answer within {timeout:.0f}s; log in {self.dir}")

    async def _wait_running(self, api: httpx2.AsyncClient, kube: httpx2.AsyncClient, req_id: int) -> None:
        deadline = time.monotonic() + 300
        last = ""
        while time.monotonic() < deadline:
            body = (await api.get(f"/api/v1/requests/{req_id}")).json()
            state, why = body.get("state"), body.get("explanation") or body.get("why") or ""
            if f"{state} {why}" != last:
                self.say(f"request {req_id}: {state} {('- ' + why) if why else ''}")
                last = f"{state} {why}"
            if state in ("failed", "cancelled", "completed"):
                raise UserError(
                    f"request {req_id} ended early ({state}): {why}; JCS log {self.dir / 'jcs.log'}"
                )
            if state == "running" and await self._pods_ready(kube):
                return
            await asyncio.sleep(1)
        raise UserError(f"the workflow did not start within 300 s; JCS log {self.dir / 'jcs.log'}")

    async def _pods_ready(self, kube: httpx2.AsyncClient) -> bool:
        pods = (await kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods")).json().get("items", [])
        ready = [
            p
            for p in pods
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions") or []
            )
        ]
        return len(ready) >= 2

    async def _receiver_url(self, kube: httpx2.AsyncClient) -> str | None:
        pods = (
            await kube.get(
                f"/api/v1/namespaces/{NAMESPACE}/pods",
                params={"labelSelector": "app.kubernetes.io/component=receiver"},
            )
        ).json()
        for p in pods.get("items", []):
            ip = p.get("status", {}).get("podIP")
            if ip and p.get("status", {}).get("phase") == "Running":
                return f"http://{ip}:8080/metrics"
        return None

    async def _refresh_view(self, kube: httpx2.AsyncClient) -> None:
        nodes = (
            (await kube.get("/api/v1/nodes", params={"labelSelector": "jiriaf.site"})).json().get("items", [])
        )
        pods = (await kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods")).json().get("items", [])
        per_node: dict[str, int] = {}
        self.view.pods = []
        for p in pods:
            node = p.get("spec", {}).get("nodeName", "")
            per_node[node] = per_node.get(node, 0) + 1
            self.view.pods.append((p["metadata"]["name"], p.get("status", {}).get("phase", "?"), node))
        self.view.nodes = []
        for n in nodes:
            name = n["metadata"]["name"]
            ready = next(
                (c["status"] for c in n.get("status", {}).get("conditions") or [] if c["type"] == "Ready"),
                "?",
            )
            left = n["metadata"].get("labels", {}).get("jiriaf.alivetime")
            left_s = time.strftime("%H:%M:%S", time.gmtime(int(left))) if left else "-"
            self.view.nodes.append((name, ready, left_s, per_node.get(name, 0)))

    async def _loop(
        self, api: httpx2.AsyncClient, kube: httpx2.AsyncClient, req_id: int, prom_url: str | None
    ) -> list[Any]:
        from jiriaf.demo.report import Sample
        from jiriaf.twin.digital_twin import DigitalTwin
        from jiriaf.twin.live import queueing_model
        from jiriaf.twin.policy import make_policy
        from jiriaf.twin.stabilize import Stabilizer

        # the receiver is an M/M/c queue (exponential service times), the twin's own model; the queue
        # is measured as a time average (Little's law), precise down to ~1e-3 events, so the
        # observation floor sits there: with 32 threads, 100 and 130 Hz differ only below 1e-2
        model = queueing_model(levels=(100.0, 130.0, 150.0, 162.0, 166.0), lq_floor=1e-3)
        twin = DigitalTwin(model, make_policy("threshold", model))
        steps = max(4, int(self.duration // self.step))
        schedule = rate_schedule(steps)
        threads = 16
        # as the HPA does: more threads after 2 consecutive recommendations, fewer only after 3 (one
        # quiet interval with 32 threads under high load must not remove capacity)
        gate = Stabilizer(up=2, down=3)
        samples: list[Sample] = []
        processed_prev: float | None = None
        first_wait: tuple[float, float] | None = None
        t0 = time.monotonic()
        async with httpx2.AsyncClient(timeout=5, trust_env=False) as http:
            with Live(self.view.render(), console=self.console, refresh_per_second=2) as live:
                for step in range(steps):
                    rate = schedule[step]
                    if step == 0 or rate != schedule[step - 1]:
                        await self._action(
                            api,
                            req_id,
                            {"action": "set-rate", "rate": rate, "reason": f"demo ramp: {rate:g} Hz"},
                        )
                    queue_values: list[float] = []
                    processed = None
                    waited: tuple[float, float] | None = None  # (time, total FIFO wait seconds)
                    end = time.monotonic() + self.step
                    while time.monotonic() < end:
                        url = await self._receiver_url(kube)
                        if url:
                            with contextlib.suppress(httpx2.HTTPError):
                                text = (await http.get(url)).text
                                q = parse_gauge(text, "jiriaf_stream_queue_length")
                                if q is not None:
                                    queue_values.append(q)
                                processed = parse_gauge(text, "jiriaf_stream_processed_total")
                                w = parse_gauge(text, "jiriaf_stream_queue_wait_seconds_sum")
                                if w is not None:
                                    waited = (time.monotonic(), w)
                                    first_wait = first_wait or waited
                        await asyncio.sleep(0.25)
                    lq = sum(queue_values) / len(queue_values) if queue_values else 0.0
                    # Little's law: the time-average queue length over the interval is the waiting time
                    # accumulated in it divided by its length (far less noisy than snapshots of the gauge)
                    if waited and first_wait and waited[0] > first_wait[0] and waited[1] >= first_wait[1]:
                        lq = (waited[1] - first_wait[1]) / (waited[0] - first_wait[0])
                    first_wait = waited
                    rate_done = 0.0
                    if processed is not None and processed_prev is not None:
                        rate_done = max(0.0, (processed - processed_prev) / self.step)
                    processed_prev = processed
                    est = twin.observe(lq, threads)
                    rec = est.recommended_threads
                    action = ""
                    if gate.offer(rec, threads):
                        ok = await self._action(
                            api,
                            req_id,
                            {
                                "action": "set-threads",
                                "threads": rec,
                                "source": "jiriaf-twin",
                                "reason": f"twin step {step}: state {model.state_labels[est.map_state]}",
                            },
                        )
                        action = f"{threads}->{rec}" if ok else "refused"
                        if ok:
                            threads = rec
                    p_high = est.p_at_least(2)
                    await self._post_twin(api, req_id, step, est, model, threads, bool(action))
                    await self._refresh_view(kube)
                    t = time.monotonic() - t0
                    samples.append(
                        Sample(
                            t=t,
                            rate=rate,
                            queue=lq,
                            processed_rate=rate_done,
                            threads=threads,
                            recommended=rec,
                            p_high=p_high,
                            nodes_ready=sum(1 for n in self.view.nodes if n[1] == "True"),
                            pods_running=sum(1 for p in self.view.pods if p[1] == "Running"),
                        )
                    )
                    self.view.status = f"step {step + 1}/{steps}"
                    self.view.rows.append(
                        (
                            f"{t:.0f}",
                            f"{rate:g}",
                            f"{rate_done:.1f}",
                            f"{lq:.2f}",
                            str(threads),
                            f"{p_high:.2f}",
                            f"{rec}",
                            action,
                        )
                    )
                    live.update(self.view.render())
        return samples

    async def _action(self, api: httpx2.AsyncClient, req_id: int, body: dict[str, Any]) -> bool:
        resp = await api.post(f"/api/v1/workflows/{req_id}/actions", json=body)
        if resp.status_code // 100 != 2:
            self.say(f"action {body.get('action')} refused: {resp.status_code} {resp.text[:200]}")
            return False
        return True

    async def _post_twin(
        self,
        api: httpx2.AsyncClient,
        req_id: int,
        step: int,
        est: Any,
        model: Any,
        threads: int,
        applied: bool,
    ) -> None:
        body = {
            "schema": 1,
            "step": step,
            "state_labels": list(model.state_labels),
            "probabilities": [float(p) for p in est.filtered],
            "lq": float(est.lq),
            "threads": threads,
            "recommended_threads": est.recommended_threads,
            "applied": applied,
            "detail": "jiriaf demo",
        }
        with contextlib.suppress(httpx2.HTTPError):
            await api.post(f"/api/v1/dashboard/workflows/{req_id}/twin", json=body)

    async def _wait_ended(self, api: httpx2.AsyncClient, req_id: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = (await api.get(f"/api/v1/requests/{req_id}")).json().get("state")
            if state in ("completed", "failed", "cancelled"):
                self.say(f"request {req_id} {state}; pilots stopped by the JCS")
                return
            await asyncio.sleep(1)


def run_demo(duration: float = 180.0, keep: bool = False) -> None:
    """Entry point of ``jiriaf demo``."""
    if not shutil.which("dash") and not shutil.which("sh"):
        raise UserError("a POSIX shell is needed to run containers")
    report = Demo(duration=duration, keep=keep).run()
    print(f"\nreport: {report}\nplot: {report.parent / 'timeline.png'}", flush=True)  # plain: never wrapped
