"""The pod controller: reconciles the pods bound to this node (desired, from the API) with the
runtime (actual, process groups), one worker task per pod.

A worker is woken by pod events, container exits (the runtime's exit listener), probe results and
its own timers (the end of a restart back-off, ``activeDeadlineSeconds``), with a resync every
``RESYNC_SECONDS`` as a safety net, or every ``POLL_SECONDS`` while the last sync failed, the pod's
volumes are not ready, or the runtime cannot report exits. Each wake runs :meth:`PodWorker.sync`,
which is idempotent: it looks at the pod and at the runtime's facts and does the next thing
(prepare volumes, run init containers in order, start or restart app containers with back-off,
enforce ``activeDeadlineSeconds``, terminate on deletion) and patches the pod status only when it
changed. (An idle JRM then costs the control plane nothing and itself little per pod; the kubelet
similarly relies on its pod lifecycle events and resyncs pods only every minute.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from jiriaf.jrm import environment, status, volumes
from jiriaf.jrm.addresses import PodAddresses
from jiriaf.jrm.environment import ContainerConfigError
from jiriaf.jrm.probes import ProbeTiming, run_probe
from jiriaf.jrm.runtime.base import ContainerFacts, ContainerKey, ContainerLaunch, Runtime, RuntimeStartError
from jiriaf.jrm.settings import JRMSettings
from jiriaf.kube.events import EventRecorder
from jiriaf.kube.patching import ApiError, delete, get, patch, pod_path

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
# files the process runtime keeps in a container directory: no mountPath may take their place
RUNTIME_FILES = ("pgid", "exit", "run.json", ".env.json", ".previous", "stdout", "stderr")
POLL_SECONDS = 1.0
RESYNC_SECONDS = 10.0
CONFIG_RETRY_SECONDS = 5.0


def referenced_objects(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets a pod's volumes and environment refer to."""
    cms: set[str] = set()
    secrets: set[str] = set()
    spec = pod.get("spec") or {}
    for vol in spec.get("volumes") or []:
        if (vol.get("configMap") or {}).get("name"):
            cms.add(vol["configMap"]["name"])
        if (vol.get("secret") or {}).get("secretName"):
            secrets.add(vol["secret"]["secretName"])
        for src in (vol.get("projected") or {}).get("sources") or []:
            if (src.get("configMap") or {}).get("name"):
                cms.add(src["configMap"]["name"])
            if (src.get("secret") or {}).get("name"):
                secrets.add(src["secret"]["name"])
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for ef in c.get("envFrom") or []:
            if (ef.get("configMapRef") or {}).get("name"):
                cms.add(ef["configMapRef"]["name"])
            if (ef.get("secretRef") or {}).get("name"):
                secrets.add(ef["secretRef"]["name"])
        for ev in c.get("env") or []:
            vf = ev.get("valueFrom") or {}
            if (vf.get("configMapKeyRef") or {}).get("name"):
                cms.add(vf["configMapKeyRef"]["name"])
            if (vf.get("secretKeyRef") or {}).get("name"):
                secrets.add(vf["secretKeyRef"]["name"])
    return cms, secrets


@dataclass
class ContainerState:
    """The controller's book-keeping for one container of a pod."""

    spec: dict[str, Any]
    init: bool
    restart_count: int = 0
    backoff_count: int = 0
    backoff_until: float = 0.0
    waiting_reason: str = status.CONTAINER_CREATING
    waiting_message: str | None = None
    last_termination: status.TerminatedView | None = None
    facts: ContainerFacts | None = None
    final: status.TerminatedView | None = None  # a terminated state decided by the controller
    ready: bool = False
    started: bool = False
    done: bool = False  # terminated and will not run again
    probe_task: asyncio.Task[None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    handled_exit: float | None = None  # started_at of the run whose exit was handled
    argv: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec.get("name"))


class PodWorker:
    """Owns one pod: its containers, probes and status."""

    def __init__(self, controller: PodController, pod: dict[str, Any]) -> None:
        self.c = controller
        self.pod = pod
        meta = pod["metadata"]
        self.namespace: str = meta.get("namespace", "default")
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        spec = pod.get("spec") or {}
        self.restart_policy = str(spec.get("restartPolicy") or "Always")
        self.containers: dict[str, ContainerState] = {}
        for cs in spec.get("initContainers") or []:
            self.containers[cs["name"]] = ContainerState(cs, init=True)
        for cs in spec.get("containers") or []:
            self.containers[cs["name"]] = ContainerState(
                cs, init=False, waiting_reason=self._initial_waiting()
            )
        self.pod_dir = volumes.pod_directory(controller.settings.pod_root, self.namespace, self.name)
        self.wake = asyncio.Event()
        self.prepared = False
        self.mounts: dict[str, dict[str, Path]] = {}
        self.config_error: str | None = None
        self.last_config_try = 0.0
        self.phase_reason: str | None = None
        self.phase_message: str | None = None
        self.forced_failed = False  # the node stopped the pod (walltime, shutdown): phase Failed
        self.terminal = (pod.get("status") or {}).get("phase") in TERMINAL
        self.deleted_from_api = False
        self.finished = False
        self.start_time: float | None = None
        self.reported: dict[str, Any] | None = None
        self.events_sent: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    def _initial_waiting(self) -> str:
        spec = self.pod.get("spec") or {}
        return status.POD_INITIALIZING if spec.get("initContainers") else status.CONTAINER_CREATING

    def key(self, name: str) -> ContainerKey:
        return ContainerKey(self.namespace, self.name, self.uid, name)

    # ------------------------------------------------------------------ life
    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.wake.set()

    def adopt(self, facts: ContainerFacts) -> None:
        """Take over a container that ran before the JRM restarted."""
        cs = self.containers.get(facts.key.container)
        if cs is None:
            return
        cs.facts = facts
        cs.restart_count = max(cs.restart_count, facts.restart_count)
        self.prepared = True
        if facts.started_at and (self.start_time is None or facts.started_at < self.start_time):
            self.start_time = facts.started_at

    def _restore_from_api(self) -> None:
        """Restart counts, lastState and start time as reported before a JRM restart."""
        st = self.pod.get("status") or {}
        if st.get("startTime"):
            with contextlib.suppress(ValueError):
                self.start_time = status.parse_time(st["startTime"])
        for entry in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
            cs = self.containers.get(entry.get("name", ""))
            if cs is None:
                continue
            cs.restart_count = max(cs.restart_count, int(entry.get("restartCount") or 0))
            last = (entry.get("lastState") or {}).get("terminated")
            if last and cs.last_termination is None:
                cs.last_termination = _terminated_from_api(last)
            term = (entry.get("state") or {}).get("terminated")
            if term and cs.facts is None and (self.terminal or cs.init):
                cs.final = _terminated_from_api(term)
                cs.done = (cs.init and cs.final.exit_code == 0) or self.terminal

    async def run(self) -> None:
        self._restore_from_api()
        try:
            while not self.finished:
                began = time.monotonic()
                self.wake.clear()  # before the sync: a wake while it runs brings another sync
                failed = False
                try:
                    await self.sync()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    failed = True
                    log.exception("sync of pod %s/%s failed", self.namespace, self.name)
                if self.c.sync_observer is not None:
                    self.c.sync_observer(time.monotonic() - began)
                if self.finished:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=self.next_wake(time.time(), failed))
        finally:
            for cs in self.containers.values():
                await _cancel(cs.probe_task)

    def next_wake(self, now: float, failed: bool = False) -> float | None:
        """Seconds until this worker must sync again without being woken (None: only when woken)."""
        if self.terminal:
            return None
        if failed or not self.prepared or not self.c.runtime.notifies_exits:
            return POLL_SECONDS
        due = [RESYNC_SECONDS]
        for cs in self.containers.values():
            waiting = cs.facts is None or not cs.facts.running
            if not cs.done and waiting and cs.final is not None and cs.backoff_until > now:
                due.append(cs.backoff_until - now)
        deadline = self._deadline()
        if deadline is not None:
            due.append(deadline - now)
        return max(0.01, min(due))

    def _deadline(self) -> float | None:
        """When ``activeDeadlineSeconds`` ends the pod (epoch seconds), once it has started."""
        seconds = (self.pod.get("spec") or {}).get("activeDeadlineSeconds")
        if seconds is None or self.start_time is None:
            return None
        return self.start_time + float(seconds)

    # ------------------------------------------------------------------ sync
    async def sync(self) -> None:
        now = time.time()
        meta = self.pod.get("metadata") or {}
        if self.deleted_from_api or meta.get("deletionTimestamp"):
            await self._terminate_and_delete()
            return
        for cs in self.containers.values():
            if cs.facts is not None and not cs.done:
                cs.facts = self.c.runtime.inspect(self.key(cs.name)) or cs.facts
        if not self.terminal:
            await self._progress(now)
        await self._publish(now)

    async def _progress(self, now: float) -> None:
        if self.start_time is None:
            self.start_time = now
        deadline = self._deadline()
        if deadline is not None and now >= deadline:
            await self._fail_deadline()
            return
        if not self.prepared:
            if now - self.last_config_try < CONFIG_RETRY_SECONDS and self.config_error:
                return
            self.last_config_try = now
            if not await self._prepare():
                return
        inits = [cs for cs in self.containers.values() if cs.init]
        for cs in inits:
            if cs.done:
                continue
            await self._drive(cs, now)
            if not cs.done:
                return  # init containers run one at a time, in order
            if cs.final and cs.final.exit_code != 0:
                return
        if any(cs.final and cs.final.exit_code != 0 and cs.done for cs in inits):
            return
        for cs in self.containers.values():
            if not cs.init and not cs.done:
                await self._drive(cs, now)
        apps = [cs for cs in self.containers.values() if not cs.init]
        if apps and all(cs.done for cs in apps):
            self.terminal = True

    async def _drive(self, cs: ContainerState, now: float) -> None:
        """Start, watch or restart one container."""
        facts = cs.facts
        if facts is None:
            if (
                cs.final is None or now >= cs.backoff_until
            ):  # never started, or a start error's back-off passed
                await self._start(cs)
            return
        if facts.running:
            if cs.probe_task is None or cs.probe_task.done():
                cs.probe_task = asyncio.create_task(self._probe_loop(cs))
            return
        if cs.handled_exit != facts.started_at:
            await self._handle_exit(cs, facts, now)
        if not cs.done and now >= cs.backoff_until:
            await self._start(cs)

    async def _handle_exit(self, cs: ContainerState, facts: ContainerFacts, now: float) -> None:
        """Record the exit of the latest run and decide between restart (with back-off) and done."""
        cs.handled_exit = facts.started_at
        if (
            facts.started_at
            and facts.finished_at
            and facts.finished_at - facts.started_at > status.BACKOFF_RESET_SECONDS
        ):
            cs.backoff_count = 0  # it ran long enough: a crash now starts the back-off afresh
        await _cancel(cs.probe_task)
        cs.probe_task = None
        cs.ready = False
        cs.final = _terminated_from_facts(facts, now)
        code = cs.final.exit_code
        if code != 0:
            self.c.container_failures += 1
        if status.should_restart(self.restart_policy, code, init=cs.init):
            delay = status.backoff_delay(cs.backoff_count)
            cs.backoff_until = now + delay
            cs.backoff_count += 1
            cs.waiting_reason = status.CRASH_LOOP_BACK_OFF
            cs.waiting_message = status.crash_loop_message(
                delay, cs.name, self.name, self.namespace, self.uid
            )
            if code != 0:
                await self._event(
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {cs.name} in pod {self.name}",
                    cs.name,
                    once=False,
                )
        else:
            cs.done = True

    async def _prepare(self) -> bool:
        """Fetch referenced ConfigMaps/Secrets, plan and materialise volumes (nothing written if invalid)."""
        try:
            cms, secrets = await self._fetch_refs()
            plan = volumes.plan_volumes(
                self.pod,
                configmaps=cms,
                secrets=secrets,
                pod_dir=self.pod_dir,
                allowed_host_prefixes=[Path(p) for p in self.c.settings.allowed_host_paths],
                pod_ip=self.c.pod_ip(self.pod),
                host_ip=self.c.settings.node_ip,
                node_name=self.c.settings.node_name,
                node_allocatable={"cpu": self.c.settings.cpu, "memory": self.c.settings.memory},
                reserved_names=RUNTIME_FILES,
            )
            volumes.materialise(plan)
            for cs in self.containers.values():
                self.mounts[cs.name] = volumes.mount_map(plan, cs.name)
        except ContainerConfigError as exc:
            await self._config_error(None, str(exc))
            return False
        self.prepared = True
        self.config_error = None
        return True

    async def _fetch_refs(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        names_cm, names_secret = referenced_objects(self.pod)
        cms: dict[str, dict[str, Any]] = {}
        secrets: dict[str, dict[str, Any]] = {}
        for name in names_cm:
            obj = await get(self.c.client, f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
            if obj is not None:
                cms[name] = obj
        for name in names_secret:
            obj = await get(self.c.client, f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
            if obj is not None:
                secrets[name] = obj
        return cms, secrets

    async def _config_error(self, container: str | None, message: str) -> None:
        self.config_error = message
        targets = [self.containers[container]] if container else list(self.containers.values())
        for cs in targets:
            if cs.facts is None:
                cs.waiting_reason = status.CREATE_CONTAINER_CONFIG_ERROR
                cs.waiting_message = message
        await self._event("Warning", "Failed", f"Error: {message}", container)

    async def _start(self, cs: ContainerState) -> None:
        settings = self.c.settings
        cdir = volumes.container_directory(self.pod_dir, cs.name)
        mounts = self.mounts.get(cs.name, {})
        try:
            if not cs.argv:
                cms, secrets = await self._fetch_refs()
                raw_env = environment.resolve_env(
                    self.pod,
                    cs.spec,
                    configmaps=cms,
                    secrets=secrets,
                    pod_ip=self.c.pod_ip(self.pod),
                    host_ip=settings.node_ip,
                    node_name=settings.node_name,
                    node_allocatable={"cpu": settings.cpu, "memory": settings.memory},
                )
                cs.env = {**self.c.base_env(self.pod), **environment.rewrite_env(raw_env, mounts)}
                cs.argv = environment.build_argv(self.pod, cs.spec, raw_env, mounts)
                cs.cwd = environment.working_dir(cs.spec, cdir, mounts)
        except ContainerConfigError as exc:
            await self._config_error(cs.name, str(exc))
            return
        restart = cs.facts is not None or cs.final is not None
        if restart:
            self.c.container_restarts += 1
            cs.restart_count += 1
            if cs.final is not None:
                cs.last_termination = cs.final
        cs.final = None
        cs.waiting_reason, cs.waiting_message = status.CONTAINER_CREATING, None
        cs.started = cs.ready = False
        cdir.mkdir(parents=True, exist_ok=True)
        launch = ContainerLaunch(
            key=self.key(cs.name),
            argv=list(cs.argv),
            env=cs.env,
            working_dir=cs.cwd or cdir,
            container_dir=cdir,
            restart_count=cs.restart_count,
        )
        try:
            cs.facts = await self.c.runtime.start(launch)
        except RuntimeStartError as exc:
            now = time.time()
            cs.facts = None
            cs.final = status.TerminatedView(
                exit_code=128, started_at=now, finished_at=now, reason="StartError", message=str(exc)
            )
            cs.waiting_reason, cs.waiting_message = "RunContainerError", str(exc)
            self.c.container_failures += 1
            await self._event("Warning", "Failed", f"Error: {exc}", cs.name)
            if status.should_restart(self.restart_policy, 128, init=cs.init):
                cs.backoff_until = now + status.backoff_delay(cs.backoff_count)
                cs.backoff_count += 1
            else:
                cs.done = True
            return
        cs.handled_exit = None
        # without probes a running container is started and ready at once (as the kubelet reports it)
        cs.started = cs.spec.get("startupProbe") is None
        cs.ready = cs.started and cs.spec.get("readinessProbe") is None
        self.c.containers_started += 1
        await self._event("Normal", "Started", f"Started container {cs.name}", cs.name, once=False)

    # ------------------------------------------------------------------ probes
    async def _probe_loop(self, cs: ContainerState) -> None:
        spec = cs.spec
        startup, liveness, readiness = (
            spec.get("startupProbe"),
            spec.get("livenessProbe"),
            spec.get("readinessProbe"),
        )
        before = (cs.started, cs.ready)
        cs.started = startup is None
        cs.ready = readiness is None and cs.started
        if (cs.started, cs.ready) != before:  # waking without a change made a busy loop (no probes)
            self.wake.set()
        mounts = self.mounts.get(cs.name, {})
        cdir = volumes.container_directory(self.pod_dir, cs.name)

        async def attempt(probe: dict[str, Any]) -> bool:
            result = await run_probe(
                probe,
                spec,
                host=self.c.pod_ip(self.pod) or "127.0.0.1",
                env=cs.env,
                cwd=cs.cwd or cdir,
                rewrite=lambda s: environment.rewrite_paths(s, mounts),
            )
            return result.success

        if startup is not None:
            t = ProbeTiming.of(startup)
            await asyncio.sleep(t.initial_delay)
            failures = 0
            while True:
                if await attempt(startup):
                    cs.started = True
                    cs.ready = readiness is None
                    self.wake.set()
                    break
                failures += 1
                if failures >= t.failure_threshold:
                    await self._probe_kill(cs, "Startup")
                    return
                await asyncio.sleep(t.period)
        loops = []
        if liveness is not None:
            loops.append(self._periodic(cs, liveness, attempt, kind="Liveness"))
        if readiness is not None:
            loops.append(self._periodic(cs, readiness, attempt, kind="Readiness"))
        if loops:
            await asyncio.gather(*loops)

    async def _periodic(self, cs: ContainerState, probe: dict[str, Any], attempt: Any, kind: str) -> None:
        t = ProbeTiming.of(probe)
        await asyncio.sleep(t.initial_delay)
        ok_run = bad_run = 0
        while True:
            ok = await attempt(probe)
            ok_run, bad_run = (ok_run + 1, 0) if ok else (0, bad_run + 1)
            if kind == "Readiness":
                new = cs.ready
                if ok and ok_run >= t.success_threshold:
                    new = True
                elif not ok and bad_run >= t.failure_threshold:
                    new = False
                if new != cs.ready:
                    cs.ready = new
                    self.wake.set()
            elif not ok and bad_run >= t.failure_threshold:
                await self._probe_kill(cs, kind)
                return
            await asyncio.sleep(t.period)

    async def _probe_kill(self, cs: ContainerState, kind: str) -> None:
        await self._event("Warning", "Unhealthy", f"{kind} probe failed", cs.name, once=False)
        await self._event(
            "Normal",
            "Killing",
            f"Container {cs.name} failed {kind.lower()} probe, will be restarted",
            cs.name,
            once=False,
        )
        grace = float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30) or 0)
        await self.c.runtime.stop(self.key(cs.name), grace)
        self.wake.set()

    # ------------------------------------------------------------------ ending
    async def _fail_deadline(self) -> None:
        await self._stop_all(
            grace=float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        )
        self.phase_reason = status.DEADLINE_EXCEEDED
        self.terminal = True
        for cs in self.containers.values():
            self._finalise(cs, reason=None)
        await self._event("Warning", status.DEADLINE_EXCEEDED, status.DEADLINE_EXCEEDED_MESSAGE, None)

    def _finalise(self, cs: ContainerState, reason: str | None) -> None:
        """After a stop: record each container's final state and that it will not run again."""
        cs.done = True
        facts = self.c.runtime.inspect(self.key(cs.name)) if cs.facts is not None else None
        if facts is not None:
            cs.facts = facts
            if not facts.running and facts.exit_code is not None:
                cs.final = _terminated_from_facts(facts, time.time(), reason)

    async def _stop_all(self, grace: float) -> None:
        for cs in self.containers.values():
            await _cancel(cs.probe_task)
            cs.probe_task = None
        keys = [self.key(cs.name) for cs in self.containers.values() if cs.facts is not None]
        await asyncio.gather(*(self.c.runtime.stop(k, grace) for k in keys), return_exceptions=True)

    def grace_period(self) -> float:
        meta = self.pod.get("metadata") or {}
        if meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        return float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30) or 0)

    async def terminate(self, grace: float | None = None, reason: str | None = None) -> None:
        """Stop every container within the grace period and report the final status.

        With a ``reason`` (the node is going away) a pod that had not finished ends Failed with
        that reason, as the kubelet's graceful node shutdown reports it.
        """
        if reason and not self.terminal:
            self.forced_failed = True
            self.phase_reason = "Terminated"
            self.phase_message = f"Pod was terminated in response to node shutdown ({reason})"
        if any(cs.facts is not None and not cs.done for cs in self.containers.values()):
            await self._event("Normal", "Killing", "Stopping containers", None, once=True)
        await self._stop_all(self.grace_period() if grace is None else grace)
        for cs in self.containers.values():
            self._finalise(cs, None)
        self.terminal = True
        if not self.deleted_from_api:
            await self._publish(time.time())

    async def _terminate_and_delete(self) -> None:
        await self.terminate()
        if not self.deleted_from_api:
            body = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid},
            }
            try:
                await delete(self.c.client, pod_path(self.namespace, self.name), body)
            except ApiError as exc:
                if exc.status != 409:  # 409: a newer pod of the same name; ours is gone already
                    raise
        shutil.rmtree(self.pod_dir, ignore_errors=True)
        for name in self.containers:
            self.c.runtime.forget(self.key(name))
        self.finished = True

    # ------------------------------------------------------------------ status
    def views(self) -> tuple[list[status.ContainerView], list[status.ContainerView]]:
        inits: list[status.ContainerView] = []
        apps: list[status.ContainerView] = []
        for cs in self.containers.values():
            image = str(cs.spec.get("image") or "")
            if cs.final is not None and (cs.done or cs.waiting_reason != status.CRASH_LOOP_BACK_OFF):
                f = cs.final
                view = status.ContainerView(
                    name=cs.name,
                    image=image,
                    state="terminated",
                    container_id=f.container_id,
                    reason=f.reason,
                    message=f.message,
                    started_at=f.started_at,
                    finished_at=f.finished_at,
                    exit_code=f.exit_code,
                    signal=f.signal,
                    restart_count=cs.restart_count,
                    ready=False,
                    started=False,
                    last_termination=cs.last_termination,
                )
            elif cs.final is not None:  # exited, waiting to be restarted
                view = status.ContainerView(
                    name=cs.name,
                    image=image,
                    state="waiting",
                    reason=cs.waiting_reason,
                    message=cs.waiting_message,
                    restart_count=cs.restart_count,
                    ready=False,
                    started=False,
                    last_termination=cs.final,
                )
            else:
                view = status.view_from_facts(
                    cs.name,
                    image,
                    cs.facts,
                    restart_count=cs.restart_count,
                    last_termination=cs.last_termination,
                    waiting_reason=cs.waiting_reason,
                    waiting_message=cs.waiting_message,
                )
                if view.state == "running":
                    view = _with(view, ready=cs.ready, started=cs.started)
            (inits if cs.init else apps).append(view)
        return inits, apps

    async def _publish(self, now: float) -> None:
        inits, apps = self.views()
        new = status.pod_status(
            self.pod,
            inits,
            apps,
            pod_ip=self.c.pod_ip(self.pod),
            host_ip=self.c.settings.node_ip,
            start_time=self.start_time,
            now=now,
            phase_reason=self.phase_reason,
            message=self.phase_message,
        )
        if self.forced_failed and new["phase"] != "Succeeded":
            new["phase"] = "Failed"
        old = self.reported if self.reported is not None else self.pod.get("status")
        if not status.status_differs(old, new):
            return
        try:
            updated = await patch(
                self.c.client, pod_path(self.namespace, self.name, "status"), {"status": new}
            )
            self.reported = new
            self.pod = {**self.pod, "status": updated.get("status", new)}
            self.c.status_patches += 1
        except ApiError as exc:
            if exc.status == 404:
                self.deleted_from_api = True
                self.wake.set()
                return
            self.c.api_errors += 1
            raise

    async def _event(
        self, etype: str, reason: str, message: str, container: str | None, once: bool = True
    ) -> None:
        key = f"{reason}/{container}/{message}"
        if once and key in self.events_sent:
            return
        self.events_sent.add(key)
        field_path = ""
        if container:
            kind = "initContainers" if self.containers[container].init else "containers"
            field_path = f"spec.{kind}{{{container}}}"
        await self.c.recorder.record(self.pod, "Pod", etype, reason, message, field_path)


def _with(view: status.ContainerView, **changes: Any) -> status.ContainerView:
    from dataclasses import replace

    return replace(view, **changes)


def _terminated_from_facts(
    facts: ContainerFacts, now: float, reason: str | None = None
) -> status.TerminatedView:
    """The terminated state of a finished run (exit code 137 when nothing recorded it)."""
    return status.TerminatedView(
        exit_code=facts.exit_code if facts.exit_code is not None else 137,
        started_at=facts.started_at,
        finished_at=facts.finished_at or now,
        signal=facts.signal,
        reason=reason,
        message=facts.message,
        container_id=status.container_id(facts.pgid) if facts.pgid else None,
    )


def _terminated_from_api(t: Mapping[str, Any]) -> status.TerminatedView:
    def ts(key: str) -> float | None:
        return status.parse_time(t[key]) if t.get(key) else None

    cid = t.get("containerID")
    return status.TerminatedView(
        exit_code=int(t.get("exitCode") or 0),
        started_at=ts("startedAt"),
        finished_at=ts("finishedAt"),
        reason=t.get("reason"),
        message=t.get("message"),
        signal=t.get("signal"),
        container_id=cid,
    )


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class PodController:
    """Runs a :class:`PodWorker` for each pod bound to this node."""

    def __init__(
        self, client: httpx2.AsyncClient, runtime: Runtime, settings: JRMSettings, recorder: EventRecorder
    ) -> None:
        self.client = client
        self.runtime = runtime
        self.settings = settings
        self.recorder = recorder
        self.workers: dict[str, PodWorker] = {}
        self.adopted: dict[str, list[ContainerFacts]] = {}
        runtime.exit_listener = self.container_exited
        self.accepting = True
        self.containers_started = 0
        self.container_failures = 0  # runs that ended with a non-zero code, and failed starts
        self.container_restarts = 0
        self.status_patches = 0
        self.api_errors = 0
        self.sync_observer: Callable[[float], None] | None = None  # gets each sync's duration
        self.addresses = PodAddresses(
            settings.address_mode,
            settings.node_ip,
            settings.pod_cidr,
            state_dir=settings.pod_root,
            node_name=settings.node_name,
        )

    # environment every container gets before its own env (never the JRM's own environment)
    def base_env(self, pod: Mapping[str, Any]) -> dict[str, str]:
        meta = pod.get("metadata") or {}
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(Path.home())),
            "HOSTNAME": str(meta.get("name", "")),
        }
        for var in ("USER", "LOGNAME", "LANG", "LC_ALL", "TZ"):
            if var in os.environ:
                env[var] = os.environ[var]
        env["POD_IP"] = self.pod_ip(pod)
        return env

    def pod_ip(self, pod: Mapping[str, Any]) -> str:
        """The pod's address: the node's (shared mode) or its own (per-pod mode, see addresses.py)."""
        if self.addresses.pool is None:
            return self.settings.node_ip
        return self.addresses.address_for(pod, live=self.workers.keys() | self.adopted.keys())

    def container_exited(self, key: ContainerKey) -> None:
        """The runtime saw a run of ``key`` end: its pod's worker syncs now."""
        worker = self.workers.get(key.pod_uid)
        if worker is not None:
            worker.wake.set()

    def adopt_existing(self) -> None:
        """Learn the containers that survived a JRM restart (adopted, never restarted)."""
        for facts in self.runtime.adopt():
            self.adopted.setdefault(facts.key.pod_uid, []).append(facts)

    async def on_event(self, kind: str, pod: dict[str, Any]) -> None:
        """Informer handler for pods bound to this node."""
        uid = pod.get("metadata", {}).get("uid")
        if not uid:
            return
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.deleted_from_api = True
                worker.update(pod)
            return
        if worker is None:
            if not self.accepting and not pod.get("metadata", {}).get("deletionTimestamp"):
                phase = (pod.get("status") or {}).get("phase")
                if phase not in TERMINAL and uid not in self.adopted:
                    return  # draining: new pods are not started (they stay Pending for the scheduler's view)
            worker = PodWorker(self, pod)
            for facts in self.adopted.pop(uid, []):
                worker.adopt(facts)
            self.workers[uid] = worker
            worker.task = asyncio.create_task(self._run_worker(worker), name=f"pod-{pod['metadata']['name']}")
        else:
            worker.update(pod)

    async def _run_worker(self, worker: PodWorker) -> None:
        try:
            await worker.run()
        finally:
            self.workers.pop(worker.uid, None)

    async def stop_orphans(self) -> None:
        """Containers adopted from disk whose pod no longer exists in the API are stopped and removed."""
        for uid, facts_list in list(self.adopted.items()):
            for facts in facts_list:
                await self.runtime.stop(facts.key, 0)
                pod_dir = volumes.pod_directory(self.settings.pod_root, facts.key.namespace, facts.key.pod)
                shutil.rmtree(pod_dir, ignore_errors=True)
            self.adopted.pop(uid, None)

    async def terminate_all(self, reason: str) -> None:
        """Gracefully stop every pod (walltime end or JRM shutdown) and report final statuses."""
        self.accepting = False
        workers = list(self.workers.values())
        await asyncio.gather(*(w.terminate(reason=reason) for w in workers), return_exceptions=True)
        for w in workers:
            await _cancel(w.task)

    def counts_by_phase(self) -> dict[str, int]:
        phases: dict[str, int] = {}
        for w in self.workers.values():
            phase = (w.reported or w.pod.get("status") or {}).get("phase", "Pending")
            phases[phase] = phases.get(phase, 0) + 1
        return phases
