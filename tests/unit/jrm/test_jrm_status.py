"""jiriaf.jrm.status: container statuses, restart/back-off, phase, conditions, pod status, diffs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from jiriaf.jrm.runtime.base import ContainerFacts, ContainerKey
from jiriaf.jrm.status import (
    ContainerView,
    TerminatedView,
    backoff_delay,
    container_id,
    container_status,
    crash_loop_message,
    parse_time,
    pod_conditions,
    pod_phase,
    pod_status,
    qos_class,
    rfc3339,
    should_restart,
    status_differs,
    terminated_reason,
    view_from_facts,
)

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
T0S = "2023-11-14T22:13:20Z"


def ts(offset: float) -> str:
    return rfc3339(T0 + offset)


# ------------------------------------------------------------------------------------------------
# time


@pytest.mark.parametrize(
    ("epoch", "text"),
    [(0.0, "1970-01-01T00:00:00Z"), (T0, T0S), (T0 + 0.999, T0S), (T0 + 61, "2023-11-14T22:14:21Z")],
)
def test_rfc3339(epoch: float, text: str) -> None:
    assert rfc3339(epoch) == text


@pytest.mark.parametrize(
    "text",
    [
        T0S,
        "2023-11-14T22:13:20+00:00",
        "2023-11-14T23:13:20+01:00",
        "2023-11-14T22:13:20.000Z",
        "2023-11-14T22:13:20",
    ],
)
def test_parse_time(text: str) -> None:
    assert parse_time(text) == T0


# ------------------------------------------------------------------------------------------------
# containers


@pytest.mark.parametrize(
    ("code", "reason"), [(0, "Completed"), (1, "Error"), (2, "Error"), (137, "Error"), (-1, "Error")]
)
def test_terminated_reason(code: int, reason: str) -> None:
    assert terminated_reason(code) == reason


def test_container_status_waiting_default() -> None:
    assert container_status(ContainerView(name="c", image="img", state="waiting")) == {
        "name": "c",
        "image": "img",
        "imageID": "",
        "state": {"waiting": {"reason": "ContainerCreating"}},
        "lastState": {},
        "ready": False,
        "restartCount": 0,
        "started": False,
    }


def test_container_status_config_error() -> None:
    view = ContainerView(
        name="c",
        image="img",
        state="waiting",
        reason="CreateContainerConfigError",
        message='configmap "x" not found',
    )
    assert container_status(view)["state"] == {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'configmap "x" not found'}
    }


def test_container_status_running() -> None:
    view = ContainerView(
        name="c",
        image="img",
        state="running",
        container_id=container_id(4242),
        started_at=T0,
        restart_count=2,
        last_termination=TerminatedView(
            exit_code=1, started_at=T0 - 30, finished_at=T0 - 20, container_id="jiriaf://4100"
        ),
        image_id="jiriaf://img",
    )
    assert container_status(view) == {
        "name": "c",
        "image": "img",
        "imageID": "jiriaf://img",
        "containerID": "jiriaf://4242",
        "state": {"running": {"startedAt": T0S}},
        "lastState": {
            "terminated": {
                "exitCode": 1,
                "reason": "Error",
                "startedAt": ts(-30),
                "finishedAt": ts(-20),
                "containerID": "jiriaf://4100",
            }
        },
        "ready": True,
        "restartCount": 2,
        "started": True,
    }


def test_container_status_running_not_ready_by_choice() -> None:
    status = container_status(ContainerView(name="c", image="i", state="running", ready=False, started=False))
    assert status["ready"] is False
    assert status["started"] is False
    assert status["state"] == {"running": {}}


@pytest.mark.parametrize(
    ("exit_code", "signal", "reason", "expected"),
    [
        (0, None, None, {"exitCode": 0, "reason": "Completed"}),
        (3, None, None, {"exitCode": 3, "reason": "Error"}),
        (137, 9, None, {"exitCode": 137, "reason": "Error", "signal": 9}),
        (143, 15, "DeadlineExceeded", {"exitCode": 143, "reason": "DeadlineExceeded", "signal": 15}),
    ],
)
def test_container_status_terminated(
    exit_code: int, signal: int | None, reason: str | None, expected: dict[str, Any]
) -> None:
    view = ContainerView(
        name="c",
        image="i",
        state="terminated",
        container_id="jiriaf://7",
        started_at=T0,
        finished_at=T0 + 5,
        exit_code=exit_code,
        signal=signal,
        reason=reason,
        message="bye",
    )
    status = container_status(view)
    assert status["state"] == {
        "terminated": {
            **expected,
            "message": "bye",
            "startedAt": T0S,
            "finishedAt": ts(5),
            "containerID": "jiriaf://7",
        }
    }
    assert status["ready"] is False
    assert status["started"] is False
    assert status["containerID"] == "jiriaf://7"


def test_container_status_extra_fields() -> None:
    status = container_status(
        ContainerView(name="c", image="i", state="waiting", extra={"user": {"linux": {}}})
    )
    assert status["user"] == {"linux": {}}


def test_crash_loop_message() -> None:
    assert (
        crash_loop_message(10, "c", "p", "ns", "u")
        == "back-off 10s restarting failed container=c pod=p_ns(u)"
    )
    assert crash_loop_message(160, "c", "p", "ns", "u").startswith("back-off 2m40s ")
    assert crash_loop_message(300, "c", "p", "ns", "u").startswith("back-off 5m0s ")


def _facts(**kw: Any) -> ContainerFacts:
    return ContainerFacts(key=ContainerKey("ns", "p", "uid", "c"), **kw)


def test_view_from_facts() -> None:
    assert view_from_facts("c", "i", None) == ContainerView(
        name="c", image="i", state="waiting", reason="ContainerCreating"
    )
    running = view_from_facts("c", "i", _facts(running=True, pid=10, pgid=10, started_at=T0, restart_count=1))
    assert running.state == "running"
    assert running.container_id == "jiriaf://10"
    assert running.restart_count == 1
    assert running.is_ready
    previous = _facts(running=False, pgid=5, started_at=T0 - 10, finished_at=T0 - 1, exit_code=2)
    done = view_from_facts(
        "c",
        "i",
        _facts(
            running=False,
            pgid=10,
            started_at=T0,
            finished_at=T0 + 3,
            exit_code=137,
            signal=9,
            previous=previous,
        ),
        restart_count=4,
    )
    assert done.state == "terminated"
    assert (done.exit_code, done.signal, done.restart_count) == (137, 9, 4)
    assert done.last_termination == TerminatedView(
        exit_code=2, started_at=T0 - 10, finished_at=T0 - 1, container_id="jiriaf://5"
    )
    assert container_status(done)["state"]["terminated"]["reason"] == "Error"
    waiting = view_from_facts(
        "c",
        "i",
        None,
        waiting_reason="CrashLoopBackOff",
        waiting_message="m",
        last_termination=done.last_termination,
        restart_count=3,
    )
    assert container_status(waiting)["lastState"]["terminated"]["exitCode"] == 2
    assert container_status(waiting)["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "m"}}


# ------------------------------------------------------------------------------------------------
# restart and back-off


@pytest.mark.parametrize(
    ("policy", "code", "init", "restart"),
    [
        ("Always", 0, False, True),
        ("Always", 1, False, True),
        ("OnFailure", 0, False, False),
        ("OnFailure", 1, False, True),
        ("OnFailure", 137, False, True),
        ("Never", 0, False, False),
        ("Never", 1, False, False),
        ("", 0, False, True),
        ("", 1, False, True),
        ("Always", 0, True, False),
        ("Always", 1, True, True),
        ("OnFailure", 0, True, False),
        ("OnFailure", 2, True, True),
        ("Never", 0, True, False),
        ("Never", 2, True, False),
    ],
)
def test_should_restart(policy: str, code: int, init: bool, restart: bool) -> None:
    assert should_restart(policy, code, init=init) is restart


@pytest.mark.parametrize(
    ("count", "delay"),
    [(-1, 10), (0, 10), (1, 20), (2, 40), (3, 80), (4, 160), (5, 300), (6, 300), (50, 300), (10_000, 300)],
)
def test_backoff_delay(count: int, delay: float) -> None:
    assert backoff_delay(count) == delay


# ------------------------------------------------------------------------------------------------
# phase


def W(name: str = "c", reason: str = "ContainerCreating", last: int | None = None) -> ContainerView:
    return ContainerView(
        name=name,
        image="i",
        state="waiting",
        reason=reason,
        last_termination=None if last is None else TerminatedView(exit_code=last),
        restart_count=0 if last is None else 1,
    )


def R(name: str = "c") -> ContainerView:
    return ContainerView(name=name, image="i", state="running", started_at=T0)


def X(code: int, name: str = "c") -> ContainerView:
    return ContainerView(
        name=name, image="i", state="terminated", exit_code=code, started_at=T0, finished_at=T0 + 1
    )


PHASES: list[tuple[str, str, list[ContainerView], list[ContainerView], str]] = [
    ("nothing yet", "Always", [], [W()], "Pending"),
    ("no containers", "Always", [], [], "Pending"),
    ("config error", "Always", [], [W(reason="CreateContainerConfigError")], "Pending"),
    ("running", "Always", [], [R()], "Running"),
    ("one running one creating", "Always", [], [R("a"), W("b")], "Pending"),
    ("one running one done", "Never", [], [R("a"), X(0, "b")], "Running"),
    ("one running one failed", "Never", [], [R("a"), X(1, "b")], "Running"),
    ("init running", "Always", [R("i")], [W("a", "PodInitializing")], "Pending"),
    ("init waiting", "Always", [W("i")], [W("a", "PodInitializing")], "Pending"),
    ("init done, app creating", "Always", [X(0, "i")], [W("a")], "Pending"),
    ("init done, app running", "Always", [X(0, "i")], [R("a")], "Running"),
    ("init failed, Never", "Never", [X(1, "i")], [W("a", "PodInitializing")], "Failed"),
    ("init failed, OnFailure: retried", "OnFailure", [X(1, "i")], [W("a", "PodInitializing")], "Pending"),
    (
        "init in back-off, Always",
        "Always",
        [W("i", "CrashLoopBackOff", last=1)],
        [W("a", "PodInitializing")],
        "Pending",
    ),
    ("init back-off after failure, Never", "Never", [W("i", "CrashLoopBackOff", last=1)], [W("a")], "Failed"),
    ("second init pending", "Always", [X(0, "i1"), R("i2")], [W("a", "PodInitializing")], "Pending"),
    ("Always, exited 0", "Always", [], [X(0)], "Running"),
    ("Always, exited 1", "Always", [], [X(1)], "Running"),
    ("Always, crash loop", "Always", [], [W(reason="CrashLoopBackOff", last=1)], "Running"),
    ("OnFailure, exited 0", "OnFailure", [], [X(0)], "Succeeded"),
    ("OnFailure, exited 1", "OnFailure", [], [X(1)], "Running"),
    ("OnFailure, crash loop", "OnFailure", [], [W(reason="CrashLoopBackOff", last=1)], "Running"),
    ("Never, exited 0", "Never", [], [X(0)], "Succeeded"),
    ("Never, exited 1", "Never", [], [X(1)], "Failed"),
    ("Never, all 0", "Never", [X(0, "i")], [X(0, "a"), X(0, "b")], "Succeeded"),
    ("Never, one failed", "Never", [], [X(0, "a"), X(2, "b")], "Failed"),
    ("OnFailure, one failed", "OnFailure", [], [X(0, "a"), X(2, "b")], "Running"),
    ("Never, killed", "Never", [], [X(137)], "Failed"),
    ("default policy", "", [], [X(0)], "Running"),
]


@pytest.mark.parametrize(
    ("policy", "init", "app", "phase"), [p[1:] for p in PHASES], ids=[p[0] for p in PHASES]
)
def test_pod_phase(policy: str, init: list[ContainerView], app: list[ContainerView], phase: str) -> None:
    assert pod_phase(policy, init, app) == phase


@pytest.mark.parametrize("app", [[R()], [W()], [X(0)], []])
def test_pod_phase_deadline(app: list[ContainerView]) -> None:
    assert pod_phase("Always", [], app, deadline_exceeded=True) == "Failed"


def test_pod_phase_init_restarting_after_app_started_stays_running() -> None:
    # an app container already ran: init containers in progress do not send the pod back to Pending
    assert pod_phase("Always", [R("i")], [R("a")]) == "Running"


# ------------------------------------------------------------------------------------------------
# conditions


def by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


def test_conditions_first_time() -> None:
    conds = pod_conditions(None, initialized=True, containers_ready=True, now=T0)
    assert [c["type"] for c in conds] == [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    for c in conds:
        assert c == {"type": c["type"], "status": "True", "lastProbeTime": None, "lastTransitionTime": T0S}


def test_conditions_not_ready_reasons() -> None:
    conds = by_type(
        pod_conditions(
            None,
            initialized=False,
            containers_ready=False,
            now=T0,
            phase="Pending",
            uninitialized=["init-a"],
            unready=["a", "b"],
        )
    )
    assert conds["Initialized"]["status"] == "False"
    assert conds["Initialized"]["reason"] == "ContainersNotInitialized"
    assert conds["Initialized"]["message"] == "containers with incomplete status: [init-a]"
    for t in ("Ready", "ContainersReady"):
        assert conds[t]["status"] == "False"
        assert conds[t]["reason"] == "ContainersNotReady"
        assert conds[t]["message"] == "containers with unready status: [a b]"


def test_conditions_completed_and_failed() -> None:
    done = by_type(pod_conditions(None, initialized=True, containers_ready=False, now=T0, phase="Succeeded"))
    assert done["Initialized"]["status"] == "True"
    assert done["Initialized"]["reason"] == "PodCompleted"
    assert done["Ready"]["status"] == "False"
    assert done["Ready"]["reason"] == "PodCompleted"
    assert done["ContainersReady"]["reason"] == "PodCompleted"
    failed = by_type(pod_conditions(None, initialized=True, containers_ready=True, now=T0, phase="Failed"))
    assert failed["Ready"]["status"] == "False"
    assert failed["Ready"]["reason"] == "PodFailed"


TRANSITIONS = [
    # (before ready, after ready, keeps old time)
    (True, True, True),
    (False, False, True),
    (False, True, False),
    (True, False, False),
]


@pytest.mark.parametrize(("before", "after", "keeps"), TRANSITIONS)
def test_conditions_last_transition_time(before: bool, after: bool, keeps: bool) -> None:
    first = pod_conditions(None, initialized=True, containers_ready=before, now=T0)
    second = by_type(pod_conditions(first, initialized=True, containers_ready=after, now=T0 + 100))
    assert second["Ready"]["lastTransitionTime"] == (T0S if keeps else ts(100))
    assert second["ContainersReady"]["lastTransitionTime"] == (T0S if keeps else ts(100))
    assert second["Initialized"]["lastTransitionTime"] == T0S
    assert second["PodScheduled"]["lastTransitionTime"] == T0S


def test_conditions_keep_time_when_only_reason_changes() -> None:
    first = pod_conditions(None, initialized=True, containers_ready=False, now=T0, unready=["a"])
    second = by_type(
        pod_conditions(first, initialized=True, containers_ready=False, now=T0 + 9, phase="Succeeded")
    )
    assert second["Ready"]["reason"] == "PodCompleted"
    assert second["Ready"]["lastTransitionTime"] == T0S


def test_conditions_keep_scheduler_and_foreign_conditions() -> None:
    previous: list[dict[str, Any]] = [
        {
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": "2020-01-01T00:00:00Z",
        },
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "EvictionByEvictionAPI",
            "lastTransitionTime": "2021-01-01T00:00:00Z",
        },
    ]
    conds = by_type(pod_conditions(previous, initialized=True, containers_ready=True, now=T0))
    assert conds["PodScheduled"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert conds["DisruptionTarget"] == previous[1]
    assert list(conds)[-1] == "DisruptionTarget"


def test_conditions_previous_without_time_gets_now() -> None:
    previous = [{"type": "Ready", "status": "True"}]
    conds = by_type(pod_conditions(previous, initialized=True, containers_ready=True, now=T0))
    assert conds["Ready"]["lastTransitionTime"] == T0S


def test_conditions_not_scheduled_not_ready_to_start() -> None:
    conds = by_type(
        pod_conditions(
            None, initialized=False, containers_ready=False, now=T0, scheduled=False, ready_to_start=False
        )
    )
    assert conds["PodScheduled"]["status"] == "False"
    assert conds["PodReadyToStartContainers"]["status"] == "False"
    assert "message" not in conds["Initialized"]
    assert "message" not in conds["Ready"]


# ------------------------------------------------------------------------------------------------
# QoS


def _pod_res(*resources: dict[str, Any], init: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(resources)]
    }
    if init is not None:
        spec["initContainers"] = [{"name": "i", "resources": init}]
    return {"spec": spec}


GUARANTEED = {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1024Mi"}}


@pytest.mark.parametrize(
    ("pod", "qos"),
    [
        (_pod_res({}), "BestEffort"),
        (_pod_res({}, {}), "BestEffort"),
        (_pod_res({"requests": {"nvidia.com/gpu": "1"}}), "BestEffort"),
        (_pod_res({"requests": {"cpu": "0"}}), "BestEffort"),
        (_pod_res(GUARANTEED), "Guaranteed"),
        (_pod_res({"limits": {"cpu": "1", "memory": "1Gi"}}), "Guaranteed"),  # requests default to limits
        (_pod_res(GUARANTEED, GUARANTEED), "Guaranteed"),
        (_pod_res(GUARANTEED, {}), "Burstable"),
        (_pod_res({"requests": {"cpu": "100m"}}), "Burstable"),
        (_pod_res({"limits": {"cpu": "1"}}), "Burstable"),
        (_pod_res({"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "1"}}), "Burstable"),
        (_pod_res(GUARANTEED, init={"requests": {"cpu": "1"}}), "Burstable"),
        (_pod_res(GUARANTEED, init=GUARANTEED), "Guaranteed"),
        ({}, "BestEffort"),
    ],
)
def test_qos_class(pod: dict[str, Any], qos: str) -> None:
    assert qos_class(pod) == qos


# ------------------------------------------------------------------------------------------------
# pod status


def _pod(policy: str = "Always", init: bool = False, status: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": policy,
        "containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i"}],
    }
    if init:
        spec["initContainers"] = [{"name": "init", "image": "i"}]
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": spec, "status": status or {}}


def test_pod_status_pending_then_running_then_ready_time_kept() -> None:
    pod = _pod(init=True)
    s1 = pod_status(
        pod,
        [R("init")],
        [W("a", "PodInitializing"), W("b", "PodInitializing")],
        pod_ip="10.0.0.1",
        host_ip="10.0.0.1",
        start_time=T0,
        now=T0,
    )
    assert s1["phase"] == "Pending"
    assert s1["hostIP"] == "10.0.0.1"
    assert s1["hostIPs"] == [{"ip": "10.0.0.1"}]
    assert s1["podIPs"] == [{"ip": "10.0.0.1"}]
    assert s1["startTime"] == T0S
    assert s1["qosClass"] == "BestEffort"
    assert [c["name"] for c in s1["initContainerStatuses"]] == ["init"]
    assert s1["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    c1 = by_type(s1["conditions"])
    assert c1["Initialized"]["status"] == "False"
    assert c1["Initialized"]["message"] == "containers with incomplete status: [init]"
    assert c1["Ready"]["message"] == "containers with unready status: [a b]"

    pod["status"] = s1
    s2 = pod_status(
        pod,
        [X(0, "init")],
        [R("a"), R("b")],
        pod_ip="10.0.0.1",
        host_ip="10.0.0.1",
        start_time=T0,
        now=T0 + 30,
    )
    assert s2["phase"] == "Running"
    c2 = by_type(s2["conditions"])
    assert c2["Initialized"]["status"] == "True"
    assert c2["Initialized"]["lastTransitionTime"] == ts(30)
    assert c2["Ready"]["status"] == "True"
    assert c2["Ready"]["lastTransitionTime"] == ts(30)
    assert c2["PodScheduled"]["lastTransitionTime"] == T0S

    pod["status"] = s2
    s3 = pod_status(
        pod,
        [X(0, "init")],
        [R("a"), R("b")],
        pod_ip="10.0.0.1",
        host_ip="10.0.0.1",
        start_time=T0,
        now=T0 + 90,
    )
    assert not status_differs(s2, s3)  # nothing changed: no patch
    assert by_type(s3["conditions"])["Ready"]["lastTransitionTime"] == ts(30)


def test_pod_status_succeeded() -> None:
    s = pod_status(
        _pod("Never"), [], [X(0, "a"), X(0, "b")], pod_ip=None, host_ip=None, start_time=None, now=T0
    )
    assert s["phase"] == "Succeeded"
    assert "podIP" not in s
    assert "hostIP" not in s
    assert "startTime" not in s
    assert "initContainerStatuses" not in s
    assert by_type(s["conditions"])["Ready"]["reason"] == "PodCompleted"
    assert [c["state"]["terminated"]["reason"] for c in s["containerStatuses"]] == ["Completed", "Completed"]


def test_pod_status_failed() -> None:
    s = pod_status(
        _pod("Never"), [], [X(0, "a"), X(3, "b")], pod_ip="1.2.3.4", host_ip="1.2.3.4", start_time=T0, now=T0
    )
    assert s["phase"] == "Failed"
    assert s["containerStatuses"][1]["state"]["terminated"]["exitCode"] == 3
    assert by_type(s["conditions"])["Ready"]["reason"] == "PodFailed"


def test_pod_status_deadline_exceeded() -> None:
    s = pod_status(
        _pod(),
        [],
        [X(137, "a"), R("b")],
        pod_ip="1.2.3.4",
        host_ip="1.2.3.4",
        start_time=T0,
        now=T0,
        phase_reason="DeadlineExceeded",
    )
    assert s["phase"] == "Failed"
    assert s["reason"] == "DeadlineExceeded"
    assert s["message"] == "Pod was active on the node longer than the specified deadline"


def test_pod_status_custom_reason_and_message() -> None:
    s = pod_status(
        _pod(),
        [],
        [R("a"), R("b")],
        pod_ip=None,
        host_ip=None,
        start_time=T0,
        now=T0,
        phase_reason="NodeShutdown",
        message="walltime reached",
    )
    assert (s["phase"], s["reason"], s["message"]) == ("Running", "NodeShutdown", "walltime reached")


def test_pod_status_crash_loop_keeps_pod_running_and_initialized() -> None:
    crash = ContainerView(
        name="a",
        image="i",
        state="waiting",
        reason="CrashLoopBackOff",
        restart_count=3,
        last_termination=TerminatedView(exit_code=1, started_at=T0, finished_at=T0 + 1),
    )
    s = pod_status(
        _pod(init=True), [X(0, "init")], [crash, R("b")], pod_ip=None, host_ip=None, start_time=T0, now=T0
    )
    assert s["phase"] == "Running"
    conds = by_type(s["conditions"])
    assert conds["Initialized"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"
    assert conds["Ready"]["message"] == "containers with unready status: [a]"
    assert s["containerStatuses"][0]["restartCount"] == 3
    assert s["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1


# ------------------------------------------------------------------------------------------------
# status_differs


BASE_STATUS = pod_status(
    _pod(init=True),
    [X(0, "init")],
    [R("a"), R("b")],
    pod_ip="10.0.0.1",
    host_ip="10.0.0.1",
    start_time=T0,
    now=T0,
)


def _mutate(fn: Any) -> dict[str, Any]:
    s = copy.deepcopy(BASE_STATUS)
    fn(s)
    return s


def _set(path: list[Any], value: Any) -> Any:
    def apply(s: dict[str, Any]) -> None:
        target: Any = s
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


def _reorder(s: dict[str, Any]) -> None:
    items = list(s.items())
    s.clear()
    s.update(reversed(items))
    for c in s["containerStatuses"]:
        inner = list(c.items())
        c.clear()
        c.update(reversed(inner))


SAME = [
    ("identical", lambda s: None),
    ("key order", lambda s: _reorder(s)),
    ("conditions reordered", lambda s: s["conditions"].reverse()),
    ("container statuses reordered", lambda s: s["containerStatuses"].reverse()),
    ("timestamp with offset", _set(["startTime"], "2023-11-14T23:13:20+01:00")),
    ("timestamp with fraction", _set(["conditions", 0, "lastTransitionTime"], "2023-11-14T22:13:20.000000Z")),
    ("lastProbeTime dropped", lambda s: [c.pop("lastProbeTime") for c in s["conditions"]]),
    ("apiserver-only fields", lambda s: s.update(observedGeneration=3)),
    ("extra container field", _set(["containerStatuses", 0, "volumeMounts"], [{"name": "x"}])),
    ("empty lastState omitted", lambda s: s["containerStatuses"][0].pop("lastState")),
    ("empty message", _set(["message"], "")),
    ("empty imageID omitted", lambda s: s["containerStatuses"][0].pop("imageID")),
]
DIFFERENT = [
    ("phase", _set(["phase"], "Failed")),
    ("condition status", _set(["conditions", 2, "status"], "False")),
    ("condition time", _set(["conditions", 2, "lastTransitionTime"], "2023-11-14T22:13:21Z")),
    ("condition reason", _set(["conditions", 2, "reason"], "X")),
    ("container state", _set(["containerStatuses", 0, "state"], {"waiting": {"reason": "CrashLoopBackOff"}})),
    ("restart count", _set(["containerStatuses", 0, "restartCount"], 1)),
    ("ready", _set(["containerStatuses", 0, "ready"], False)),
    ("exit code", _set(["initContainerStatuses", 0, "state", "terminated", "exitCode"], 1)),
    ("pod IP", _set(["podIP"], "10.0.0.2")),
    ("pod IPs", _set(["podIPs"], [{"ip": "10.0.0.2"}])),
    ("reason added", _set(["reason"], "DeadlineExceeded")),
    ("container removed", lambda s: s["containerStatuses"].pop()),
    ("start time", _set(["startTime"], "2023-11-14T22:13:21Z")),
    ("last state", _set(["containerStatuses", 0, "lastState"], {"terminated": {"exitCode": 1}})),
]


@pytest.mark.parametrize("change", [c[1] for c in SAME], ids=[c[0] for c in SAME])
def test_status_same(change: Any) -> None:
    assert not status_differs(_mutate(change), BASE_STATUS)
    assert not status_differs(BASE_STATUS, _mutate(change))


@pytest.mark.parametrize("change", [c[1] for c in DIFFERENT], ids=[c[0] for c in DIFFERENT])
def test_status_different(change: Any) -> None:
    assert status_differs(_mutate(change), BASE_STATUS)
    assert status_differs(BASE_STATUS, _mutate(change))


def test_status_differs_from_nothing() -> None:
    assert status_differs(None, BASE_STATUS)
    assert status_differs({}, BASE_STATUS)
    assert not status_differs({}, {})
    assert not status_differs({"phase": "Pending", "conditions": []}, {"phase": "Pending"})
