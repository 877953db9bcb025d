"""Control actions through the REST API on a workflow the JCS runs on a real pilot: scale, reduce
resources, the digital twin's set-threads call, HTTP actions to the workflow's pods and Service (and
a refused foreign host), drain and stop of a pilot, stop of the workflow; and the inactivity
timeout ending an idle workflow. Every action leaves an event."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio

from jcs_fixtures import JcsServer, local_launcher, stop_all_pilots
from jiriaf.devcluster.cluster import free_port
from jiriaf.errors import UserError
from jiriaf.jcs import auth
from jiriaf.jcs.api import create_app
from jiriaf.jcs.db import Database
from jiriaf.jcs.facilities import SiteConfig
from jiriaf.jcs.launching import LauncherPort
from jiriaf.jcs.models import Pilot
from jiriaf.jcs.service import Jcs
from jiriaf.jcs.settings import JcsSettings
from jiriaf.jcs.workflows import workflow_owner
from jiriaf.kube.patching import check
from jiriaf.kube.raw import async_raw_client
from jiriaf.twin.live import post_jcs_action

pytestmark = pytest.mark.integration

SERVER = """
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        n = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(n).decode() if n else ''
        reply = f"threads={os.environ.get('THREADS')} got={body}".encode()
        self.send_response(200); self.send_header('Content-Length', str(len(reply))); self.end_headers()
        self.wfile.write(reply)
    do_GET = do_POST = _answer
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"""


def workflow(port: int) -> dict[str, Any]:
    receiver = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "receiver"},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # pods share the node's address: one port holder at a time
            "selector": {"matchLabels": {"app": "receiver"}},
            "template": {
                "metadata": {"labels": {"app": "receiver"}},
                "spec": {
                    "containers": [
                        {
                            "name": "receiver",
                            "image": "python",
                            "command": [sys.executable, "-c", SERVER, str(port)],
                            "env": [{"name": "THREADS", "value": "16"}],
                            "ports": [{"name": "http", "containerPort": port}],
                        }
                    ]
                },
            },
        },
    }
    workers = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "workers"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "workers"}},
            "template": {
                "metadata": {"labels": {"app": "workers"}},
                "spec": {"containers": [{"name": "w", "image": "busybox", "command": ["sleep", "3600"]}]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "receiver"},
        "spec": {"selector": {"app": "receiver"}, "ports": [{"port": 8080, "targetPort": "http"}]},
    }
    return {"manifests": [receiver, workers, service]}


class Ctx:
    def __init__(self, url: str, tokens: dict[str, str], db: Database, kube: httpx2.AsyncClient) -> None:
        self.url = url
        self.tokens = tokens
        self.db = db
        self.kube = kube

    async def call(self, method: str, path: str, who: str = "alice", **kw: Any) -> httpx2.Response:
        async with httpx2.AsyncClient(base_url=self.url, timeout=60, trust_env=False) as c:
            return await c.request(
                method, path, headers={"Authorization": f"Bearer {self.tokens[who]}"}, **kw
            )

    async def until(self, check_fn: Any, timeout: float = 180, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await check_fn()
            if last:
                return last
            await asyncio.sleep(1)
        raise AssertionError(f"timed out waiting for {what} (last {last!r})")

    async def request(self, rid: int) -> dict[str, Any]:
        r = await self.call("GET", f"/api/v1/requests/{rid}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["state"] == "failed":
            raise AssertionError(f"request {rid} failed: {body['reason']}")
        return body

    async def pods(self, rid: int, app: str) -> list[dict[str, Any]]:
        owner = workflow_owner(await self.db.instance_id(), rid)
        body = check(
            await self.kube.get(
                f"/api/v1/namespaces/default/pods?labelSelector=jiriaf.io/workflow%3D{owner},app%3D{app}"
            )
        )
        return [p for p in body["items"] if not p["metadata"].get("deletionTimestamp")]

    async def deployment(self, name: str) -> dict[str, Any]:
        return check(await self.kube.get(f"/apis/apps/v1/namespaces/default/deployments/{name}"))

    async def events(self, rid: int) -> list[dict[str, Any]]:
        return list((await self.call("GET", f"/api/v1/requests/{rid}/events")).json())


@pytest_asyncio.fixture()
async def ctx(kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Ctx]:
    db = Database(f"sqlite:///{tmp_path / 'jcs.sqlite'}")
    await db.upgrade()
    async with db.session() as s:
        tokens = {
            "alice": await auth.create_token(s, "alice"),
            "root": await auth.create_token(s, "root", admin=True),
        }
    launcher = local_launcher(kubeconfig, tmp_path)
    kube = async_raw_client(kubeconfig)
    settings = JcsSettings(
        reconcile_interval=1,
        monitor_interval=2,
        pilot_idle_timeout_s=3,
        pilot_margin_s=300,
        scrape_interval=3600,
    )
    jcs = Jcs(
        settings,
        db=db,
        launcher=LauncherPort(launcher, drain_timeout=60),
        kube=kube,
        facilities=[SiteConfig(name="local", kind="local", max_nodes=1)],
    )
    try:
        async with JcsServer(create_app(jcs)) as server:
            yield Ctx(server.url, tokens, db, kube)
    finally:
        stop_all_pilots(launcher)
        await kube.aclose()


async def test_control_actions_on_a_running_workflow(ctx: Ctx) -> None:
    port = free_port()
    body = {
        "name": "stream",
        "walltime": "30m",
        "cpus_per_node": 1,
        "workflow": workflow(port),
        "actions": [
            {
                "name": "set-threads",
                "kind": "env",
                "deployment": "receiver",
                "env": "THREADS",
                "param": "threads",
            },
            {"name": "flush", "kind": "http", "port": port, "path": "/flush", "param": "level"},
            {"name": "via-service", "kind": "http", "url": "http://receiver.default.svc:8080/flush"},
            {"name": "elsewhere", "kind": "http", "url": f"http://127.0.0.2:{port}/flush"},
        ],
    }
    r = await ctx.call("POST", "/api/v1/requests", json=body)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    await ctx.until(
        lambda: _running_pods(ctx, rid, "receiver"), timeout=240, what="the receiver running on the pilot"
    )
    req = await ctx.request(rid)
    [lease] = req["leases"]
    [node] = lease["nodes"]

    # scale
    r = await ctx.call(
        "POST",
        f"/api/v1/workflows/{rid}/actions",
        json={"action": "scale", "deployment": "workers", "replicas": 2},
    )
    assert r.status_code == 200 and r.json()["message"] == "Deployment workers scaled to 2", r.text
    pods = await ctx.until(lambda: _n_pods(ctx, rid, "workers", 2), what="two workers")
    assert {p["spec"]["nodeName"] for p in pods} == {node}
    r = await ctx.call("POST", f"/api/v1/workflows/{rid}/actions", json={"action": "scale", "replicas": 2})
    assert r.status_code == 422 and "several (receiver, workers)" in r.json()["detail"]

    # resources, never above one leased node
    r = await ctx.call(
        "POST",
        f"/api/v1/workflows/{rid}/actions",
        json={"action": "resources", "deployment": "workers", "cpu": "100m", "memory": "64Mi"},
    )
    assert r.status_code == 200, r.text
    [c] = (await ctx.deployment("workers"))["spec"]["template"]["spec"]["containers"]
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "100m", "memory": "64Mi"},
    }
    r = await ctx.call(
        "POST",
        f"/api/v1/workflows/{rid}/actions",
        json={"action": "resources", "deployment": "workers", "cpu": "4"},
    )
    assert r.status_code == 422 and "outside (0, 1]" in r.json()["detail"]

    # the digital twin's call, exactly as it makes it (by workflow name here)
    answer = await post_jcs_action(
        ctx.url,
        "stream",
        {
            "action": "set-threads",
            "threads": 32,
            "target": {"namespace": "default", "deployment": "receiver", "env": "THREADS"},
            "source": "jiriaf-twin",
            "reason": "twin step 7: estimated state 3",
        },
        ctx.tokens["alice"],
    )
    assert answer["ok"] is True and answer["message"] == "Deployment receiver container receiver: THREADS=32"
    [c] = (await ctx.deployment("receiver"))["spec"]["template"]["spec"]["containers"]
    assert c["env"] == [{"name": "THREADS", "value": "32"}]

    # the rolled-out receiver answers HTTP actions: on its pods, and through its Service
    await ctx.until(
        lambda: _flush_says(ctx, rid, "threads=32"), timeout=120, what="the new receiver answering"
    )
    r = await ctx.call("POST", f"/api/v1/workflows/{rid}/actions", json={"action": "flush", "level": 3})
    assert r.status_code == 200, r.text
    r = await ctx.call(
        "POST", f"/api/v1/workflows/{rid}/actions", json={"action": "via-service", "value": "all"}
    )
    assert r.status_code == 200 and "all answered 2xx" in r.json()["message"], r.text
    r = await ctx.call("POST", f"/api/v1/workflows/{rid}/actions", json={"action": "elsewhere"})
    assert r.status_code == 403 and "is not one of workflow" in r.json()["detail"]
    with pytest.raises(UserError, match="HTTP 404"):
        await post_jcs_action(ctx.url, str(rid), {"action": "reboot"}, ctx.tokens["alice"])

    # admins drain the pilot: its node is cordoned and the pods on it deleted
    r = await ctx.call("GET", "/api/v1/pilots", "root")
    [pilot] = r.json()
    assert pilot["leased_to"] == rid
    assert (await ctx.call("POST", f"/api/v1/pilots/{pilot['id']}/drain", "alice")).status_code == 403
    r = await ctx.call(
        "POST", f"/api/v1/pilots/{pilot['id']}/drain", "root", params={"reason": "maintenance"}
    )
    assert r.status_code == 200 and "1 node(s) cordoned" in r.json()["message"], r.text
    assert check(await ctx.kube.get(f"/api/v1/nodes/{node}"))["spec"]["unschedulable"] is True

    # stop the workflow: it ends as completed, its objects are deleted and the lease released
    r = await ctx.call(
        "POST", f"/api/v1/workflows/{rid}/actions", json={"action": "stop", "reason": "done testing"}
    )
    assert r.status_code == 200
    await ctx.until(lambda: _state(ctx, rid, "completed"), what="the workflow stopped")
    assert (await ctx.request(rid))["reason"] == "stopped by alice: done testing"
    assert (await ctx.kube.get("/apis/apps/v1/namespaces/default/deployments/receiver")).status_code == 404

    # and the (idle) pilot is stopped
    await ctx.until(lambda: _pilot(ctx, pilot["id"], "stopped"), timeout=180, what="pilot stopped")

    actions = [(e["actor"], e["action"], e["data"].get("source", "")) for e in await ctx.events(rid)]
    for expected in [
        ("alice", "workflow.scale", ""),
        ("alice", "workflow.scale.refused", ""),
        ("alice", "workflow.resources", ""),
        ("alice", "workflow.resources.refused", ""),
        ("alice", "workflow.set-threads", "jiriaf-twin"),
        ("alice", "workflow.flush", ""),
        ("alice", "workflow.via-service", ""),
        ("alice", "workflow.elsewhere.refused", ""),
        ("alice", "workflow.reboot.refused", ""),
        ("alice", "workflow.stop", ""),
        ("jcs", "workflow.deleted", ""),
        ("jcs", "request.completed", ""),
    ]:
        assert expected in actions, expected
    flush = next(
        e
        for e in await ctx.events(rid)
        if e["action"] == "workflow.flush" and e["data"]["params"].get("level") == 3
    )
    threads, _, sent = flush["data"]["calls"][0]["body"].partition(" got=")
    assert (threads, json.loads(sent)) == ("threads=32", {"level": 3})
    drained = (await ctx.call("GET", "/api/v1/events", "root")).json()
    assert any(e["action"] == "pilot.drained" and e["actor"] == "root" for e in drained)


async def test_inactivity_timeout_ends_an_idle_workflow(ctx: Ctx) -> None:
    idle = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "idle"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "idle"}},
            "template": {
                "metadata": {"labels": {"app": "idle"}},
                "spec": {"containers": [{"name": "idle", "image": "busybox", "command": ["sleep", "3600"]}]},
            },
        },
    }
    body = {
        "name": "idle",
        "walltime": "30m",
        "inactivity_timeout": "15s",
        "idle_cpu_cores": 0.05,
        "workflow": {"manifests": [idle]},
    }
    rid = (await ctx.call("POST", "/api/v1/requests", json=body)).json()["id"]
    await ctx.until(lambda: _state(ctx, rid, "completed"), timeout=300, what="the idle workflow ended")
    reason = (await ctx.request(rid))["reason"]
    assert reason.startswith("idle for ") and "inactivity timeout 15 s" in reason, reason
    statuses = (await ctx.call("GET", f"/api/v1/requests/{rid}/status")).json()
    assert statuses and all(s["cpu_cores"] is None or s["cpu_cores"] <= 0.05 for s in statuses)
    assert any(s["pods_running"] == 1 for s in statuses)


async def _running_pods(ctx: Ctx, rid: int, app: str) -> list[dict[str, Any]] | None:
    await ctx.request(rid)
    pods = await ctx.pods(rid, app)
    return pods if pods and all(p["status"].get("phase") == "Running" for p in pods) else None


async def _n_pods(ctx: Ctx, rid: int, app: str, n: int) -> list[dict[str, Any]] | None:
    pods = await ctx.pods(rid, app)
    return pods if len(pods) == n and all(p["status"].get("phase") == "Running" for p in pods) else None


async def _flush_says(ctx: Ctx, rid: int, text: str) -> bool:
    r = await ctx.call("POST", f"/api/v1/workflows/{rid}/actions", json={"action": "flush", "level": 0})
    if r.status_code != 200:
        return False
    events = [e for e in await ctx.events(rid) if e["action"] == "workflow.flush"]
    return all(c["body"].startswith(text) for c in events[-1]["data"]["calls"])


async def _state(ctx: Ctx, rid: int, state: str) -> bool:
    current: str = (await ctx.request(rid))["state"]
    return current == state


async def _pilot(ctx: Ctx, pid: str, state: str) -> bool:
    async with ctx.db.session() as s:
        p = await s.get(Pilot, pid)
        return p is not None and p.state == state
