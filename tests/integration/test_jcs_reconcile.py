"""The reconcile loop against the real control plane, with real pilots: PSI/J's local executor
starts real ``jiriaf jrm run`` processes that join the cluster.

Request -> match -> pilot -> JRM joins -> workflow pinned to the pilot's node -> monitored ->
completed -> lease released -> the idle pilot is reused by the next request, then stopped when
idle; and a restart at the two unsafe points (after a pilot's submission, after a workflow's
apply, both before the database recorded them) duplicates neither."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from sqlalchemy import select

from jcs_fixtures import assert_in_order, drive, local_launcher, stop_all_pilots
from jiriaf.jcs import workflows
from jiriaf.jcs.db import Database
from jiriaf.jcs.facilities import FacilityManager, SiteConfig
from jiriaf.jcs.filing import file_request
from jiriaf.jcs.launching import LauncherPort, PilotOrder
from jiriaf.jcs.models import Event, Lease, Pilot, Request, WorkflowStatus
from jiriaf.jcs.reconcile import Reconciler
from jiriaf.jcs.schemas import RequestSpec
from jiriaf.jcs.settings import JcsSettings
from jiriaf.kube.patching import check
from jiriaf.kube.raw import async_raw_client
from jiriaf.pilots import batch_native

pytestmark = pytest.mark.integration

SETTINGS = JcsSettings(
    reconcile_interval=1,
    monitor_interval=1,
    pilot_idle_timeout_s=4,
    pilot_start_timeout_s=180,
    pilot_margin_s=300,
)


def job(name: str, seconds: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "work",
                            "image": "busybox",
                            "command": ["sh", "-c", f"sleep {seconds}; echo done"],
                        }
                    ],
                }
            },
        },
    }


def spec(name: str, seconds: int = 6, **kw: Any) -> RequestSpec:
    body = {
        "name": name,
        "walltime": "30m",
        "sites": ["local"],
        "workflow": {"manifests": [job(name, seconds)]},
    }
    body.update(kw)
    return RequestSpec.model_validate(body)


class World:
    def __init__(self, db: Database, kube: httpx2.AsyncClient, launcher: Any, namespace: str) -> None:
        self.db = db
        self.kube = kube
        self.launcher = launcher
        self.namespace = namespace

    def reconciler(self) -> Reconciler:
        """A fresh reconciler, with a fresh launcher over the same pilot records: as after a restart."""
        from jiriaf.pilots.launcher import PilotLauncher

        fresh = PilotLauncher(
            self.launcher.sites,
            registry=self.launcher.registry,
            kubeconfig=self.launcher.kubeconfig,
            poll_interval=1,
        )
        return Reconciler(self.db, LauncherPort(fresh, drain_timeout=60), self.kube, SETTINGS)

    async def request(self, rid: int) -> Request:
        async with self.db.session() as s:
            row = await s.get(Request, rid)
            assert row is not None
            return row

    async def pilots(self) -> list[Pilot]:
        async with self.db.session() as s:
            return list((await s.execute(select(Pilot).order_by(Pilot.created_at))).scalars().all())

    async def events(self, rid: int | None = None) -> list[Event]:
        async with self.db.session() as s:
            stmt = select(Event).order_by(Event.id)
            if rid is not None:
                stmt = stmt.where(Event.request_id == rid)
            return list((await s.execute(stmt)).scalars().all())

    async def file(self, body: RequestSpec, user: str = "alice") -> int:
        async with self.db.session() as s:
            return (await file_request(s, user, body)).id

    async def owner(self, rid: int) -> str:
        return workflows.workflow_owner(await self.db.instance_id(), rid)

    async def pods(self, rid: int) -> list[dict[str, Any]]:
        return await workflows.list_pods(self.kube, self.namespace, await self.owner(rid))


@pytest_asyncio.fixture()
async def world(kubeconfig: Path, tmp_path: Path) -> AsyncIterator[World]:
    db = Database(f"sqlite:///{tmp_path / 'jcs.sqlite'}")
    await db.upgrade()
    await FacilityManager(db).load([SiteConfig(name="local", kind="local", max_nodes=1)])
    await FacilityManager(db).scrape_site("local")
    launcher = local_launcher(kubeconfig, tmp_path)
    kube = async_raw_client(kubeconfig)
    try:
        yield World(db, kube, launcher, "default")
    finally:
        stop_all_pilots(launcher)
        await kube.aclose()
        await db.close()


async def test_request_to_completion_then_reuse_then_idle_stop(world: World) -> None:
    rec = world.reconciler()
    first = await world.file(spec("first", seconds=8))
    second = await world.file(spec("second", seconds=2))

    # the one local slot goes to the first request; the second waits, and says why
    await drive(rec, lambda: _state(world, first, "running"), what="first request running")
    waiting = await world.request(second)
    assert waiting.state == "pending"
    assert waiting.reason == "request 2 waits: local does not have 1 cpu node for 30 min; local has 0"

    [pilot] = await world.pilots()
    assert pilot.site == "local" and pilot.state == "running" and pilot.nodes == 1
    [node] = pilot.node_names
    pods = await drive(rec, lambda: _scheduled(world, first), what="the first workflow's pod scheduled")
    assert [p["spec"]["nodeName"] for p in pods] == [node]
    node_obj = check(await world.kube.get(f"/api/v1/nodes/{node}"))
    assert node_obj["metadata"]["labels"]["jiriaf.pilot"] == pilot.id

    # the first completes; its lease is released and the same pilot serves the second at once
    await drive(
        rec, lambda: _state(world, second, "running"), what="second request running on the reused pilot"
    )
    done = await world.request(first)
    assert (done.state, done.reason) == ("completed", "all 1 pod(s) of the workflow succeeded")
    assert len(await world.pilots()) == 1
    pods = await drive(rec, lambda: _scheduled(world, second), what="the second workflow's pod scheduled")
    assert [p["spec"]["nodeName"] for p in pods] == [node]
    assert (await world.request(second)).reason == f"running on {node}"

    await drive(rec, lambda: _state(world, second, "completed"), what="second request completed")
    # no request left: the pilot is stopped after the idle timeout, through the launcher
    await drive(rec, lambda: _pilot_state(world, pilot.id, "stopped"), timeout=240, what="idle pilot stopped")
    record = world.launcher.registry.get(pilot.id)
    assert record.stop_reason == "PilotCancelled" and any("cancel requested" in e.what for e in record.events)

    async with world.db.session() as s:
        leases = (await s.execute(select(Lease).order_by(Lease.id))).scalars().all()
        assert [(x.request_id, x.pilot_id, x.state) for x in leases] == [
            (first, pilot.id, "released"),
            (second, pilot.id, "released"),
        ]
        statuses = (
            (
                await s.execute(
                    select(WorkflowStatus)
                    .where(WorkflowStatus.request_id == first)
                    .order_by(WorkflowStatus.id)
                )
            )
            .scalars()
            .all()
        )
    phases = [st.phase for st in statuses]
    assert "running" in phases and phases[-1] == "succeeded"
    assert any(st.pods_running == 1 for st in statuses)

    trail = [
        (e.action, e.request_id)
        for e in await world.events()
        if e.request_id in (first, None) or e.subject_id == pilot.id
    ]
    assert_in_order([a for a, _ in trail])
    reuse = [e for e in await world.events(second) if e.action == "request.leased"]
    assert reuse[0].message.startswith(f"request {second} reuses pilot {pilot.id} at local")


async def test_restart_duplicates_neither_pilots_nor_workflows(world: World) -> None:
    rid = await world.file(spec("restart", seconds=20))
    crashed = world.reconciler()
    await crashed.match()  # the pilot is recorded as planned ...
    [pilot] = await world.pilots()
    assert pilot.state == "planned"
    # ... and submitted by the process that then died before recording the submission
    await crashed.launcher.submit(
        PilotOrder(pilot_id=pilot.id, site="local", nodes=1, walltime_s=pilot.walltime_s, node_type="cpu")
    )

    restarted = world.reconciler()

    async def nodes_ready() -> bool:
        await restarted.submit_planned()
        await restarted.poll_pilots()
        [p] = await world.pilots()
        return p.state == "running" and bool(p.node_names) and bool(await _ready(world, p.id))

    await drive_steps(nodes_ready, what="the recorded pilot running with its JRM")
    record = world.launcher.registry.get(pilot.id)
    assert any("submit repeated" in e.what for e in record.events)
    script = world.launcher.script_path(pilot.id)
    assert len(batch_native.find_jobs("local", record.job_name, script)) == 1
    assert len(await world.pilots()) == 1

    # the workflow is applied by a process that dies before recording it; the next one applies again
    req = await world.request(rid)
    nodes = await _ready(world, pilot.id)
    objects = workflows.render(
        req.workflow["manifests"],
        owner=await world.owner(rid),
        request_id=rid,
        namespace="default",
        nodes=nodes,
    )
    await workflows.apply(world.kube, objects)
    again = world.reconciler()
    await drive(again, lambda: _state(world, rid, "running"), what="request running after the restart")
    jobs = check(
        await world.kube.get(
            "/apis/batch/v1/namespaces/default/jobs?labelSelector="
            + workflows.selector(await world.owner(rid))
        )
    )
    assert len(jobs["items"]) == 1
    assert len(await drive(again, lambda: _scheduled(world, rid), what="the pod")) == 1
    applied = [e for e in await world.events(rid) if e.action == "workflow.applied"]
    assert len(applied) == 1
    assert len(await world.pilots()) == 1


async def drive_steps(check_fn: Any, timeout: float = 180.0, what: str = "condition") -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check_fn():
            return
        await asyncio.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


async def _ready(world: World, pilot_id: str) -> list[str]:
    from jiriaf.jcs.reconcile import ready_nodes_by_pilot

    return (await ready_nodes_by_pilot(world.kube)).get(pilot_id, [])


async def _state(world: World, rid: int, state: str) -> bool:
    row = await world.request(rid)
    if row.state in ("failed", "cancelled") and state not in ("failed", "cancelled"):
        raise AssertionError(f"request {rid} is {row.state}: {row.reason}")
    return row.state == state


async def _pilot_state(world: World, pid: str, state: str) -> bool:
    async with world.db.session() as s:
        p = await s.get(Pilot, pid)
        return p is not None and p.state == state


async def test_apply_never_takes_over_another_workflows_objects(world: World) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared-name"}, "data": {"k": "v"}}
    mine = workflows.render([cm], owner="aaaa-r1", request_id=1, namespace="default", nodes=["n"])
    theirs = workflows.render([cm], owner="bbbb-r1", request_id=1, namespace="default", nodes=["n"])
    try:
        assert await workflows.apply(world.kube, mine) == [
            {"kind": "ConfigMap", "namespace": "default", "name": "shared-name"}
        ]
        assert await workflows.apply(world.kube, mine)  # again: it is ours, nothing changes
        with pytest.raises(
            workflows.WorkflowConflict,
            match="already exists in namespace default and belongs to workflow aaaa-r1",
        ):
            await workflows.apply(world.kube, theirs)
        assert await workflows.delete(world.kube, [workflows.object_ref(theirs[0])], "bbbb-r1") == []
        got = check(await world.kube.get("/api/v1/namespaces/default/configmaps/shared-name"))
        assert got["metadata"]["labels"]["jiriaf.io/workflow"] == "aaaa-r1"
    finally:
        assert await workflows.delete(world.kube, [workflows.object_ref(mine[0])], "aaaa-r1")


CHART_JOB = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .Release.Name }}-work
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: work
          image: busybox
          command: ["sh", "-c", "sleep {{ .Values.seconds }}; echo done"]
"""


def make_chart(root: Path) -> Path:
    chart = root / "charts" / "sleeper"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: sleeper\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("seconds: 1\n")
    (chart / "templates" / "job.yaml").write_text(CHART_JOB)
    return chart


async def test_a_helm_chart_workflow_runs_on_the_lease_nodes(world: World, tmp_path: Path) -> None:
    import shutil

    if shutil.which("helm") is None:
        pytest.skip("helm is not installed (.ci/run installs it with 'go install helm.sh/helm/v3/cmd/helm')")
    chart = make_chart(tmp_path)
    rec = world.reconciler()
    rec.settings = SETTINGS.model_copy(update={"chart_dirs": [tmp_path / "charts"]})
    outside = await world.file(
        RequestSpec.model_validate(
            {"name": "outside", "walltime": "30m", "workflow": {"helm": {"chart": str(tmp_path)}}}
        )
    )
    rid = await world.file(
        RequestSpec.model_validate(
            {
                "name": "charted",
                "walltime": "30m",
                "workflow": {"helm": {"chart": str(chart), "values": {"seconds": 3}}},
            }
        )
    )
    await drive(
        rec, lambda: _finished(world, outside), what="the request with a chart outside the chart dirs ended"
    )
    row = await world.request(outside)
    assert row.state == "failed" and "outside the allowed chart directories" in row.reason
    await drive(rec, lambda: _state(world, rid, "running"), what="the chart's workflow running")
    pods = await drive(rec, lambda: _scheduled(world, rid), what="the chart's pod scheduled")
    [pilot] = [p for p in await world.pilots() if p.state == "running"]
    assert [p["spec"]["nodeName"] for p in pods] == pilot.node_names
    assert pods[0]["spec"]["containers"][0]["command"][-1] == "sleep 3; echo done"
    assert (await world.request(rid)).applied_objects == [
        {"kind": "Job", "namespace": "default", "name": "charted-work"}
    ]
    await drive(rec, lambda: _state(world, rid, "completed"), what="the chart's workflow completed")


async def _scheduled(world: World, rid: int) -> list[dict[str, Any]] | None:
    pods = await world.pods(rid)
    return pods if pods and all(p["spec"].get("nodeName") for p in pods) else None


async def _finished(world: World, rid: int) -> bool:
    return (await world.request(rid)).state in ("completed", "failed", "cancelled")
