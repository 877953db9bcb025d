"""The pilot launcher: submit, inspect and cancel pilot jobs through PSI/J, one path for SLURM,
PBS, LSF, Flux and local execution.

:class:`PilotLauncher` is the interface the CLI (``jiriaf pilot``) and the JCS use:

* :meth:`~PilotLauncher.submit` is idempotent per pilot id. The intent is recorded before the job
  is submitted and the native id right after; a re-run finds the job of an interrupted submission
  by its name (``jiriaf-pilot-<id>``) and re-attaches instead of submitting again.
* :meth:`~PilotLauncher.status` combines the batch state (PSI/J) with the pilot's Nodes (Ready
  condition, the reason each JRM stopped) and stores it in the record.
* :meth:`~PilotLauncher.cancel` sends the JRM tasks SIGTERM so they drain, waits (bounded) for the
  job to end, cancels it through PSI/J if it has not, and deletes the pilot's Nodes.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import psutil

from jiriaf.errors import UserError
from jiriaf.pilots import batch_native
from jiriaf.pilots.batch_script import (
    EXIT_FILE,
    LABEL_PILOT,
    PilotPlan,
    batch_options,
    check_pilot_id,
    expected_node_names,
    make_plan,
    new_pilot_id,
    render_job_script,
)
from jiriaf.pilots.registry import NodeReport, PilotRecord, PilotRegistry
from jiriaf.pilots.sites import Site, SitesFile

log = logging.getLogger(__name__)
# PSI/J logs expected conditions of re-attached jobs (no spec to read auxiliary files with) as
# warnings; without a handler Python would print them on stderr. Configured logging still gets them.
logging.getLogger("psij").addHandler(logging.NullHandler())

FAULT_ENV = "JIRIAF_PILOT_FAULT"  # fault injection for tests: "kill-after-submit"
CANCELLED_REASON = "PilotCancelled"
STATUS_WAIT = 30.0
EVENT_COMPONENT = "jiriaf-pilot"
_PSIJ_STATES = {
    "NEW": "intent",
    "QUEUED": "queued",
    "ACTIVE": "active",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELED": "canceled",
}


@dataclass
class PilotRequest:
    """What a caller asks for; everything not given comes from the site."""

    site: str
    nodes: int = 1
    walltime: int = 3600
    pilot_id: str | None = None
    jrms_per_node: int | None = None
    idle_timeout: float = 0.0
    nodetype: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    batch: dict[str, str | None] = field(default_factory=dict)


class PilotLauncher:
    """Submits and manages pilots of the given sites, keeping records in ``registry``."""

    def __init__(
        self,
        sites: SitesFile | Mapping[str, Site] | Iterable[Site],
        *,
        registry: PilotRegistry | None = None,
        kubeconfig: Path | str | None = None,
        python: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        if isinstance(sites, SitesFile):
            self.sites = dict(sites.sites)
        elif isinstance(sites, Mapping):
            self.sites = dict(sites)
        else:
            self.sites = {s.name: s for s in sites}
        self.registry = registry or PilotRegistry()
        self.kubeconfig = str(kubeconfig) if kubeconfig else None
        self.python = python or sys.executable
        self.poll_interval = poll_interval
        self._executors: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers
    def site(self, name: str) -> Site:
        site = self.sites.get(name)
        if site is None:
            known = ", ".join(sorted(self.sites)) or "none"
            raise UserError(f"no site {name!r} (known: {known})")
        return site

    def script_path(self, pilot_id: str) -> Path:
        return self.registry.directory(pilot_id) / "job.sh"

    def _executor(self, name: str) -> Any:
        if name not in self._executors:
            import psij
            from psij.executors.batch.batch_scheduler_executor import BatchSchedulerExecutorConfig

            work = self.registry.root / "psij"
            work.mkdir(parents=True, exist_ok=True)
            config: Any
            if name == "local":
                config = psij.JobExecutorConfig(work_directory=work)
            else:
                config = BatchSchedulerExecutorConfig(
                    work_directory=work,
                    queue_polling_interval=max(1, int(self.poll_interval)),
                    initial_queue_polling_delay=0,
                    keep_files=True,
                )
            try:
                self._executors[name] = psij.JobExecutor.get_instance(name, config=config)
            except ValueError as exc:
                raise UserError(f"PSI/J has no executor {name!r}: {exc}") from exc
        return self._executors[name]

    def _control_kubeconfig(self, site: Site | None) -> str | None:
        """The kubeconfig the launcher itself uses for Nodes and Events."""
        if self.kubeconfig:
            return self.kubeconfig
        if os.environ.get("KUBECONFIG"):
            return os.environ["KUBECONFIG"].split(os.pathsep)[0]
        if site is not None and Path(site.control_plane.kubeconfig).expanduser().is_file():
            return str(Path(site.control_plane.kubeconfig).expanduser())
        return None

    # ------------------------------------------------------------------ submit
    def plan(self, request: PilotRequest, pilot_id: str) -> PilotPlan:
        site = self.site(request.site)
        return make_plan(
            site,
            pilot_id=pilot_id,
            nodes=request.nodes,
            walltime=request.walltime,
            pilot_dir=str(self.registry.directory(pilot_id)),
            launcher_python=self.python,
            jrms_per_node=request.jrms_per_node,
            idle_timeout=request.idle_timeout,
            nodetype=request.nodetype,
            labels=request.labels,
            batch=request.batch,
        )

    def submit(self, request: PilotRequest) -> PilotRecord:
        """Submit the pilot (or re-attach to the job already submitted for its id)."""
        pilot_id = check_pilot_id(request.pilot_id) if request.pilot_id else new_pilot_id()
        plan = self.plan(request, pilot_id)
        site = plan.site
        script = self.script_path(pilot_id)
        with self.registry.locked(pilot_id):
            record = self.registry.get(pilot_id)
            if record is not None:
                if record.site != site.name:
                    raise UserError(f"pilot {pilot_id} already exists on site {record.site}")
                if record.native_id is not None:
                    record.note(f"submit repeated: job {record.native_id} exists, nothing submitted")
                    self.registry.save(record)
                    return record
                found = batch_native.find_jobs(record.executor, record.job_name, script)
                if found:
                    record.native_id = found[-1]
                    record.state = "queued"
                    record.submitted_at = record.submitted_at or time.time()
                    record.node_names = expected_node_names(plan, record.native_id)
                    record.note(
                        f"re-attached to job {record.native_id} found by name {record.job_name} "
                        "(an earlier submission was interrupted before it was recorded)"
                    )
                    if len(found) > 1:
                        record.note(f"warning: {len(found)} jobs carry that name: {', '.join(found)}")
                    self.registry.save(record)
                    return record
                record.note("no job from the earlier attempt exists: submitting")
            else:
                record = PilotRecord(
                    id=pilot_id,
                    site=site.name,
                    executor=site.executor,
                    job_name=plan.job_name,
                    nodes=plan.nodes,
                    jrms_per_node=plan.jrms_per_node,
                    walltime=plan.walltime,
                    margin=plan.margin,
                    idle_timeout=plan.idle_timeout,
                    control_kubeconfig=self._control_kubeconfig(site),
                    node_names=expected_node_names(plan, None),
                )
                record.note(f"intent: {plan.tasks} JRM(s) on {site.name} for {plan.walltime}s")
                self.registry.save(record)
            script.write_text(render_job_script(plan))
            script.chmod(0o700)
            job = self._psij_job(plan, script)
            try:
                self._executor(site.executor).submit(job)
            except Exception as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                record.note(f"submission failed: {message}")
                self.registry.save(record)
                raise UserError(f"submitting pilot {pilot_id} to {site.name} failed: {message}") from exc
            if os.environ.get(FAULT_ENV) == "kill-after-submit":  # fault injection: die before recording
                os.kill(os.getpid(), signal.SIGKILL)
            record.native_id = str(job.native_id)
            record.state = "queued"
            record.submitted_at = time.time()
            record.node_names = expected_node_names(plan, record.native_id)
            record.note(f"submitted as {site.executor} job {record.native_id}")
            self.registry.save(record)
            return record

    def _psij_job(self, plan: PilotPlan, script: Path) -> Any:
        import psij

        standard, custom = batch_options(plan)
        local = plan.site.executor == "local"
        spec = psij.JobSpec(
            executable="/bin/bash",
            arguments=[str(script)],
            directory=script.parent,
            name=plan.job_name,
            inherit_environment=True,
            stdout_path=script.parent / "psij.out",
            stderr_path=script.parent / "psij.err",
            launcher="single",
            resources=None
            if local
            else psij.ResourceSpecV1(node_count=plan.nodes, processes_per_node=plan.jrms_per_node),
            attributes=psij.JobAttributes(
                duration=timedelta(seconds=plan.walltime),
                custom_attributes=dict(custom) if custom else None,
                **standard,
            ),
        )
        return psij.Job(spec)

    # ------------------------------------------------------------------ status
    def status(self, pilot_id: str) -> PilotRecord:
        """Refresh and return the pilot's record (batch state, nodes, stop reasons)."""
        record = self.registry.require(pilot_id)
        if record.final:
            return record
        try:
            with self.registry.locked(pilot_id, timeout=5):
                record = self.registry.require(pilot_id)
                if record.final:  # another launcher ended it (a cancel) while this one waited
                    return record
                self._refresh(record)
                self.registry.save(record)
        except UserError as exc:
            if "busy" not in str(exc):
                raise
        return record

    def list(self, refresh: bool = True) -> list[PilotRecord]:
        """Every pilot's record; the unfinished ones refreshed first when ``refresh``."""
        records = self.registry.all()
        if not refresh:
            return records
        return [r if r.final else self.status(r.id) for r in records]

    def _refresh(self, record: PilotRecord) -> None:
        if record.native_id is None:
            found = batch_native.find_jobs(record.executor, record.job_name, self.script_path(record.id))
            if not found:
                return
            record.native_id = found[-1]
            record.note(f"re-attached to job {record.native_id} found by name {record.job_name}")
        state, message = self._batch_state(record)
        record.batch_state = state
        record.batch_message = message
        exit_file = self.registry.directory(record.id) / EXIT_FILE
        with contextlib.suppress(OSError, ValueError):
            record.exit_code = int(exit_file.read_text().strip())
        self._update_nodes(record)
        final = state in ("COMPLETED", "FAILED", "CANCELED")
        if record.state == "cancelling":
            return
        if final:
            self._finish(record, _PSIJ_STATES[state])
        elif state in _PSIJ_STATES:
            record.state = _PSIJ_STATES[state]  # type: ignore[assignment]

    def _finish(self, record: PilotRecord, state: str) -> None:
        if record.exit_code not in (None, 0) and state == "completed":
            state = "failed"
        record.state = state  # type: ignore[assignment]
        record.finished_at = record.finished_at or time.time()
        if record.stop_reason is None:
            reasons = sorted({r.stop_reason for r in record.node_reports.values() if r.stop_reason})
            if reasons:
                record.stop_reason = ", ".join(reasons)
            elif state == "failed":
                record.stop_reason = f"JobFailed({record.batch_message or record.exit_code})"
            elif state == "canceled":
                record.stop_reason = "JobCanceled"
        record.note(f"job {record.native_id} ended: {state} ({record.stop_reason or 'no reason reported'})")

    def _batch_state(self, record: PilotRecord, wait: float = STATUS_WAIT) -> tuple[str, str | None]:
        """PSI/J's state of the pilot's job (``QUEUED``, ``ACTIVE``, ``COMPLETED``...)."""
        assert record.native_id is not None
        if record.executor == "local":
            script = self.script_path(record.id)
            if batch_native.find_jobs("local", record.job_name, script):
                return "ACTIVE", None
            return "COMPLETED", None
        import psij

        job = _attached_job()
        self._executor(record.executor).attach(job, record.native_id)
        status = job.wait(timeout=timedelta(seconds=wait), target_states=[psij.JobState.QUEUED])
        if status is None:
            return "UNKNOWN", f"no answer from the batch system within {wait:.0f}s"
        return status.state.name, status.message

    def wait_final(self, pilot_id: str, timeout: float) -> PilotRecord:
        """Refresh until the pilot has ended or ``timeout`` seconds passed; return the record."""
        deadline = time.monotonic() + timeout
        record = self.status(pilot_id)
        while not record.final and time.monotonic() < deadline:
            time.sleep(max(1.0, self.poll_interval))
            record = self.status(pilot_id)
        return record

    # ------------------------------------------------------------------ nodes
    def _client(self, record: PilotRecord) -> httpx2.Client | None:
        path = record.control_kubeconfig or self._control_kubeconfig(self.sites.get(record.site))
        if not path:
            return None
        from jiriaf.kube.raw import raw_client

        try:
            return raw_client(path, timeout=20)
        except UserError as exc:
            log.warning("cannot use kubeconfig %s: %s", path, exc)
            return None

    def _update_nodes(self, record: PilotRecord) -> None:
        """Fill ``node_reports`` from the Nodes, their stop Events and the tasks' files."""
        reports = dict(record.node_reports)
        client = self._client(record)
        nodes: list[dict[str, Any]] = []
        if client is not None:
            with client, contextlib.suppress(httpx2.HTTPError, OSError, ValueError):
                resp = client.get("/api/v1/nodes", params={"labelSelector": f"{LABEL_PILOT}={record.id}"})
                if resp.status_code == 200:
                    nodes = resp.json().get("items") or []
                for node in nodes:
                    name = node["metadata"]["name"]
                    report = reports.get(name) or NodeReport()
                    ready: dict[str, Any] = next(
                        (
                            c
                            for c in node.get("status", {}).get("conditions") or []
                            if c.get("type") == "Ready"
                        ),
                        {},
                    )
                    report.ready = ready.get("status")
                    report.reason = ready.get("reason")
                    if report.stop_reason is None and report.ready != "True":
                        report.stop_reason = _stop_event_reason(client, name)
                    reports[name] = report
        present = {n["metadata"]["name"] for n in nodes}
        for name in set(reports) | set(record.node_names):
            report = reports.get(name) or NodeReport()
            if name not in present:
                report.ready = None
            task_reason = _task_stop_reason(self.registry.directory(record.id) / "tasks" / f"{name}.json")
            if task_reason and report.stop_reason is None:
                report.stop_reason = task_reason
            reports[name] = report
        record.node_reports = reports
        for name in sorted(present):
            if name not in record.node_names:
                record.node_names.append(name)

    def _delete_nodes(self, record: PilotRecord) -> builtins.list[str]:
        client = self._client(record)
        if client is None:
            record.note("no kubeconfig for the control plane: Nodes not deleted")
            return []
        deleted = []
        with client:
            names = set(record.node_names)
            with contextlib.suppress(httpx2.HTTPError, OSError, ValueError):
                resp = client.get("/api/v1/nodes", params={"labelSelector": f"{LABEL_PILOT}={record.id}"})
                if resp.status_code == 200:
                    names |= {n["metadata"]["name"] for n in resp.json().get("items") or []}
            for name in sorted(names):
                with contextlib.suppress(httpx2.HTTPError, OSError):
                    resp = client.delete(f"/api/v1/nodes/{name}")
                    if resp.status_code < 300:
                        deleted.append(name)
        return deleted

    def _record_event(self, record: PilotRecord, reason: str, message: str) -> None:
        client = self._client(record)
        if client is None:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with client:
            for name in record.node_names:
                body = {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"generateName": f"{name}.", "namespace": "default"},
                    "involvedObject": {"kind": "Node", "name": name, "apiVersion": "v1"},
                    "reason": reason,
                    "message": message,
                    "type": "Normal",
                    "source": {"component": EVENT_COMPONENT},
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                }
                with contextlib.suppress(httpx2.HTTPError, OSError):
                    client.post("/api/v1/namespaces/default/events", json=body)

    # ------------------------------------------------------------------ cancel
    def cancel(self, pilot_id: str, drain_timeout: float = 120.0) -> PilotRecord:
        """Drain the pilot's JRMs (SIGTERM), end the job, delete its Nodes; return the record."""
        with self.registry.locked(pilot_id, timeout=drain_timeout + 60):
            record = self.registry.require(pilot_id)
            if record.final:
                deleted = self._delete_nodes(record)
                if deleted:
                    record.note(f"deleted leftover nodes {', '.join(deleted)}")
                    self.registry.save(record)
                return record
            script = self.script_path(pilot_id)
            if record.native_id is None:
                found = batch_native.find_jobs(record.executor, record.job_name, script)
                record.native_id = found[-1] if found else None
            record.state = "cancelling"
            record.stop_reason = CANCELLED_REASON
            record.note("cancel requested: JRMs drain")
            self.registry.save(record)
            if record.native_id is not None:
                self._update_nodes(record)
                self._record_event(record, CANCELLED_REASON, f"pilot {pilot_id} cancelled: the JRM drains")
                signalled = batch_native.signal_job(record.executor, record.native_id, script, "TERM")
                record.note("JRM tasks sent SIGTERM" if signalled else "job had no running tasks to signal")
                state = self._wait_batch_final(record, drain_timeout)
                if state not in ("COMPLETED", "FAILED", "CANCELED"):
                    record.note(f"JRMs did not finish within {drain_timeout:.0f}s: cancelling the job")
                    self._psij_cancel(record)
                    state = self._wait_batch_final(record, 60)
                else:
                    record.note(f"JRMs drained; job ended ({state})")
                record.batch_state = state
                with contextlib.suppress(OSError, ValueError):
                    record.exit_code = int((self.registry.directory(pilot_id) / EXIT_FILE).read_text())
                self._update_nodes(record)
            else:
                record.note("no job was submitted")
            deleted = self._delete_nodes(record)
            record.note(f"deleted nodes: {', '.join(deleted) or 'none'}")
            record.state = "canceled"
            record.finished_at = time.time()
            self.registry.save(record)
            return record

    def _wait_batch_final(self, record: PilotRecord, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while True:
            state, _ = self._batch_state(record, wait=min(STATUS_WAIT, max(1.0, deadline - time.monotonic())))
            if state in ("COMPLETED", "FAILED", "CANCELED") or time.monotonic() >= deadline:
                return state
            time.sleep(max(1.0, self.poll_interval))

    def _psij_cancel(self, record: PilotRecord) -> None:
        assert record.native_id is not None
        if record.executor == "local":
            for pid in batch_native.find_jobs("local", record.job_name, self.script_path(record.id)):
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(int(pid))
                    for proc in [*root.children(recursive=True), root]:
                        with contextlib.suppress(psutil.Error):
                            proc.kill()
            return
        executor = self._executor(record.executor)
        job = _attached_job()
        executor.attach(job, record.native_id)
        try:
            executor.cancel(job)
        except Exception as exc:
            record.note(f"batch cancel failed: {exc}")


def _attached_job() -> Any:
    """A PSI/J job to attach to a native id (with a spec, so PSI/J can read the job's exit files)."""
    import psij

    return psij.Job(psij.JobSpec(executable="/bin/bash", launcher="single"))


def _stop_event_reason(client: httpx2.Client, node: str) -> str | None:
    """The reason of the newest "JRM stopped" Event of ``node`` (the JRM records one on exit)."""
    selector = f"involvedObject.kind=Node,involvedObject.name={node},source=jiriaf-jrm"
    try:
        resp = client.get("/api/v1/namespaces/default/events", params={"fieldSelector": selector})
        items = resp.json().get("items") or [] if resp.status_code == 200 else []
    except (httpx2.HTTPError, OSError, ValueError):
        return None
    stops = [e for e in items if str(e.get("message", "")).startswith("JRM stopped")]
    if not stops:
        return None
    newest = max(
        stops, key=lambda e: (e.get("lastTimestamp") or "", e["metadata"].get("resourceVersion", ""))
    )
    return str(newest.get("reason")) or None


def _task_stop_reason(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    reason = data.get("stop_reason")
    return str(reason) if reason else None
