"""The central service end to end, as processes: ``python -m jiriaf.jcs serve`` against the real
control plane, a real single-host SLURM and a real Prometheus, on SQLite and on PostgreSQL.

A request filed through the REST API becomes a SLURM pilot whose JRMs join; the workflow's pods run
on exactly those nodes; status rows show progress and Prometheus metrics; the workflow completes,
its lease is released and the idle pilot is stopped (its SLURM job ends); the event trail holds
every step. The JCS is killed (SIGKILL) twice mid-way, after the pilot's submission and after the
workflow's apply, and restarted: nothing is submitted or applied twice. Other users get 403 and
malformed requests 422 with the field named."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

import jcs_fixtures
from jiriaf.devcluster.cluster import free_port
from jiriaf.devcluster.slurm import LocalSlurm
from support import eventually

pytestmark = pytest.mark.system

postgres = jcs_fixtures.postgres

BURN = "end=$(( $(date +%s) + {secs} )); i=0; while [ $(date +%s) -lt $end ]; do i=$((i+1)); done; echo $i"


@pytest.fixture(scope="module")
def prometheus(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Prometheus (built without Kubernetes discovery) scraping every JRM every 2 s, with the
    monitor package's configuration and file discovery kept current by a thread."""
    from jiriaf.monitor.prometheus import (
        api_access_from_kubeconfig,
        collect_file_sd,
        prometheus_config,
        render_yaml,
        write_file_sd,
    )
    from jiriaf.monitor.prometheus_server import PrometheusServer

    directory = tmp_path_factory.mktemp("prometheus")
    targets = directory / "targets"
    config = directory / "prometheus.yml"
    access = api_access_from_kubeconfig(kubeconfig, directory / "secrets")
    config.write_text(
        render_yaml(prometheus_config(access, discovery="file", sd_dir=targets, scrape_interval="2s"))
    )
    write_file_sd(targets, collect_file_sd(kubeconfig, "type=virtual-kubelet"))
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(2.0):
            with contextlib.suppress(Exception):
                write_file_sd(targets, collect_file_sd(kubeconfig, "type=virtual-kubelet"))

    thread = threading.Thread(target=refresh, name="file-sd", daemon=True)
    thread.start()
    server = PrometheusServer(config, directory, free_port())
    server.start()
    print(f"[prometheus] {server.url}, log {server.log}")
    yield server
    server.stop()
    stop.set()
    thread.join(10)


class JcsProcess:
    """``python -m jiriaf.jcs serve`` with a log; killable and restartable."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, url: str) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.url = url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> JcsProcess:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        eventually(self._healthy, timeout=90, what="the JCS answering /healthz")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the JCS exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            )
        with contextlib.suppress(httpx2.HTTPError):
            return httpx2.get(f"{self.url}/healthz", timeout=2).status_code == 200
        return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Api:
    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url = url
        self.tokens = tokens

    def call(self, method: str, path: str, who: str = "alice", **kw: Any) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx2.request(method, f"{self.url}{path}", headers=headers, timeout=60, trust_env=False, **kw)

    def get(self, path: str, who: str = "alice") -> Any:
        r = self.call("GET", path, who)
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, rid: int) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v1/requests/{rid}/events"))

    def wait_event(self, rid: int, action: str, timeout: float = 240) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            row = self.get(f"/api/v1/requests/{rid}")
            if row["state"] in ("failed", "cancelled"):
                raise AssertionError(f"request {rid} {row['state']}: {row['reason']}")
            return next((e for e in self.events(rid) if e["action"] == action), None)

        return eventually(found, timeout=timeout, interval=1, what=f"event {action} of request {rid}")


def squeue_jobs(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "--noheader", f"--name={name}", "--format=%i %T"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_request_runs_on_a_slurm_pilot_through_a_jcs_killed_twice(
    backend: str,
    request: pytest.FixtureRequest,
    kubeconfig: Path,
    local_slurm: LocalSlurm,
    pilot_cli: None,
    prometheus: Any,
    tmp_path: Path,
) -> None:
    import asyncio

    if backend == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'jcs.sqlite'}"
    else:
        pg: jcs_fixtures.PostgresServer = request.getfixturevalue("postgres")
        db_url = pg.url(asyncio.run(pg.create_database()))
    sites = tmp_path / "sites.yaml"
    sites.write_text(
        yaml.safe_dump(
            {
                "sites": {
                    "slurm": {
                        "kind": "slurm",
                        "batch": {"partition": "debug"},
                        "control_plane": {"kubeconfig": str(kubeconfig), "node_ip": "127.0.0.1"},
                        "environment": {
                            "workdir": str(tmp_path / "jrm"),
                            "env": {"JIRIAF_LEASE_RENEW_INTERVAL": "5", "JIRIAF_STATUS_INTERVAL": "5"},
                        },
                        "walltime_margin": 30,
                    }
                }
            }
        )
    )
    env = {**os.environ, "SLURM_CONF": str(local_slurm.conf_path), "JIRIAF_JCS_TOKEN": ""}
    tokens = {}
    for user, admin in (("alice", False), ("bob", False), ("root", True)):
        res = subprocess.run(
            [sys.executable, "-m", "jiriaf.jcs", "token", "create", "--user", user, "--db", db_url]
            + (["--admin"] if admin else []),
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert res.returncode == 0, res.stderr
        tokens[user] = res.stdout.strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    jcs = JcsProcess(
        [
            sys.executable,
            "-m",
            "jiriaf.jcs",
            "serve",
            "--db",
            db_url,
            "--port",
            str(port),
            "--kubeconfig",
            str(kubeconfig),
            "--sites",
            str(sites),
            "--pilot-registry",
            str(tmp_path / "pilots"),
            "--prometheus-url",
            prometheus.url,
            "--reconcile-interval",
            "1",
            "--monitor-interval",
            "3",
            "--scrape-interval",
            "5",
            "--pilot-idle-timeout",
            "5",
            "--pilot-margin",
            "120",
            "--log-level",
            "DEBUG",
        ],
        env,
        tmp_path / "jcs.log",
        url,
    ).start()
    api = Api(url, tokens)
    pilot_id = ""
    try:
        eventually(
            lambda: (s := api.get("/api/v1/sites")) and s[0]["state"] == "ok" and s[0]["resources"],
            timeout=60,
            what="the SLURM site scraped",
        )
        [site] = api.get("/api/v1/sites")
        [res] = site["resources"]
        assert (res["partition"], res["nodes_free"], res["cpus_per_node"]) == ("debug", 1, local_slurm.cpus)

        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "burn"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "burn",
                                "image": "busybox",
                                "command": ["sh", "-c", BURN.format(secs=40)],
                            }
                        ],
                    }
                },
            },
        }
        body = {
            "name": "burn",
            "walltime": "20m",
            "cpus_per_node": 1,
            "memory_mb_per_node": 512,
            "sites": ["slurm"],
            "workflow": {"manifests": [job]},
            "metrics": {
                "cpu_seconds": 'sum(jiriaf_container_cpu_seconds_total{namespace="$namespace",pod=~"$pods"})'
            },
        }
        r = api.call("POST", "/api/v1/requests", json=body)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]

        # another user can neither see nor cancel it; malformed requests name the field
        assert api.call("GET", f"/api/v1/requests/{rid}", "bob").status_code == 403
        assert api.call("POST", f"/api/v1/requests/{rid}/cancel", "bob").status_code == 403
        bad = api.call("POST", "/api/v1/requests", "bob", json={**body, "nodes": -1})
        assert bad.status_code == 422 and bad.json()["message"].startswith("nodes:")
        assert api.call("GET", "/api/v1/requests").status_code == 200
        assert httpx2.get(f"{url}/api/v1/requests", timeout=10).status_code == 401

        # kill the JCS right after it submitted the pilot, and restart it
        submitted = api.wait_event(rid, "pilot.submitted")
        pilot_id = submitted["subject_id"]
        job_id = submitted["data"]["native_id"]
        jcs.kill9()
        jcs.start()

        # kill it again right after it applied the workflow, and restart it
        applied = api.wait_event(rid, "workflow.applied", timeout=300)
        jcs.kill9()
        jcs.start()
        nodes = applied["data"]["nodes"]
        pilots = api.get("/api/v1/pilots", "root")
        assert [(p["id"], p["native_id"], p["leased_to"]) for p in pilots] == [(pilot_id, job_id, rid)]
        assert len(squeue_jobs(f"jiriaf-pilot-{pilot_id}")) == 1
        assert sorted(pilots[0]["node_names"]) == sorted(nodes)

        def burning_on_the_pilot() -> list[dict[str, Any]] | None:
            from lightkube import Client, KubeConfig
            from lightkube.resources.core_v1 import Pod

            client = Client(KubeConfig.from_file(kubeconfig))
            owner = applied["data"]["owner"]
            pods = list(client.list(Pod, namespace="default", labels={"jiriaf.io/workflow": owner}))
            return [p.to_dict() for p in pods] if pods else None

        pods = eventually(burning_on_the_pilot, timeout=60, what="the workflow's pod")
        assert len(pods) == 1 and pods[0]["spec"]["nodeName"] in nodes

        done = eventually(
            lambda: (row := api.get(f"/api/v1/requests/{rid}"))["state"] in ("completed", "failed") and row,
            timeout=300,
            interval=2,
            what="the request finished",
        )
        assert (done["state"], done["reason"]) == ("completed", "all 1 pod(s) of the workflow succeeded"), (
            done
        )

        statuses = api.get(f"/api/v1/requests/{rid}/status?limit=1000")
        assert statuses[-1]["phase"] == "succeeded"
        running = [s for s in statuses if s["phase"] == "running" and s["pods_running"] == 1]
        assert running, statuses
        assert any((s["cpu_cores"] or 0) > 0.2 for s in running), [s["cpu_cores"] for s in running]
        burnt = [s["metrics"].get("cpu_seconds") for s in running]
        numbers = [b for b in burnt if isinstance(b, float)]
        assert numbers and numbers == sorted(numbers) and numbers[-1] > 1, burnt

        # the lease is released, the idle pilot stopped and its SLURM job gone
        eventually(
            lambda: api.get("/api/v1/pilots", "root")[0]["state"] == "stopped",
            timeout=240,
            interval=2,
            what="the idle pilot stopped",
        )
        eventually(
            lambda: not squeue_jobs(f"jiriaf-pilot-{pilot_id}"), timeout=120, what="the SLURM job ended"
        )

        trail = api.events(rid) + [
            e
            for e in api.get("/api/v1/events?limit=10000", "root")
            if e["subject_id"] == pilot_id and e["request_id"] is None
        ]
        trail.sort(key=lambda e: e["id"])
        steps = [e["action"] for e in trail]
        jcs_fixtures.assert_in_order(steps)
        for once in ("pilot.planned", "pilot.submitted", "workflow.applied", "workflow.deleted"):
            assert steps.count(once) == 1, (once, steps)
        for token in tokens.values():
            assert token not in jcs.log.read_text()
        if backend == "postgresql":
            assert pg.password not in jcs.log.read_text()
    finally:
        jcs.stop()
        if pilot_id:
            for line in squeue_jobs(f"jiriaf-pilot-{pilot_id}"):
                subprocess.run(["scancel", line.split()[0]], timeout=30, check=False)
        print(f"[jcs] log {jcs.log}")
