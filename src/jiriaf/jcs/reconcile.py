"""The reconcile loop: request -> match -> lease -> pilots -> JRMs -> workflow -> monitored ->
completed or failed -> leases released -> idle pilots stopped.

Every pass reads the state from the database and moves each object one step, recording an event
for each step, so the loop can be killed at any point and resume where it was:

* a pilot is written to the database (``planned``) before it is submitted, and submitting is
  idempotent by pilot id, so a restart re-submits the recorded pilot and gets the same job back;
* workflows are applied with server-side apply under fixed names, so applying again after a
  restart changes nothing; deletion is idempotent too.

One pass, in order: poll pilots (a pilot that ended puts its request back in the queue, or fails
it after ``max_attempts``), sample running workflows (status rows; completion, failure,
inactivity, walltime), tear down stopping requests (delete the workflow, release leases), match
pending requests, submit planned pilots, start workflows whose pilots' JRMs have all joined, and
stop pilots idle for longer than ``pilot_idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from jiriaf.errors import UserError
from jiriaf.jcs import leases, trail, workflows
from jiriaf.jcs.db import Database
from jiriaf.jcs.launching import PilotOrder, PilotPhase, PilotPort, PilotReport
from jiriaf.jcs.matching import Policy, format_duration, match
from jiriaf.jcs.models import (
    Pilot,
    PilotState,
    Request,
    RequestState,
    WorkflowStatus,
    utcnow,
)
from jiriaf.jcs.monitor import Sample, Sampler, is_active
from jiriaf.jcs.schemas import WORKFLOW_KINDS
from jiriaf.jcs.settings import JcsSettings
from jiriaf.kube.patching import ApiError, check

log = logging.getLogger(__name__)

PILOT_LABEL = "jiriaf.pilot"


def node_ready(node: dict[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def ready_nodes_by_pilot(client: httpx2.AsyncClient) -> dict[str, list[str]]:
    """Ready, schedulable Nodes of every pilot (by their ``jiriaf.pilot`` label)."""
    body = check(await client.get(f"/api/v1/nodes?labelSelector={quote(PILOT_LABEL)}"))
    out: dict[str, list[str]] = defaultdict(list)
    for node in body.get("items") or []:
        meta = node.get("metadata") or {}
        pilot = (meta.get("labels") or {}).get(PILOT_LABEL)
        if pilot and node_ready(node):
            out[pilot].append(meta["name"])
    return {k: sorted(v) for k, v in out.items()}


class Reconciler:
    def __init__(
        self,
        db: Database,
        launcher: PilotPort,
        kube: httpx2.AsyncClient,
        settings: JcsSettings,
        sampler: Sampler | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.launcher = launcher
        self.kube = kube
        self.settings = settings
        self.sampler = sampler or Sampler(kube, settings.prometheus_url)
        self.clock = clock
        self.policy = Policy(
            pilot_margin_s=settings.pilot_margin_s,
            reuse_margin_s=settings.reuse_margin_s,
            max_new_pilots=settings.max_new_pilots,
            max_nodes_per_user=settings.max_nodes_per_user,
        )
        self._last_sample: dict[int, float] = {}
        self._instance: str | None = None
        self.passes = 0

    async def owner(self, request_id: int) -> str:
        """The label value of a request's workflow objects."""
        if self._instance is None:
            self._instance = await self.db.instance_id()
        return workflows.workflow_owner(self._instance, request_id)

    # ------------------------------------------------------------------------- the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop`` is set; a failing pass is logged and the next one runs."""
        while not stop.is_set():
            try:
                await self.step()
            except Exception:
                log.exception("reconcile pass failed")
            try:
                await asyncio.wait_for(stop.wait(), self.settings.reconcile_interval)
            except TimeoutError:
                pass

    async def step(self) -> None:
        await self.poll_pilots()
        await self.monitor()
        await self.tear_down()
        await self.match()
        await self.submit_planned()
        await self.start_workflows()
        await self.stop_idle_pilots()
        self.passes += 1

    # ------------------------------------------------------------------------- pilots

    async def poll_pilots(self) -> None:
        async with self.db.session() as s:
            pilots = (
                (
                    await s.execute(
                        select(Pilot).where(
                            Pilot.state.in_(
                                [
                                    PilotState.SUBMITTED.value,
                                    PilotState.RUNNING.value,
                                    PilotState.STOPPING.value,
                                ]
                            )
                        )
                    )
                )
                .scalars()
                .all()
            )
            ids = [p.id for p in pilots]
        if not ids:
            return
        ready = await self._ready_nodes()
        for pid in ids:
            try:
                report = await self.launcher.status(pid)
            except Exception as exc:
                log.warning("status of pilot %s failed: %s", pid, exc)
                continue
            async with self.db.session() as s:
                pilot = await s.get(Pilot, pid)
                assert pilot is not None
                await self._update_pilot(s, pilot, report, ready.get(pid, []) if ready is not None else None)
                await s.commit()

    async def _ready_nodes(self) -> dict[str, list[str]] | None:
        try:
            return await ready_nodes_by_pilot(self.kube)
        except (ApiError, httpx2.HTTPError, OSError) as exc:
            log.warning("cannot list nodes: %s", exc)
            return None

    async def _update_pilot(
        self, s: AsyncSession, pilot: Pilot, report: PilotReport | None, ready: list[str] | None
    ) -> None:
        now = self.clock()
        if report is None and pilot.state == PilotState.STOPPING.value:
            report = PilotReport(pilot.id, PilotPhase.CANCELED, message="stopped before it was submitted")
        elif report is None:
            report = PilotReport(pilot.id, PilotPhase.FAILED, message="the launcher has no record of it")
        if report.native_id and pilot.native_id != report.native_id:
            pilot.native_id = report.native_id
        names = sorted(set(pilot.node_names) | set(report.node_names) | set(ready or []))
        if names != sorted(pilot.node_names):
            pilot.node_names = names
        if report.final:
            ok = report.phase is not PilotPhase.FAILED
            pilot.state = (PilotState.STOPPED if ok else PilotState.FAILED).value
            pilot.stopped_at = now
            pilot.idle_since = None
            if report.message and not ok:
                pilot.last_error = report.message
            trail.record(
                s,
                trail.SYSTEM,
                f"pilot.{pilot.state}",
                "pilot",
                pilot.id,
                f"pilot {pilot.id} ended ({report.phase.value})"
                + (f": {report.message}" if report.message else ""),
                data={"native_id": pilot.native_id},
            )
            lease = await leases.pilot_lease(s, pilot.id)
            if lease is not None:
                req = await s.get(Request, lease.request_id)
                assert req is not None
                await self._lost_pilot(s, req, f"pilot {pilot.id} ended ({report.phase.value})")
            return
        if report.phase is PilotPhase.ACTIVE and pilot.state == PilotState.SUBMITTED.value:
            pilot.state = PilotState.RUNNING.value
            pilot.started_at = now
            pilot.expires_at = leases.pilot_expiry(pilot, now)
            trail.record(
                s,
                trail.SYSTEM,
                "pilot.running",
                "pilot",
                pilot.id,
                f"pilot {pilot.id} runs (job {pilot.native_id or '?'}), "
                f"walltime until {pilot.expires_at:%H:%M:%S} UTC",
            )
        if (
            pilot.state == PilotState.RUNNING.value
            and ready is not None
            and len(ready) < pilot.nodes
            and pilot.started_at is not None
            and (now - pilot.started_at).total_seconds() > self.settings.pilot_start_timeout_s
        ):
            message = (
                f"only {len(ready)} of {pilot.nodes} JRMs joined within "
                f"{format_duration(self.settings.pilot_start_timeout_s)}"
            )
            await self._cancel(s, pilot, message)
            pilot.last_error = message

    async def _cancel(self, s: AsyncSession, pilot: Pilot, reason: str, actor: str = trail.SYSTEM) -> None:
        try:
            await self.launcher.cancel(pilot.id, reason)
        except Exception as exc:
            log.warning("cancelling pilot %s failed: %s", pilot.id, exc)
            return
        pilot.state = PilotState.STOPPING.value
        trail.record(s, actor, "pilot.stopping", "pilot", pilot.id, f"pilot {pilot.id} stopping: {reason}")

    async def _lost_pilot(self, s: AsyncSession, req: Request, reason: str) -> None:
        """A pilot under ``req`` ended: take the workflow down and queue the request again (or fail it)."""
        if req.state not in (RequestState.LEASED.value, RequestState.RUNNING.value):
            return
        await self._delete_workflow(s, req)
        await leases.release_leases(s, req, reason, self.clock())
        if req.attempts >= self.settings.max_attempts:
            leases.finish(s, req, RequestState.FAILED, f"{reason}; gave up after {req.attempts} attempt(s)")
            return
        req.state = RequestState.PENDING.value
        req.started_at = None
        req.reason = f"{reason}; queued again (attempt {req.attempts + 1} of {self.settings.max_attempts})"
        trail.record(s, trail.SYSTEM, "request.requeued", "request", req.id, req.reason, request_id=req.id)

    async def submit_planned(self) -> None:
        async with self.db.session() as s:
            planned = (
                (
                    await s.execute(
                        select(Pilot)
                        .where(Pilot.state == PilotState.PLANNED.value)
                        .order_by(Pilot.created_at)
                    )
                )
                .scalars()
                .all()
            )
            ids = [p.id for p in planned]
        for pid in ids:
            async with self.db.session() as s:
                pilot = await s.get(Pilot, pid)
                assert pilot is not None
                lease = await leases.pilot_lease(s, pid)
                if lease is None:  # its request went away before the pilot was submitted
                    pilot.state = PilotState.STOPPED.value
                    pilot.stopped_at = self.clock()
                    trail.record(
                        s, trail.SYSTEM, "pilot.dropped", "pilot", pid, f"pilot {pid} no longer needed"
                    )
                    await s.commit()
                    continue
                order = PilotOrder(
                    pilot_id=pid,
                    site=pilot.site,
                    nodes=pilot.nodes,
                    walltime_s=pilot.walltime_s,
                    node_type=pilot.node_type,
                    partition=pilot.partition or None,
                )
                request_id = lease.request_id
            try:
                report = await self.launcher.submit(order)
                error = ""
            except UserError as exc:
                report, error = None, str(exc)
            except Exception as exc:  # a launcher failure is recorded, not fatal to the loop
                log.exception("submitting pilot %s failed", pid)
                report, error = None, f"{type(exc).__name__}: {exc}"
            async with self.db.session() as s:
                pilot = await s.get(Pilot, pid)
                assert pilot is not None
                if report is None or report.phase is PilotPhase.FAILED:
                    pilot.state = PilotState.FAILED.value
                    pilot.last_error = error or (report.message if report else "")
                    pilot.stopped_at = self.clock()
                    trail.record(
                        s,
                        trail.SYSTEM,
                        "pilot.failed",
                        "pilot",
                        pid,
                        f"pilot {pid} could not be submitted: {pilot.last_error}",
                        request_id=request_id,
                    )
                    req = await s.get(Request, request_id)
                    assert req is not None
                    await self._lost_pilot(s, req, f"pilot {pid} could not be submitted: {pilot.last_error}")
                else:
                    pilot.state = PilotState.SUBMITTED.value
                    pilot.submitted_at = self.clock()
                    pilot.native_id = report.native_id
                    trail.record(
                        s,
                        trail.SYSTEM,
                        "pilot.submitted",
                        "pilot",
                        pid,
                        f"pilot {pid} submitted to {pilot.site}"
                        + (f" as job {report.native_id}" if report.native_id else ""),
                        request_id=request_id,
                        data={"native_id": report.native_id},
                    )
                    await self._update_pilot(s, pilot, report, None)
                await s.commit()

    async def stop_idle_pilots(self) -> None:
        now = self.clock()
        cutoff = now - timedelta(seconds=self.settings.pilot_idle_timeout_s)
        async with self.db.session() as s:
            idle = (
                (
                    await s.execute(
                        select(Pilot).where(
                            Pilot.state.in_([PilotState.SUBMITTED.value, PilotState.RUNNING.value]),
                            Pilot.idle_since.is_not(None),
                        )
                    )
                )
                .scalars()
                .all()
            )
            for pilot in idle:
                assert pilot.idle_since is not None
                if await leases.pilot_lease(s, pilot.id) is not None:
                    continue
                left = leases.remaining_s(pilot, now) or 0.0
                useless = left < self.settings.reuse_margin_s + 60
                if pilot.idle_since <= cutoff or useless:
                    why = (
                        f"idle for {format_duration((now - pilot.idle_since).total_seconds())}"
                        if not useless
                        else f"idle with only {format_duration(left)} of walltime left"
                    )
                    await self._cancel(s, pilot, why)
            await s.commit()

    # ------------------------------------------------------------------------- matching

    async def match(self) -> None:
        now = self.clock()
        async with self.db.session() as s:
            inputs = await leases.matcher_inputs(s, now)
            if not inputs.demands:
                return
            decisions = match(
                inputs.demands,
                inputs.pools,
                inputs.idle,
                now=now.timestamp(),
                usage=inputs.usage,
                unreachable=inputs.unreachable,
                policy=self.policy,
            )
            await leases.apply_decisions(s, inputs.requests, decisions)
            await s.commit()

    # ------------------------------------------------------------------------- workflows

    async def _objects(self, req: Request, nodes: list[str]) -> list[dict[str, Any]]:
        spec = req.workflow
        if spec.get("helm"):
            helm = spec["helm"]
            manifests = await workflows.helm_template(
                helm["chart"],
                release=req.name,
                namespace=req.namespace,
                values=helm.get("values") or {},
                version=helm.get("version"),
                chart_dirs=self.settings.chart_dirs,
            )
            manifests = [m for m in manifests if m.get("kind") in WORKFLOW_KINDS]
        else:
            manifests = list(spec.get("manifests") or [])
        return workflows.render(
            manifests, owner=await self.owner(req.id), request_id=req.id, namespace=req.namespace, nodes=nodes
        )

    async def start_workflows(self) -> None:
        async with self.db.session() as s:
            ids = (
                (
                    await s.execute(
                        select(Request.id)
                        .where(Request.state == RequestState.LEASED.value)
                        .order_by(Request.id)
                    )
                )
                .scalars()
                .all()
            )
        if not ids:
            return
        ready = await self._ready_nodes()
        if ready is None:
            return
        for rid in ids:
            async with self.db.session() as s:
                req = await s.get(Request, rid)
                assert req is not None
                active = await leases.active_leases(s, rid)
                pilots = [lease.pilot for lease in active]
                if not pilots or any(
                    p.state != PilotState.RUNNING.value or len(ready.get(p.id, [])) < p.nodes for p in pilots
                ):
                    continue
                nodes = sorted(n for p in pilots for n in ready[p.id])
                try:
                    objects = await self._objects(req, nodes)
                    refs = await workflows.apply(self.kube, objects)
                except (UserError, ValueError) as exc:
                    reason = f"the workflow cannot be applied: {exc}"
                    self._stop(s, req, RequestState.FAILED, reason, action="workflow.invalid")
                    await s.commit()
                    continue
                except ApiError as exc:
                    if exc.status < 500 and exc.status not in (409, 429):
                        reason = f"the apiserver refused the workflow: {exc}"
                        self._stop(s, req, RequestState.FAILED, reason, action="workflow.refused")
                        await s.commit()
                    else:
                        log.warning("applying the workflow of request %s failed, will retry: %s", rid, exc)
                    continue
                except (httpx2.HTTPError, OSError) as exc:
                    log.warning("applying the workflow of request %s failed, will retry: %s", rid, exc)
                    continue
                now = self.clock()
                req.applied_objects = refs
                req.state = RequestState.RUNNING.value
                req.started_at = now
                req.last_active_at = now
                req.reason = f"running on {', '.join(nodes)}"
                trail.record(
                    s,
                    trail.SYSTEM,
                    "workflow.applied",
                    "request",
                    rid,
                    f"workflow of request {rid} applied on {', '.join(nodes)}: "
                    + ", ".join(f"{r['kind']}/{r['name']}" for r in refs),
                    request_id=rid,
                    data={"nodes": nodes, "objects": refs, "owner": await self.owner(rid)},
                )
                await s.commit()

    async def _delete_workflow(self, s: AsyncSession, req: Request) -> None:
        if not req.applied_objects:
            return
        gone = await workflows.delete(self.kube, list(req.applied_objects), await self.owner(req.id))
        trail.record(
            s,
            trail.SYSTEM,
            "workflow.deleted",
            "request",
            req.id,
            f"workflow of request {req.id} deleted"
            + (f": {', '.join(r['kind'] + '/' + r['name'] for r in gone)}" if gone else " (already gone)"),
            request_id=req.id,
        )
        req.applied_objects = []

    async def tear_down(self) -> None:
        async with self.db.session() as s:
            ids = (
                (await s.execute(select(Request.id).where(Request.state == RequestState.STOPPING.value)))
                .scalars()
                .all()
            )
        for rid in ids:
            async with self.db.session() as s:
                req = await s.get(Request, rid)
                assert req is not None
                try:
                    await self._delete_workflow(s, req)
                except (ApiError, httpx2.HTTPError, OSError) as exc:
                    log.warning("deleting the workflow of request %s failed, will retry: %s", rid, exc)
                    continue
                outcome = RequestState(req.outcome or RequestState.COMPLETED.value)
                await leases.release_leases(s, req, f"request {outcome.value}", self.clock())
                leases.finish(s, req, outcome, req.reason or f"request {outcome.value}")
                await s.commit()
            self._last_sample.pop(rid, None)

    # ------------------------------------------------------------------------- monitoring

    async def monitor(self) -> None:
        async with self.db.session() as s:
            ids = (
                (await s.execute(select(Request.id).where(Request.state == RequestState.RUNNING.value)))
                .scalars()
                .all()
            )
        mono = time.monotonic()
        for rid in ids:
            if mono - self._last_sample.get(rid, -1e9) < self.settings.monitor_interval:
                continue
            self._last_sample[rid] = mono
            async with self.db.session() as s:
                req = await s.get(Request, rid)
                assert req is not None
                kinds = [r["kind"] for r in req.applied_objects]
                try:
                    sample = await self.sampler.sample(
                        request_id=rid,
                        owner=await self.owner(rid),
                        namespace=req.namespace,
                        kinds=kinds,
                        metrics=req.metrics,
                        activity_query=req.activity_query,
                    )
                except (ApiError, httpx2.HTTPError, OSError) as exc:
                    log.warning("sampling request %s failed: %s", rid, exc)
                    continue
                self._record_sample(s, req, sample)
                await s.commit()

    def _record_sample(self, s: AsyncSession, req: Request, sample: Sample) -> None:
        now = self.clock()
        pods = sample.pods
        s.add(
            WorkflowStatus(
                request_id=req.id,
                at=now,
                phase=sample.phase,
                pods_total=pods.total,
                pods_pending=pods.pending,
                pods_running=pods.running,
                pods_succeeded=pods.succeeded,
                pods_failed=pods.failed,
                restarts=pods.restarts,
                cpu_cores=sample.cpu_cores,
                memory_bytes=sample.memory_bytes,
                metrics=dict(sample.metrics),
                message=sample.message,
            )
        )
        if is_active(sample.cpu_cores, req.idle_cpu_cores, sample.activity):
            req.last_active_at = now
        started = req.started_at or now
        finite = not ({r["kind"] for r in req.applied_objects} & {"Deployment", "StatefulSet", "ReplicaSet"})
        if sample.phase == "succeeded":
            self._stop(s, req, RequestState.COMPLETED, f"all {pods.total} pod(s) of the workflow succeeded")
        elif sample.phase == "failed":
            detail = "; ".join(pods.problems[:3]) or "a pod or job failed"
            self._stop(s, req, RequestState.FAILED, f"the workflow failed: {detail}")
        elif (
            req.inactivity_timeout_s
            and (now - (req.last_active_at or started)).total_seconds() >= req.inactivity_timeout_s
        ):
            idle = (now - (req.last_active_at or started)).total_seconds()
            cpu = f"{sample.cpu_cores:.3f}" if sample.cpu_cores is not None else "?"
            self._stop(
                s,
                req,
                RequestState.COMPLETED,
                f"idle for {format_duration(idle)} (cpu {cpu} cores <= {req.idle_cpu_cores:g}); "
                f"inactivity timeout {format_duration(req.inactivity_timeout_s)}",
            )
        elif (now - started).total_seconds() >= req.walltime_s:
            if finite:
                self._stop(
                    s,
                    req,
                    RequestState.FAILED,
                    f"walltime {format_duration(req.walltime_s)} ended before the workflow finished",
                )
            else:
                self._stop(
                    s, req, RequestState.COMPLETED, f"walltime {format_duration(req.walltime_s)} reached"
                )

    def _stop(
        self,
        s: AsyncSession,
        req: Request,
        outcome: RequestState,
        reason: str,
        action: str = "workflow.ending",
    ) -> None:
        """Mark the request for tear-down (the next step deletes the workflow and releases leases)."""
        req.state = RequestState.STOPPING.value
        req.outcome = outcome.value
        req.reason = reason
        trail.record(
            s,
            trail.SYSTEM,
            action,
            "request",
            req.id,
            reason,
            request_id=req.id,
            data={"outcome": outcome.value},
        )
