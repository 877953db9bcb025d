"""When a pod worker syncs again without being woken: its timers, the resync safety net, and
polling where exits or volumes cannot wake it.

The worker is built around a stand-in controller that holds only the settings and the runtime flag
``next_wake`` reads; the worker's real book-keeping (ContainerState, start time, spec) is used.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jiriaf.jrm.pods import POLL_SECONDS, RESYNC_SECONDS, PodWorker
from jiriaf.jrm.runtime.base import ContainerFacts, ContainerKey
from jiriaf.jrm.status import TerminatedView

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
CRASHED = TerminatedView(exit_code=1, started_at=NOW - 5, finished_at=NOW - 1)


def worker(tmp_path: Path, notifies: bool = True, **spec: Any) -> PodWorker:
    controller: Any = SimpleNamespace(
        settings=SimpleNamespace(pod_root=tmp_path), runtime=SimpleNamespace(notifies_exits=notifies)
    )
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}], **spec},
    }
    w = PodWorker(controller, pod)
    w.prepared = True
    w.start_time = NOW - 5
    return w


def facts(running: bool) -> ContainerFacts:
    return ContainerFacts(ContainerKey("ns", "p", "u1", "a"), running=running, started_at=NOW - 5)


def test_idle_running_pod_resyncs_only_as_a_safety_net(tmp_path: Path) -> None:
    w = worker(tmp_path)
    for cs in w.containers.values():
        cs.facts = facts(running=True)
    assert w.next_wake(NOW) == RESYNC_SECONDS


def test_back_off_end_is_a_timer(tmp_path: Path) -> None:
    w = worker(tmp_path)
    a, b = w.containers["a"], w.containers["b"]
    b.facts = facts(running=True)
    a.facts, a.final, a.backoff_until = facts(running=False), CRASHED, NOW + 2.5
    assert w.next_wake(NOW) == pytest.approx(2.5)
    a.backoff_until = NOW - 1  # already due (the sync that follows restarts it)
    assert w.next_wake(NOW) == RESYNC_SECONDS
    a.backoff_until, a.done = NOW + 2.5, True  # will not run again: no timer
    assert w.next_wake(NOW) == RESYNC_SECONDS


def test_start_error_back_off_is_a_timer_too(tmp_path: Path) -> None:
    w = worker(tmp_path)
    a = w.containers["a"]
    a.final, a.backoff_until = CRASHED, NOW + 4  # the start failed: no facts
    assert w.next_wake(NOW) == pytest.approx(4)


def test_active_deadline_is_a_timer(tmp_path: Path) -> None:
    w = worker(tmp_path, activeDeadlineSeconds=8)
    assert w.next_wake(NOW) == pytest.approx(3)  # started 5 s ago
    assert w.next_wake(NOW + 10) == pytest.approx(0.01)  # overdue: at once, never a negative wait


@pytest.mark.parametrize("case", ["failed sync", "volumes not ready", "runtime cannot report exits"])
def test_polls_when_nothing_would_wake_it(tmp_path: Path, case: str) -> None:
    w = worker(tmp_path, notifies=case != "runtime cannot report exits")
    w.prepared = case != "volumes not ready"
    assert w.next_wake(NOW, failed=case == "failed sync") == POLL_SECONDS


def test_terminal_pod_waits_to_be_woken(tmp_path: Path) -> None:
    w = worker(tmp_path)
    w.terminal = True
    assert w.next_wake(NOW, failed=True) is None


async def test_controller_wakes_the_pod_of_an_exited_container(tmp_path: Path) -> None:
    from jiriaf.jrm.pods import PodController

    w = worker(tmp_path)
    controller: Any = SimpleNamespace(workers={"u1": w})
    PodController.container_exited(controller, ContainerKey("ns", "p", "u1", "a"))
    PodController.container_exited(controller, ContainerKey("ns", "gone", "u2", "a"))  # no worker: no-op
    await asyncio.wait_for(w.wake.wait(), 1)


@pytest.mark.parametrize(("ran", "count_after", "delay"), [(700.0, 1, 10.0), (30.0, 6, 300.0)])
async def test_back_off_starts_afresh_only_after_a_long_run(
    tmp_path: Path, ran: float, count_after: int, delay: float
) -> None:
    """The reset is decided at the exit from the run's own times (no sync needs to see it running)."""
    w = worker(tmp_path)
    a = w.containers["a"]
    a.backoff_count = 5
    run = ContainerFacts(
        ContainerKey("ns", "p", "u1", "a"), running=False, started_at=NOW - ran, finished_at=NOW, exit_code=0
    )
    await w._handle_exit(a, run, NOW)  # exit 0 under restartPolicy Always: restarted after a back-off
    assert a.backoff_count == count_after and a.backoff_until == pytest.approx(NOW + delay)
