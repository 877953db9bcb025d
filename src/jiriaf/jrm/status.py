"""Pure status computation: container views -> ContainerStatus, pod phase, conditions, status.

The pod controller fills one :class:`ContainerView` per container from the runtime's
ContainerFacts and its own bookkeeping (restart counts, back-off, configuration errors), then
calls :func:`pod_status` and patches the pod only when :func:`status_differs` says so. Times are
epoch seconds here and RFC3339 ``YYYY-MM-DDTHH:MM:SSZ`` strings in the produced dicts.

Restart back-off follows the kubelet: :func:`backoff_delay` gives 10 s, 20 s, 40 s ... capped at
300 s for the n-th restart. The caller resets a container's restart back-off (not its
``restartCount``) once the container has run for 10 minutes without exiting
(:data:`BACKOFF_RESET_SECONDS`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Literal

from jiriaf.jrm.environment import parse_quantity
from jiriaf.jrm.runtime.base import ContainerFacts

__all__ = [
    "BACKOFF_INITIAL_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "BACKOFF_RESET_SECONDS",
    "ContainerView",
    "TerminatedView",
    "backoff_delay",
    "container_id",
    "container_status",
    "crash_loop_message",
    "parse_time",
    "pod_conditions",
    "pod_phase",
    "pod_status",
    "qos_class",
    "rfc3339",
    "should_restart",
    "status_differs",
    "terminated_reason",
    "view_from_facts",
]

# waiting reasons
CONTAINER_CREATING = "ContainerCreating"
POD_INITIALIZING = "PodInitializing"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
CREATE_CONTAINER_ERROR = "CreateContainerError"
RUN_CONTAINER_ERROR = "RunContainerError"
# terminated reasons
COMPLETED = "Completed"
ERROR = "Error"
DEADLINE_EXCEEDED = "DeadlineExceeded"
# pod-level messages
DEADLINE_EXCEEDED_MESSAGE = "Pod was active on the node longer than the specified deadline"

BACKOFF_INITIAL_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
BACKOFF_RESET_SECONDS = 600.0

State = Literal["waiting", "running", "terminated"]


@dataclass(frozen=True)
class TerminatedView:
    """A finished run of a container (current state or ``lastState``)."""

    exit_code: int
    started_at: float | None = None
    finished_at: float | None = None
    reason: str | None = None  # default: terminated_reason(exit_code)
    message: str | None = None
    signal: int | None = None
    container_id: str | None = None


@dataclass(frozen=True)
class ContainerView:
    """What the controller knows about one container, in Kubernetes terms.

    ``state`` is 'waiting' (with ``reason``/``message``), 'running' (``started_at``) or
    'terminated' (``exit_code``, ``started_at``, ``finished_at``, optional ``reason``/``signal``).
    ``ready`` defaults to "running" (no readiness probes); ``started`` likewise.
    ``last_termination`` is the previous run (``lastState``), kept across restarts.
    """

    name: str
    image: str
    state: State
    container_id: str | None = None
    reason: str | None = None
    message: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    restart_count: int = 0
    ready: bool | None = None
    started: bool | None = None
    last_termination: TerminatedView | None = None
    image_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # merged into the ContainerStatus

    @property
    def is_ready(self) -> bool:
        """Ready as reported: ``ready`` if set, else whether the container is running."""
        return self.state == "running" if self.ready is None else self.ready

    @property
    def has_started(self) -> bool:
        """Whether this container ever ran (now or before)."""
        return (
            self.state in ("running", "terminated")
            or self.last_termination is not None
            or self.restart_count > 0
        )


# ------------------------------------------------------------------------------------------------
# time


def rfc3339(epoch: float) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, whole seconds, truncated like metav1.Time)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.floor(epoch)))


def parse_time(text: str) -> float:
    """RFC3339 string (``Z`` or an offset, optional fraction) -> epoch seconds."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# ------------------------------------------------------------------------------------------------
# containers


def container_id(pgid: int) -> str:
    """The containerID reported for a process group: ``jiriaf://<pgid>``."""
    return f"jiriaf://{pgid}"


def terminated_reason(exit_code: int) -> str:
    """``Completed`` for exit code 0, ``Error`` otherwise (OOMKilled cannot be detected here)."""
    return COMPLETED if exit_code == 0 else ERROR


def crash_loop_message(delay: float, container: str, pod: str, namespace: str, uid: str) -> str:
    """The kubelet's CrashLoopBackOff waiting message."""
    return f"back-off {_duration(delay)} restarting failed container={container} pod={pod}_{namespace}({uid})"


def _duration(seconds: float) -> str:
    """Go-style duration: ``10s``, ``1m20s``, ``5m0s``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    return f"{whole // 60}m{whole % 60}s"


def _terminated_dict(t: TerminatedView) -> dict[str, Any]:
    out: dict[str, Any] = {
        "exitCode": t.exit_code,
        "reason": t.reason or terminated_reason(t.exit_code),
    }
    if t.signal:
        out["signal"] = t.signal
    if t.message:
        out["message"] = t.message
    if t.started_at is not None:
        out["startedAt"] = rfc3339(t.started_at)
    if t.finished_at is not None:
        out["finishedAt"] = rfc3339(t.finished_at)
    if t.container_id:
        out["containerID"] = t.container_id
    return out


def container_status(view: ContainerView) -> dict[str, Any]:
    """Kubernetes ContainerStatus JSON for ``view``."""
    state: dict[str, Any]
    if view.state == "running":
        running: dict[str, Any] = {}
        if view.started_at is not None:
            running["startedAt"] = rfc3339(view.started_at)
        state = {"running": running}
    elif view.state == "terminated":
        state = {
            "terminated": _terminated_dict(
                TerminatedView(
                    exit_code=view.exit_code if view.exit_code is not None else 0,
                    started_at=view.started_at,
                    finished_at=view.finished_at,
                    reason=view.reason,
                    message=view.message,
                    signal=view.signal,
                    container_id=view.container_id,
                )
            )
        }
    else:
        waiting: dict[str, Any] = {"reason": view.reason or CONTAINER_CREATING}
        if view.message:
            waiting["message"] = view.message
        state = {"waiting": waiting}
    last: dict[str, Any] = {}
    if view.last_termination is not None:
        last = {"terminated": _terminated_dict(view.last_termination)}
    started = view.state == "running" if view.started is None else view.started
    out: dict[str, Any] = {
        "name": view.name,
        "image": view.image,
        "imageID": view.image_id,
        "state": state,
        "lastState": last,
        "ready": view.is_ready,
        "restartCount": view.restart_count,
        "started": started,
    }
    if view.container_id:
        out["containerID"] = view.container_id
    out.update(view.extra)
    return out


def view_from_facts(
    name: str,
    image: str,
    facts: ContainerFacts | None,
    *,
    restart_count: int | None = None,
    last_termination: TerminatedView | None = None,
    waiting_reason: str = CONTAINER_CREATING,
    waiting_message: str | None = None,
) -> ContainerView:
    """A ContainerView from the runtime's facts of the latest run (None: not started yet).

    No facts -> waiting with ``waiting_reason``. Running -> running. Exited -> terminated with
    ``Completed``/``Error``. ``last_termination`` defaults to the facts' ``previous`` run.
    """
    if facts is None:
        return ContainerView(
            name=name,
            image=image,
            state="waiting",
            reason=waiting_reason,
            message=waiting_message,
            restart_count=restart_count or 0,
            last_termination=last_termination,
        )
    cid = container_id(facts.pgid) if facts.pgid is not None else None
    previous = last_termination
    if previous is None and facts.previous is not None and facts.previous.exit_code is not None:
        p = facts.previous
        previous = TerminatedView(
            exit_code=p.exit_code if p.exit_code is not None else 0,
            started_at=p.started_at,
            finished_at=p.finished_at,
            signal=p.signal,
            container_id=container_id(p.pgid) if p.pgid is not None else None,
        )
    count = facts.restart_count if restart_count is None else restart_count
    if facts.running or facts.exit_code is None:
        return ContainerView(
            name=name,
            image=image,
            state="running",
            container_id=cid,
            started_at=facts.started_at,
            restart_count=count,
            last_termination=previous,
        )
    return ContainerView(
        name=name,
        image=image,
        state="terminated",
        container_id=cid,
        started_at=facts.started_at,
        finished_at=facts.finished_at,
        exit_code=facts.exit_code,
        signal=facts.signal,
        restart_count=count,
        last_termination=previous,
    )


# ------------------------------------------------------------------------------------------------
# restarts


def should_restart(restart_policy: str, exit_code: int, *, init: bool = False) -> bool:
    """Whether a container that exited with ``exit_code`` is restarted under ``restart_policy``.

    Always: yes; OnFailure: only on a non-zero exit; Never: no. For init containers Always
    behaves like OnFailure (an init container that succeeded never runs again).
    """
    policy = restart_policy or "Always"
    if policy == "Never":
        return False
    if policy == "Always" and not init:
        return True
    return exit_code != 0


def backoff_delay(restart_count: int) -> float:
    """Seconds to wait before restarting a container that has restarted ``restart_count`` times.

    10 s for the first restart, doubling, capped at 300 s (kubelet). The caller resets its
    back-off counter once the container ran for BACKOFF_RESET_SECONDS (10 min) without exiting.
    """
    if restart_count <= 0:
        return BACKOFF_INITIAL_SECONDS
    if restart_count >= 10:
        return BACKOFF_MAX_SECONDS
    return min(BACKOFF_INITIAL_SECONDS * float(1 << restart_count), BACKOFF_MAX_SECONDS)


# ------------------------------------------------------------------------------------------------
# phase and conditions


def pod_phase(
    restart_policy: str,
    init_views: Sequence[ContainerView],
    app_views: Sequence[ContainerView],
    *,
    deadline_exceeded: bool = False,
) -> str:
    """The pod phase by the kubelet's rules.

    Failed if the deadline passed, or an init container failed under restartPolicy Never.
    Pending while init containers are unfinished (and no app container ever started) or any
    app container waits to start for the first time. Running when every app container has
    started and one is running, or all have stopped but will restart. Succeeded when all
    stopped with 0 and won't restart; Failed when all stopped, one failed, and won't restart.
    """
    policy = restart_policy or "Always"
    if deadline_exceeded:
        return "Failed"
    pending_init = 0
    failed_init = 0
    for v in init_views:
        if v.state == "running":
            pending_init += 1
        elif v.state == "terminated":
            if (v.exit_code or 0) != 0:
                failed_init += 1
        elif v.last_termination is not None:
            if v.last_termination.exit_code != 0:
                failed_init += 1
        else:
            pending_init += 1
    running = waiting = stopped = succeeded = 0
    for v in app_views:
        if v.state == "running":
            running += 1
        elif v.state == "terminated":
            stopped += 1
            if (v.exit_code or 0) == 0:
                succeeded += 1
        elif v.last_termination is not None:
            stopped += 1
        else:
            waiting += 1
    if failed_init > 0 and policy == "Never":
        return "Failed"
    any_app_started = any(v.has_started for v in app_views)
    if (pending_init > 0 and not any_app_started) or waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped > 0:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _condition(
    ctype: str,
    status: bool,
    now: float,
    previous: Mapping[str, Mapping[str, Any]],
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    text = "True" if status else "False"
    before = previous.get(ctype)
    since = rfc3339(now)
    if before is not None and before.get("status") == text and before.get("lastTransitionTime"):
        since = str(before["lastTransitionTime"])
    out: dict[str, Any] = {"type": ctype, "status": text, "lastProbeTime": None, "lastTransitionTime": since}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def _names(names: Sequence[str]) -> str:
    return "[" + " ".join(names) + "]"


def pod_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    *,
    initialized: bool,
    containers_ready: bool,
    now: float,
    scheduled: bool = True,
    ready_to_start: bool = True,
    phase: str = "Running",
    uninitialized: Sequence[str] = (),
    unready: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Pod conditions as the kubelet writes them, in its order.

    PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled, then any other
    condition found in ``previous`` unchanged (DisruptionTarget, readiness gates...).
    ``lastTransitionTime`` is kept from ``previous`` when a condition's status did not change.
    Reasons: Initialized False ``ContainersNotInitialized``; Ready/ContainersReady False
    ``ContainersNotReady``, ``PodCompleted`` when Succeeded (Initialized then True with
    ``PodCompleted``), ``PodFailed`` when Failed. ``uninitialized``/``unready`` name the
    containers for the messages.
    """
    prev = {str(c.get("type")): c for c in previous or []}
    if phase == "Succeeded":
        init_cond = _condition("Initialized", True, now, prev, "PodCompleted")
        ready_reason: str | None = "PodCompleted"
        ready_message: str | None = None
        ready = False
    else:
        init_cond = _condition(
            "Initialized",
            initialized,
            now,
            prev,
            None if initialized else "ContainersNotInitialized",
            None
            if initialized or not uninitialized
            else f"containers with incomplete status: {_names(uninitialized)}",
        )
        if phase == "Failed":
            ready, ready_reason, ready_message = False, "PodFailed", None
        elif containers_ready:
            ready, ready_reason, ready_message = True, None, None
        else:
            ready, ready_reason = False, "ContainersNotReady"
            ready_message = f"containers with unready status: {_names(unready)}" if unready else None
    conditions = [
        _condition("PodReadyToStartContainers", ready_to_start, now, prev),
        init_cond,
        _condition("Ready", ready, now, prev, ready_reason, ready_message),
        _condition("ContainersReady", ready, now, prev, ready_reason, ready_message),
        _condition("PodScheduled", scheduled, now, prev),
    ]
    own = {c["type"] for c in conditions}
    conditions.extend(dict(c) for t, c in prev.items() if t not in own)
    return conditions


# ------------------------------------------------------------------------------------------------
# QoS and the whole status


def _resources(container: Mapping[str, Any]) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    res = container.get("resources") or {}
    limits = {
        k: parse_quantity(str(v)) for k, v in (res.get("limits") or {}).items() if k in ("cpu", "memory")
    }
    requests = {
        k: parse_quantity(str(v)) for k, v in (res.get("requests") or {}).items() if k in ("cpu", "memory")
    }
    for k, v in limits.items():  # apiserver defaulting: requests default to limits
        requests.setdefault(k, v)
    return requests, limits


def qos_class(pod: Mapping[str, Any]) -> str:
    """Guaranteed, Burstable or BestEffort from cpu/memory requests and limits (Kubernetes rules).

    BestEffort: no container sets any cpu/memory request or limit. Guaranteed: every container
    has cpu and memory limits and the requests equal the limits. Otherwise Burstable.
    Unset requests default to the limits, as the apiserver does.
    """
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    any_set = False
    guaranteed = True
    for c in containers:
        requests, limits = _resources(c)
        requests = {k: v for k, v in requests.items() if v != 0}
        limits = {k: v for k, v in limits.items() if v != 0}
        if requests or limits:
            any_set = True
        if set(limits) != {"cpu", "memory"} or requests != limits:
            guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def pod_status(
    pod: Mapping[str, Any],
    init_views: Sequence[ContainerView],
    app_views: Sequence[ContainerView],
    *,
    pod_ip: str | None,
    host_ip: str | None,
    start_time: float | None,
    now: float,
    phase_reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    """The full pod ``status`` dict.

    Phase from :func:`pod_phase` (``phase_reason='DeadlineExceeded'`` forces Failed, with the
    kubelet's message unless ``message`` is given); conditions from :func:`pod_conditions` with
    the pod's current ``status.conditions`` as ``previous``; IPs, startTime, init and app
    container statuses (in spec order of the views given) and qosClass.
    """
    spec = pod.get("spec") or {}
    deadline = phase_reason == DEADLINE_EXCEEDED
    phase = pod_phase(
        str(spec.get("restartPolicy") or "Always"), init_views, app_views, deadline_exceeded=deadline
    )
    if deadline and message is None:
        message = DEADLINE_EXCEEDED_MESSAGE
    incomplete = [v.name for v in init_views if not (v.state == "terminated" and (v.exit_code or 0) == 0)]
    initialized = not incomplete or any(v.has_started for v in app_views)
    unready = [v.name for v in app_views if not v.is_ready]
    previous = (pod.get("status") or {}).get("conditions")
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": pod_conditions(
            previous,
            initialized=initialized,
            containers_ready=bool(app_views) and not unready,
            now=now,
            phase=phase,
            uninitialized=incomplete,
            unready=unready,
        ),
        "qosClass": qos_class(pod),
    }
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if start_time is not None:
        status["startTime"] = rfc3339(start_time)
    if spec.get("initContainers") or init_views:
        status["initContainerStatuses"] = [container_status(v) for v in init_views]
    status["containerStatuses"] = [container_status(v) for v in app_views]
    if phase_reason:
        status["reason"] = phase_reason
    if message:
        status["message"] = message
    return status


# ------------------------------------------------------------------------------------------------
# change detection

# the keys of a pod status this module produces; others (set by the apiserver or newer kubelets,
# like observedGeneration or containerStatuses[].volumeMounts) are not compared
_POD_KEYS = (
    "phase",
    "conditions",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "initContainerStatuses",
    "containerStatuses",
    "qosClass",
    "reason",
    "message",
)
_CONTAINER_KEYS = (
    "name",
    "image",
    "imageID",
    "containerID",
    "state",
    "lastState",
    "ready",
    "restartCount",
    "started",
)
_CONDITION_KEYS = ("type", "status", "reason", "message", "lastTransitionTime")
_TIME_KEYS = {"startTime", "startedAt", "finishedAt", "lastTransitionTime"}


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def _norm(value: Any, key: str = "") -> Any:
    """A canonical form: empty values dropped, timestamps as whole epoch seconds."""
    if key in _TIME_KEYS and isinstance(value, str):
        try:
            return int(parse_time(value))
        except ValueError:
            return value
    if isinstance(value, Mapping):
        return {k: _norm(v, k) for k, v in value.items() if not _empty(v)}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    return value


def _project(status: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _POD_KEYS:
        value: Any = status.get(key)
        if _empty(value):
            continue
        if key in ("initContainerStatuses", "containerStatuses"):
            items = [{k: c.get(k) for k in _CONTAINER_KEYS} for c in value]
            value = sorted((_norm(c) for c in items), key=lambda c: str(c.get("name")))
        elif key == "conditions":
            items = [{k: c.get(k) for k in _CONDITION_KEYS} for c in value]
            value = sorted((_norm(c) for c in items), key=lambda c: str(c.get("type")))
        elif key in ("hostIPs", "podIPs"):
            value = sorted(str(ip.get("ip")) for ip in value)
        else:
            value = _norm(value, key)
        out[key] = value
    return out


def status_differs(old_status: Mapping[str, Any] | None, new_status: Mapping[str, Any]) -> bool:
    """True only when ``new_status`` changes something this module manages in ``old_status``.

    Key order, list order of conditions/statuses/IPs, absent-vs-empty values, timestamp
    spelling (``Z`` vs ``+00:00``, fractions) and keys this module never writes are ignored.
    """
    return _project(old_status or {}) != _project(new_status)
